"""llama.cpp's own tools as the peer, built for this CPU and run in the same benchmark.

The build comes from the llama-cpp-python sdist (the version the project pins) with the ISA
spelled out: AVX2/FMA/F16C, AVX-512 (F, VNNI, VBMI, BF16) where /proc/cpuinfo lists it, AMX
off (it faults in the project's VMs). It is cached outside the repository, in
``~/.cache/servewise/llama.cpp`` (one build directory per ISA selection), and takes 10-15
minutes on 2 cores the first time. AVX-VNNI (the VEX form) is only enabled where CPUID lists
it: AMD Zen 4 has AVX-512 VNNI but not AVX-VNNI.

    llama-bench          -p 512 -n 128            -> prefill (pp512), decode 1 sequence (tg128)
    llama-batched-bench  -npp 128 -ntg 128 -npl 1,8,32,64 -> decode at 1/8/32/64 sequences, peak RSS
    llama-server         -np 64, 64 concurrent 128-in / 128-out completions -> peak RSS on that load
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

VERSION = "0.3.36"
CACHE = Path.home() / ".cache" / "servewise" / "llama.cpp"
TARGETS = ("llama-server", "llama-bench", "llama-batched-bench")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def cmake_isa_flags(flags: set[str] | None = None) -> list[str]:
    """The build's instruction sets: never -march=native (it would switch AMX on), never AMX."""
    flags = _cpu_flags() if flags is None else flags
    isa = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
           "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    optional = {"avx512f": "GGML_AVX512", "avx512vbmi": "GGML_AVX512_VBMI", "avx512_vnni": "GGML_AVX512_VNNI",
                "avx512_bf16": "GGML_AVX512_BF16", "avx_vnni": "GGML_AVX_VNNI"}
    return isa + [f"-D{option}={'ON' if flag in flags else 'OFF'}" for flag, option in optional.items()]


def build(cache: Path = CACHE) -> Path | str:
    """The directory of the built tools, or why they could not be built here (a note, not an error)."""
    missing = [tool for tool in ("cmake", "cc", "c++") if shutil.which(tool) is None]
    if missing:
        return f"skipped: no {', '.join(missing)} to build llama.cpp with"
    src = cache / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    flags = cmake_isa_flags()
    # one build per ISA selection: a cached build from a CPU with more features would fault here
    build_dir = src / f"build-{hashlib.sha256(' '.join(flags).encode()).hexdigest()[:12]}"
    bin_dir = build_dir / "bin"
    if all((bin_dir / t).exists() for t in TARGETS):
        return bin_dir
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"llama_cpp_python-{VERSION}.tar.gz"
    try:
        if not sdist.exists():
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={VERSION}", "-d", str(cache)], check=True, capture_output=True)
        if not src.exists():
            with tarfile.open(sdist) as tar:
                tar.extractall(cache, filter="data")
        print(f"building llama.cpp {VERSION} for this CPU in {build_dir} (10-15 min the first time)", flush=True)
        subprocess.run(["cmake", "-S", str(src), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                        "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", *flags], check=True, capture_output=True)
        subprocess.run(["cmake", "--build", str(build_dir), f"-j{os.cpu_count() or 1}", "--target", *TARGETS,
                        "llama"], check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError, tarfile.TarError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return f"skipped: building llama.cpp failed: {exc} {detail.decode(errors='replace')[-400:]}"
    return bin_dir


def _run(cmd: list[str], bin_dir: Path) -> tuple[str, float]:
    """Run one tool; (stdout + stderr, its own peak RSS in MiB, from wait4)."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, LD_LIBRARY_PATH=str(bin_dir)))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out[-500:]}")
    return out, usage.ru_maxrss / 1024


def llama_bench(bin_dir: Path, model: str, threads: int) -> dict[str, Any]:
    cmd = [str(bin_dir / "llama-bench"), "-m", model, "-t", str(threads), "-p", "512", "-n", "128", "-o", "json"]
    out, _ = _run(cmd, bin_dir)
    records = json.loads(out[out.index("["):out.rindex("]") + 1])
    rate = {("pp" if r["n_gen"] == 0 else "tg"): r["avg_ts"] for r in records}
    return {"prefill": rate["pp"], "decode@1": rate["tg"], "command": " ".join(cmd)}


def batched_bench(bin_dir: Path, model: str, threads: int, seqs: tuple[int, ...]) -> dict[str, Any]:
    ctx = max(seqs) * 256
    cmd = [str(bin_dir / "llama-batched-bench"), "-m", model, "-t", str(threads), "-tb", str(threads),
           "-c", str(ctx), "-b", "2048", "-ub", "512", "-npp", "128", "-ntg", "128",
           "-npl", ",".join(map(str, seqs)), "--output-format", "jsonl"]
    out, rss = _run(cmd, bin_dir)
    result: dict[str, Any] = {"command": " ".join(cmd), "rss_mib": rss}
    for line in out.splitlines():
        if line.startswith("{") and '"speed_tg"' in line:
            r = json.loads(line)
            result[f"decode@{r['pl']}"] = r["speed_tg"]
            result[f"prefill@{r['pl']}"] = r["speed_pp"]
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any], failures: list[str]) -> None:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=1800) as resp:
            resp.read()
    except OSError as exc:  # counted and reported: a failed request would understate the load
        failures.append(str(exc))


def serving_peak_rss(cmd: list[str], env: dict[str, str], port: int, health: str, endpoint: str,
                     bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """Start a server, send every body at once to ``endpoint``, and read the server's peak RSS
    (VmHWM) once all have finished. Used for llama-server and ``servewise serve`` alike."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                with urllib.request.urlopen(base + health, timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    return {"error": f"{cmd[0]} did not start", "command": " ".join(cmd)}
                time.sleep(0.5)
        failures: list[str] = []
        workers = [threading.Thread(target=_post, args=(base + endpoint, body, failures)) for body in bodies]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        with open(f"/proc/{proc.pid}/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
        if failures:
            return {"error": f"{len(failures)} of {len(bodies)} requests failed: {failures[0]}", "command": " ".join(cmd)}
        return {"rss_mib": hwm / 1024, "command": " ".join(cmd)}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def server_rss(bin_dir: Path, model: str, threads: int, prompts: list[list[int]], output_len: int) -> dict[str, Any]:
    """llama-server's peak RSS serving the prompts at once, one slot each, context sized to fit."""
    port = free_port()
    ctx = len(prompts) * (len(prompts[0]) + output_len + 16)
    cmd = [str(bin_dir / "llama-server"), "-m", model, "-t", str(threads), "-c", str(ctx), "-np", str(len(prompts)),
           "--port", str(port), "--host", "127.0.0.1"]
    body = {"n_predict": output_len, "ignore_eos": True, "temperature": 0, "cache_prompt": False}
    return serving_peak_rss(cmd, dict(os.environ, LD_LIBRARY_PATH=str(bin_dir)), port, "/health", "/completion",
                            [{**body, "prompt": p} for p in prompts])
