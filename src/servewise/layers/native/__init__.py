"""Small C kernels for the CPU path, compiled on first use with the system C compiler.

The shared object is cached under ``~/.cache/servewise/native/<source hash>/``;
a missing compiler is not an error: callers fall back to the PyTorch path.
It links against the same ``libgomp.so.1`` soname that torch already loaded, so
both share one OpenMP thread pool (two pools on two cores would oversubscribe).
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

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("kernels.c")
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC"]
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_load_failed = False


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "servewise" / "native"


def _compile(source: Path, target: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *_FLAGS, "-o", tmp, str(source), "-lm"], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(tmp, target)  # atomic: concurrent builders never see a half-written file
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"compiling {source.name} failed: {exc.stderr.strip()[:2000]}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_library(cache_dir: Path | None = None) -> ctypes.CDLL | None:
    """The compiled kernels, or None when they cannot be built here (logged once)."""
    global _library, _load_failed
    with _lock:
        if _library is not None or _load_failed:
            return _library
        source = _SOURCE.read_bytes()
        digest = hashlib.sha256(source + " ".join(_FLAGS).encode()).hexdigest()[:16]
        target = (cache_dir or default_cache_dir()) / digest / "libservewise_native.so"
        try:
            if not target.exists():
                _compile(_SOURCE, target)
            lib = ctypes.CDLL(str(target))
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            logger.warning("native CPU kernels unavailable, using the PyTorch fallback: %s", exc)
            _load_failed = True
            return None
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.sw_paged_attention.restype = ctypes.c_int
        lib.sw_paged_attention.argtypes = [p, p, p, ctypes.c_int, p, i64, p, p, p, i64, i64, i64, i64, i64,
                                           ctypes.c_float]
        lib.sw_int8_linear.restype = ctypes.c_int
        lib.sw_int8_linear.argtypes = [p, i64, i64, p, p, p, p, i64]
        lib.sw_decoder_layer.restype = ctypes.c_int
        lib.sw_decoder_layer.argtypes = [p, p, p, p, p, p]
        _library = lib
        return lib


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


def int8_linear(lib: ctypes.CDLL, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """x: [M, K] fp32; qweight: [N, K] int8; scales: [N] fp32; bias: [N] fp32 or None -> [M, N] fp32."""
    x = x.contiguous()
    m, k = x.shape
    n = qweight.shape[0]
    out = torch.empty(m, n, dtype=torch.float32)
    rc = lib.sw_int8_linear(x.data_ptr(), m, k, qweight.data_ptr(), scales.data_ptr(),
                            bias.data_ptr() if bias is not None else None, out.data_ptr(), n)
    if rc != 0:
        raise ValueError(f"int8 linear kernel rejected the shapes (code {rc})")
    return out


def supports(num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int) -> bool:
    return num_q_heads // num_kv_heads <= 16 and head_dim <= 256 and block_size <= 128
