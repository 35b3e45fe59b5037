/* What the CPU lists and what the OS enabled, for the Python-side ISA choice (cpu_isa.py).
 *
 * Compiled without any ISA flag; executes only cpuid, and xgetbv when CPUID says the OS
 * set OSXSAVE (xgetbv faults otherwise). Never touches AMX: listing it is not permission
 * to run it (the kernel also requires arch_prctl(ARCH_REQ_XCOMP_PERM), and some VMs
 * advertise it and fault anyway).
 */
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

/* out[0..8]: max basic leaf, leaf 1 ecx, leaf 1 edx, leaf 7.0 ebx, ecx, edx, leaf 7.1 eax,
 * XCR0 low, XCR0 high (0 when OSXSAVE is off). Returns 0. */
int sw_cpu_probe(uint32_t *out) {
    uint32_t a, b, c, d;
    for (int i = 0; i < 9; i++) out[i] = 0;
    out[0] = __get_cpuid_max(0, 0);
    if (out[0] >= 1 && __get_cpuid(1, &a, &b, &c, &d)) {
        out[1] = c;
        out[2] = d;
    }
    if (out[0] >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        out[3] = b;
        out[4] = c;
        out[5] = d;
        if (a >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            out[6] = a;
        }
    }
    if (out[1] & (1u << 27)) { /* OSXSAVE: the OS manages extended state; xgetbv is allowed */
        uint32_t lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        out[7] = lo;
        out[8] = hi;
    }
    return 0;
}
#else
int sw_cpu_probe(uint32_t *out) {
    for (int i = 0; i < 9; i++) out[i] = 0;
    return 1; /* not x86: no SIMD path here, the portable build runs */
}
#endif
