"""Who measured a profile: the machine (CPU model, ISA, cores, torch) and the model file.

A step-cost profile is only valid on the machine and model it was measured on: the
project's VMs change CPU from one day to the next (AVX2 EPYC one day, AVX-512 Xeon the
next), and a different checkpoint has different step costs.
"""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import asdict, dataclass
from typing import Any

# The ISA extensions the kernels (and so step costs) depend on.
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
_FINGERPRINT_BYTES = 1 << 20  # read from each end of a model file


@dataclass(frozen=True)
class MachineInfo:
    cpu_model: str  # /proc/cpuinfo "model name" (or the platform's processor string)
    isa: tuple[str, ...]  # the ISA_FLAGS the CPU lists
    num_cpus: int  # logical CPUs the OS gives this process
    torch_version: str
    cpu_capability: str  # torch's kernel dispatch level, e.g. AVX2, AVX512

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "isa": list(self.isa)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachineInfo:
        return cls(str(data["cpu_model"]), tuple(data["isa"]), int(data["num_cpus"]), str(data["torch_version"]),
                   str(data["cpu_capability"]))

    def differences(self, other: MachineInfo) -> list[str]:
        """What differs that changes step costs (the torch build does too, less; it is only noted)."""
        out = []
        if self.cpu_model != other.cpu_model:
            out.append(f"CPU {other.cpu_model!r} vs {self.cpu_model!r}")
        if self.isa != other.isa:
            out.append(f"ISA {' '.join(other.isa)} vs {' '.join(self.isa)}")
        if self.num_cpus != other.num_cpus:
            out.append(f"{other.num_cpus} vs {self.num_cpus} CPUs")
        if self.cpu_capability != other.cpu_capability:
            out.append(f"torch CPU capability {other.cpu_capability} vs {self.cpu_capability}")
        return out


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                if flags and key == "model name":
                    break
    except OSError:
        pass
    return model, flags


def this_machine() -> MachineInfo:
    import torch

    model, flags = _cpuinfo()
    capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends.cpu, "get_cpu_capability") else "?"
    return MachineInfo(model, tuple(f for f in ISA_FLAGS if f in flags), len(os.sched_getaffinity(0))
                       if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), torch.__version__, capability)


def model_fingerprint(path: str) -> str:
    """A cheap identity of a model file or directory: sizes and the first and last MiB of each
    weight file, hashed (a changed checkpoint changes it; a moved one does not)."""
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path)
        if f.endswith((".gguf", ".safetensors", ".json")) and os.path.isfile(os.path.join(path, f)))
    for file in files:
        size = os.path.getsize(file)
        h.update(f"{os.path.basename(file) if file != path else ''}:{size}".encode())
        with open(file, "rb") as f:
            h.update(f.read(_FINGERPRINT_BYTES))
            if size > 2 * _FINGERPRINT_BYTES:
                f.seek(size - _FINGERPRINT_BYTES)
                h.update(f.read(_FINGERPRINT_BYTES))
    return h.hexdigest()[:32]
