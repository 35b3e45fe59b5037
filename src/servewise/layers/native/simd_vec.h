/* One float vector type, so one source serves both SIMD builds: 16 lanes on avx512, 8 on
 * avx2. Only what the attention tile and the decoder layer's SiLU need. */
#ifndef SW_SIMD_VEC_H
#define SW_SIMD_VEC_H

#include "sw_kernels.h"

#if defined(SW_AVX512)
#define SW_VW 16
typedef __m512 vf;
#define vf_load(p) _mm512_loadu_ps(p)
#define vf_store(p, v) _mm512_storeu_ps(p, v)
#define vf_set1(x) _mm512_set1_ps(x)
#define vf_zero() _mm512_setzero_ps()
#define vf_add(a, b) _mm512_add_ps(a, b)
#define vf_sub(a, b) _mm512_sub_ps(a, b)
#define vf_mul(a, b) _mm512_mul_ps(a, b)
#define vf_fmadd(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vf_reduce_max(v) _mm512_reduce_max_ps(v)
#define vf_reduce_add(v) _mm512_reduce_add_ps(v)
#define vf_load_f16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))

/* lanes >= n take `fill` */
static inline vf vf_keep_first(vf v, int64_t n, float fill) {
    return _mm512_mask_blend_ps((__mmask16)((1u << n) - 1), _mm512_set1_ps(fill), v);
}

#define vf_max(a, b) _mm512_max_ps(a, b)
#define vf_fnmadd(a, b, c) _mm512_fnmadd_ps(a, b, c)
#define vf_floor(x) _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)
/* 2^n for integral float n in the normal range */
#define vf_pow2(n) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23))
#define vf_or(a, b) _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(a), _mm512_castps_si512(b)))
#define vf_div(a, b) _mm512_div_ps(a, b)
/* where mask(a >= 0): b, else c */
#define vf_select_nonneg(a, b, c) _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_GE_OQ), c, b)

/* r[i] lane j <-> r[j] lane i */
static inline void vf_transpose(vf r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        for (int j = 0; j < 2; j++) {
            const __m512d a = _mm512_castps_pd(t[i + j]), b = _mm512_castps_pd(t[i + j + 2]);
            r[i + 2 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            r[i + 2 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        }
    }
    for (int i = 0; i < 16; i += 8) {
        for (int j = 0; j < 4; j++) {
            t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
            t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xdd);
        }
    }
    for (int j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
    }
}

#elif defined(SW_AVX2)
#define SW_VW 8
typedef __m256 vf;
#define vf_load(p) _mm256_loadu_ps(p)
#define vf_store(p, v) _mm256_storeu_ps(p, v)
#define vf_set1(x) _mm256_set1_ps(x)
#define vf_zero() _mm256_setzero_ps()
#define vf_add(a, b) _mm256_add_ps(a, b)
#define vf_sub(a, b) _mm256_sub_ps(a, b)
#define vf_mul(a, b) _mm256_mul_ps(a, b)
#define vf_fmadd(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vf_load_f16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define vf_max(a, b) _mm256_max_ps(a, b)
#define vf_fnmadd(a, b, c) _mm256_fnmadd_ps(a, b, c)
#define vf_floor(x) _mm256_floor_ps(x)
#define vf_pow2(n) \
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23))
#define vf_or(a, b) _mm256_or_ps(a, b)
#define vf_div(a, b) _mm256_div_ps(a, b)
#define vf_select_nonneg(a, b, c) _mm256_blendv_ps(c, b, _mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_GE_OQ))

static inline float vf_reduce_max(vf v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

static inline float vf_reduce_add(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

static inline vf vf_keep_first(vf v, int64_t n, float fill) {
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_blendv_ps(_mm256_set1_ps(fill), v, _mm256_castsi256_ps(keep));
}

static inline void vf_transpose(vf r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x20);
        r[j + 4] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x31);
    }
}
#endif

#if defined(SW_AVX512) || defined(SW_AVX2)
/* exp(x) for x <= 0 (softmax after max subtraction, sigmoid of -|x|); Cephes polynomial, ~2 ulp. */
static inline vf vf_exp(vf x) {
    x = vf_max(x, vf_set1(-87.0f));
    const vf fx = vf_floor(vf_fmadd(x, vf_set1(1.44269504088896341f), vf_set1(0.5f)));
    x = vf_fnmadd(fx, vf_set1(0.693359375f), x);
    x = vf_fnmadd(fx, vf_set1(-2.12194440e-4f), x);
    vf y = vf_set1(1.9875691500e-4f);
    y = vf_fmadd(y, x, vf_set1(1.3981999507e-3f));
    y = vf_fmadd(y, x, vf_set1(8.3334519073e-3f));
    y = vf_fmadd(y, x, vf_set1(4.1665795894e-2f));
    y = vf_fmadd(y, x, vf_set1(1.6666665459e-1f));
    y = vf_fmadd(y, x, vf_set1(5.0000001201e-1f));
    y = vf_fmadd(y, vf_mul(x, x), x);
    return vf_mul(vf_add(y, vf_set1(1.0f)), vf_pow2(fx));
}
#endif

#endif
