"""Choosing the kernel build from CPUID and XCR0: a pure function, so every machine is testable here."""

from __future__ import annotations

import pytest

from servewise.layers import native
from servewise.layers.native.isa import ISAS, CpuFeatures, choose_isa

# Register bits (Intel SDM vol. 2, CPUID; XCR0 state components).
FMA, OSXSAVE, F16C = 1 << 12, 1 << 27, 1 << 29  # leaf 1 ecx
AVX2, AVX512F, AVX512BW, AVX512VL = 1 << 5, 1 << 16, 1 << 30, 1 << 31  # leaf 7.0 ebx
AVX512_VNNI = 1 << 11  # leaf 7.0 ecx
AMX_TILE, AMX_INT8 = 1 << 24, 1 << 25  # leaf 7.0 edx
XCR0_AVX, XCR0_AVX512, XCR0_AMX = 0b110, 0b1110_0000, 0b11 << 17


def regs(*, ecx1: int = FMA | OSXSAVE | F16C, ebx7: int = AVX2, ecx7: int = 0, edx7: int = 0,
         xcr0: int = XCR0_AVX) -> list[int]:
    """What native/cpu_probe.c returns: max leaf, leaf 1 ecx, edx, leaf 7.0 ebx, ecx, edx, 7.1 eax, XCR0."""
    return [13, ecx1, 0, ebx7, ecx7, edx7, 0, xcr0 & 0xFFFFFFFF, xcr0 >> 32]


AVX512_CPU = dict(ebx7=AVX2 | AVX512F | AVX512BW | AVX512VL, ecx7=AVX512_VNNI)


def test_avx512_vnni_with_os_support_gets_the_avx512_build():
    assert choose_isa(CpuFeatures.from_cpuid(regs(**AVX512_CPU, xcr0=XCR0_AVX | XCR0_AVX512))) == "avx512"


def test_amx_listed_and_enabled_never_selects_amx():
    # The Xeon VMs: CPUID lists AMX and XCR0 enables tile state, yet a tilezero faults.
    features = CpuFeatures.from_cpuid(regs(**AVX512_CPU, edx7=AMX_TILE | AMX_INT8,
                                           xcr0=XCR0_AVX | XCR0_AVX512 | XCR0_AMX))
    assert features.amx_tile and features.os_amx
    assert choose_isa(features) == "avx512"
    assert not any("amx" in isa for isa in ISAS)


def test_avx512_listed_but_zmm_state_not_enabled_by_the_os_falls_back_to_avx2():
    assert choose_isa(CpuFeatures.from_cpuid(regs(**AVX512_CPU, xcr0=XCR0_AVX))) == "avx2"


def test_avx512_without_vnni_uses_the_avx2_build():
    features = CpuFeatures.from_cpuid(regs(ebx7=AVX2 | AVX512F | AVX512BW | AVX512VL, xcr0=XCR0_AVX | XCR0_AVX512))
    assert choose_isa(features) == "avx2"


def test_an_avx2_only_cpu_gets_avx2_even_when_avx512_is_requested():
    avx2_only = CpuFeatures.from_cpuid(regs())
    assert choose_isa(avx2_only) == "avx2"
    assert choose_isa(avx2_only, "avx512") == "avx2"  # a request caps, never raises


def test_without_osxsave_nothing_vector_is_usable():
    # xgetbv is not even allowed then; the probe reports XCR0 as 0.
    features = CpuFeatures.from_cpuid(regs(ecx1=FMA | F16C, **AVX512_CPU, xcr0=0))
    assert not features.os_avx and choose_isa(features) == "generic"


def test_a_missing_fma_or_f16c_rules_out_avx2():
    assert choose_isa(CpuFeatures.from_cpuid(regs(ecx1=OSXSAVE | F16C))) == "generic"
    assert choose_isa(CpuFeatures.from_cpuid(regs(ecx1=OSXSAVE | FMA))) == "generic"


def test_requests_cap_the_choice_and_unknown_cpus_run_portable_code():
    best = CpuFeatures.from_cpuid(regs(**AVX512_CPU, xcr0=XCR0_AVX | XCR0_AVX512))
    assert [choose_isa(best, r) for r in ("auto", "avx512", "avx2", "generic")] == ["avx512", "avx512", "avx2", "generic"]
    assert choose_isa(None) == "generic"  # not x86: nothing to probe
    with pytest.raises(ValueError, match="cpu_isa"):
        choose_isa(best, "amx")


def test_this_machine_is_probed_and_a_forced_avx2_build_reports_avx2():
    if native.load_library("avx2") is None:
        pytest.skip("no C compiler here")
    features = native.probe_cpu()
    assert features is not None, "x86 CPUs are probed"
    expected = "avx2" if features.supports("avx2") else "generic"
    lib = native.load_library("avx2")
    assert lib is not None and native.library_isa(lib) == expected
