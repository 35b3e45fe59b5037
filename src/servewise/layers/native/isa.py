"""Which build of the native kernels this CPU may run: a pure function of CPUID and XCR0.

A feature is usable only when the CPU lists it *and* the OS saves its register state
(XCR0, read with xgetbv): a hypervisor can list AVX-512 without enabling it. AMX is
never chosen and no kernel contains it: some VMs list amx_tile/amx_int8 in CPUID and
fault on the first tile instruction, and Linux also requires a per-process
arch_prctl(ARCH_REQ_XCOMP_PERM) before tile data may be used.

Builds, best first:
  avx512   AVX-512 F/BW/VL + VNNI (vpdpbusd), with AVX2/FMA/F16C
  avx2     AVX2 + FMA + F16C (vpmaddubsw/vpmaddwd)
  generic  portable C, any CPU
A request (``DeviceConfig.cpu_isa``, the CLI's ``--cpu-isa`` / ``SERVEWISE_CPU_ISA``) caps
the choice; it never raises it above what the machine can run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ISAS = ("avx512", "avx2", "generic")  # best first
ISA_REQUESTS = ("auto", *ISAS)

# XCR0 state components the OS must enable.
_XCR0_AVX = 0b110  # SSE (1) + AVX (2)
_XCR0_AVX512 = 0b1110_0000  # opmask (5), ZMM_Hi256 (6), Hi16_ZMM (7)
_XCR0_AMX = (1 << 17) | (1 << 18)  # XTILECFG, XTILEDATA


def _bit(value: int, bit: int) -> bool:
    return bool((value >> bit) & 1)


@dataclass(frozen=True)
class CpuFeatures:
    """What CPUID lists (cpu_*) and what XCR0 says the OS saves (os_*)."""

    avx2: bool = False
    fma: bool = False
    f16c: bool = False
    avx512f: bool = False
    avx512bw: bool = False
    avx512vl: bool = False
    avx512_vnni: bool = False
    avx512_bf16: bool = False
    amx_tile: bool = False  # listed only; never used
    amx_int8: bool = False
    os_avx: bool = False  # XCR0 has SSE+AVX state
    os_avx512: bool = False  # XCR0 has opmask + ZMM state
    os_amx: bool = False  # XCR0 has tile state (permission is still per process)

    @classmethod
    def from_cpuid(cls, regs: Sequence[int]) -> CpuFeatures:
        """regs, as native/cpu_probe.c fills them: max leaf, leaf 1 ecx, edx, leaf 7.0 ebx, ecx,
        edx, leaf 7.1 eax, XCR0 low, XCR0 high."""
        _, ecx1, _, ebx7, ecx7, edx7, eax71, xcr0_lo, xcr0_hi = (int(r) for r in regs)
        xcr0 = xcr0_lo | (xcr0_hi << 32)
        osxsave = _bit(ecx1, 27)
        return cls(
            avx2=_bit(ebx7, 5), fma=_bit(ecx1, 12), f16c=_bit(ecx1, 29),
            avx512f=_bit(ebx7, 16), avx512bw=_bit(ebx7, 30), avx512vl=_bit(ebx7, 31),
            avx512_vnni=_bit(ecx7, 11), avx512_bf16=_bit(eax71, 5),
            amx_tile=_bit(edx7, 24), amx_int8=_bit(edx7, 25),
            os_avx=osxsave and xcr0 & _XCR0_AVX == _XCR0_AVX,
            os_avx512=osxsave and xcr0 & (_XCR0_AVX | _XCR0_AVX512) == _XCR0_AVX | _XCR0_AVX512,
            os_amx=osxsave and xcr0 & _XCR0_AMX == _XCR0_AMX,
        )

    def supports(self, isa: str) -> bool:
        if isa == "generic":
            return True
        avx2 = self.os_avx and self.avx2 and self.fma and self.f16c
        if isa == "avx2":
            return avx2
        if isa == "avx512":
            return avx2 and self.os_avx512 and self.avx512f and self.avx512bw and self.avx512vl and self.avx512_vnni
        raise ValueError(f"unknown ISA {isa!r}; expected one of {ISAS}")

    def describe(self) -> str:
        listed = [name for name in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")
                  if getattr(self, name)]
        enabled = [name for name in ("os_avx", "os_avx512", "os_amx") if getattr(self, name)]
        return f"CPUID lists {', '.join(listed) or 'none of avx2/avx512/amx'}; XCR0 enables {', '.join(enabled) or '-'}"


def choose_isa(features: CpuFeatures | None, requested: str = "auto") -> str:
    """The best build that ``features`` can run, capped by ``requested``. Never AMX.

    features None: the CPU could not be probed (not x86), so only the portable build.
    """
    if requested not in ISA_REQUESTS:
        raise ValueError(f"cpu_isa must be one of {ISA_REQUESTS}, got {requested!r}")
    allowed = ISAS if requested == "auto" else ISAS[ISAS.index(requested):]
    for isa in allowed:
        if isa == "generic" or (features is not None and features.supports(isa)):
            return isa
    return "generic"
