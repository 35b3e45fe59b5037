"""Small C kernels for the CPU path, compiled on first use with the system C compiler.

One shared object per instruction set (isa.py), each built with that ISA's flags only
(never -march=native: the cache may be read by another CPU) and cached under
``~/.cache/servewise/native/<hash of sources, flags, ISA, compiler>/``. Which one runs is
decided at load from CPUID and XCR0 (``resolve_isa``). A missing compiler is not an
error: callers fall back to the PyTorch path. The objects link against the same
``libgomp.so.1`` soname that torch already loaded, so both share one OpenMP thread pool
(two pools on two cores would oversubscribe).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from servewise.layers.native.isa import ISAS, CpuFeatures, choose_isa

logger = logging.getLogger(__name__)

_DIR = Path(__file__).parent
_SOURCES = ("quant_gemm.c", "paged_attention.c", "attention_tile.c", "decoder_layer.c")
_HEADERS = ("sw_kernels.h", "simd_vec.h", "quant_gemm_avx512.h", "quant_gemm_avx2.h")
# -ffp-contract=off: only the FMAs written in the source, so every build rounds alike.
_COMMON_FLAGS = ("-O3", "-fno-math-errno", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")
ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "avx512": ("-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"),
    "avx2": ("-mavx2", "-mfma", "-mf16c"),
    "generic": (),
}
_ISA_IDS = {2: "avx512", 1: "avx2", 0: "generic"}  # what sw_isa() returns

_lock = threading.Lock()
_libraries: dict[str, ctypes.CDLL | None] = {}
_probe: tuple[CpuFeatures | None] | None = None


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "servewise" / "native"


def _compiler() -> str:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    return compiler


def _build(name: str, sources: tuple[str, ...], flags: tuple[str, ...], cache_dir: Path | None) -> Path:
    """Compile sources into a shared object once; the path of the cached object."""
    compiler = _compiler()
    digest = hashlib.sha256()
    for part in (*sources, *_HEADERS):
        digest.update((_DIR / part).read_bytes())
    digest.update(" ".join((compiler, name, *flags)).encode())
    target = (cache_dir or default_cache_dir()) / digest.hexdigest()[:16] / f"libservewise_{name}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *flags, f"-I{_DIR}", "-o", tmp, *(str(_DIR / s) for s in sources), "-lm"],
                       check=True, capture_output=True, text=True, timeout=300)
        os.replace(tmp, target)  # atomic: concurrent builders never see a half-written file
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"compiling {name} failed: {exc.stderr.strip()[:2000]}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def probe_cpu(cache_dir: Path | None = None) -> CpuFeatures | None:
    """CPUID + XCR0 of this machine (None when not x86 or nothing can be compiled)."""
    global _probe
    with _lock:
        if _probe is None:
            features = None
            try:
                lib = ctypes.CDLL(str(_build("cpu_probe", ("cpu_probe.c",), ("-O1", "-shared", "-fPIC"), cache_dir)))
                regs = (ctypes.c_uint32 * 9)()
                if lib.sw_cpu_probe(regs) == 0:
                    features = CpuFeatures.from_cpuid(list(regs))
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
                logger.warning("cannot probe the CPU (%s): portable kernels only", exc)
            _probe = (features,)
        return _probe[0]


def resolve_isa(requested: str = "auto") -> str:
    """The build to run here: the best the CPU and OS allow, capped by ``requested``."""
    features = probe_cpu()
    isa = choose_isa(features, requested)
    if requested not in ("auto", isa):
        logger.warning("cpu_isa=%s requested but this CPU cannot run it; using %s", requested, isa)
    return isa


def _declare(lib: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    signatures = {
        "sw_paged_attention": [p, p, p, ctypes.c_int, p, i64, p, p, p, i64, i64, i64, i64, i64, ctypes.c_float],
        "sw_qlinear": [p, i64, i64, p, p, p],
        "sw_quantize_rows": [p, i64, i64, i64, p],
        "sw_dequant_rows": [p, p, i64, p],
        "sw_decoder_layer": [p, p, p, p, p, p],
        "sw_decoder_work_bytes": [i64, i64, i64, i64, i64, i64],
        "sw_isa": [],
    }
    for name, args in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = i64 if name == "sw_decoder_work_bytes" else ctypes.c_int


def load_library(isa: str = "auto", cache_dir: Path | None = None) -> ctypes.CDLL | None:
    """The kernels built for ``isa`` ("auto": the best this CPU runs), or None when they cannot
    be built here (logged once). A build that fails to compile falls back to the next ISA down."""
    resolved = resolve_isa(isa) if isa == "auto" or isa not in ISAS else choose_isa(probe_cpu(), isa)
    with _lock:
        if resolved in _libraries:
            return _libraries[resolved]
        lib = None
        for candidate in ISAS[ISAS.index(resolved):]:
            try:
                path = _build(candidate, _SOURCES, (*_COMMON_FLAGS, *ISA_FLAGS[candidate]), cache_dir)
                lib = ctypes.CDLL(str(path))
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
                logger.warning("native %s kernels unavailable: %s", candidate, exc)
                continue
            _declare(lib)
            if candidate != resolved:
                logger.warning("using the %s kernels instead of %s", candidate, resolved)
            break
        if lib is None:
            logger.warning("native CPU kernels unavailable, using the PyTorch fallback")
        _libraries[resolved] = lib
        return lib


def library_isa(lib: ctypes.CDLL) -> str:
    """The ISA a loaded library was compiled for."""
    return _ISA_IDS[int(lib.sw_isa())]


def paged_attention(lib: ctypes.CDLL, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, token_rows: torch.Tensor, ctx_lens: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """q: [T, Hq, D] fp32; caches: [NB, Hkv, BS, D] fp32 or fp16; block_tables: [R, M] int32;
    token_rows, ctx_lens: [T] int32. Returns [T, Hq, D] fp32."""
    num_tokens, num_q_heads, head_dim = q.shape
    _, num_kv_heads, block_size, _ = k_cache.shape
    q = q.contiguous()
    out = torch.empty_like(q)
    rc = lib.sw_paged_attention(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), int(k_cache.dtype == torch.float16),
        block_tables.data_ptr(), block_tables.shape[1], token_rows.data_ptr(), ctx_lens.data_ptr(),
        out.data_ptr(), num_tokens, num_q_heads, num_kv_heads, head_dim, block_size, scale)
    if rc != 0:
        raise ValueError(f"paged attention kernel rejected the shapes (code {rc})")
    return out


def supports(num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int) -> bool:
    return num_q_heads // num_kv_heads <= 16 and head_dim <= 256 and block_size <= 128
