/* ServeWise CPU kernels: paged attention and an int8-weight linear layer.
 *
 * Both kernels compute every output element in a fixed order that depends only on
 * its own inputs, never on how many other rows share the call: a request's results
 * do not depend on the batch it is in. AVX2+FMA paths with a portable fallback
 * (the fallback sums in a different order, but the same order for every batch).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SW_AVX2 1
#endif

#define SW_MAX_GROUP 16
#define SW_MAX_HEAD_DIM 256
#define SW_MAX_BLOCK 128

/* ------------------------------------------------------------------------------------- */
/* helpers                                                                               */

static inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) { mant <<= 1; exp--; }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Load head_dim values of a K/V row as floats into dst (fp32 or fp16 storage). */
static inline void load_row(const void *src, int is_f16, int64_t n, float *restrict dst) {
    if (!is_f16) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    const uint16_t *h = (const uint16_t *)src;
    int64_t d = 0;
#ifdef SW_AVX2
    for (; d + 8 <= n; d += 8)
        _mm256_storeu_ps(dst + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + d))));
#endif
    for (; d < n; d++) dst[d] = half_to_float(h[d]);
}

static inline float dot(const float *restrict a, const float *restrict b, int64_t n) {
#ifdef SW_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    __m256 acc = _mm256_add_ps(acc0, acc1);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    float total = _mm_cvtss_f32(s);
    for (; i < n; i++) total += a[i] * b[i];
    return total;
#else
    float total = 0.0f;
    for (int64_t i = 0; i < n; i++) total += a[i] * b[i];
    return total;
#endif
}

static inline void axpy(float alpha, const float *restrict x, float *restrict y, int64_t n) {
    int64_t i = 0;
#ifdef SW_AVX2
    const __m256 va = _mm256_set1_ps(alpha);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
    for (; i < n; i++) y[i] += alpha * x[i];
}

static inline void scale(float alpha, float *restrict y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] *= alpha;
}

/* ------------------------------------------------------------------------------------- */
/* paged attention                                                                       */
/*
 * One work item = one query token x one KV head; its G query heads are computed
 * together so every K/V row is loaded (and converted) once. Softmax is online, block
 * by block. Layouts (contiguous):
 *   q, out        [num_tokens, num_q_heads, head_dim] fp32
 *   k/v_cache     [num_blocks, num_kv_heads, block_size, head_dim] fp32 or fp16
 *   block_tables  [num_rows, max_blocks_per_row] int32
 *   token_rows    [num_tokens] row of block_tables per token
 *   ctx_lens      [num_tokens] keys visible to the token (positions 0..ctx_len-1)
 */
/* Online softmax state of one work item: per query head, a running max, a running sum of
 * exp(score - max), and the exp-weighted sum of values. */
static void online_softmax_init(float acc[][SW_MAX_HEAD_DIM], float *run_max, float *run_sum, int64_t group,
                                int64_t head_dim) {
    for (int64_t g = 0; g < group; g++) {
        run_max[g] = -FLT_MAX;
        run_sum[g] = 0.0f;
        memset(acc[g], 0, (size_t)head_dim * sizeof(float));
    }
}

static void online_softmax_finish(float acc[][SW_MAX_HEAD_DIM], const float *run_sum, int64_t group,
                                  int64_t head_dim, float *out_h) {
    for (int64_t g = 0; g < group; g++) {
        const float inv = run_sum[g] > 0.0f ? 1.0f / run_sum[g] : 0.0f;
        for (int64_t d = 0; d < head_dim; d++) out_h[g * head_dim + d] = acc[g][d] * inv;
    }
}

static void attend_item(const float *restrict qh, const char *k_cache, const char *v_cache, int is_f16,
                        const int32_t *restrict table, int64_t ctx_len, int64_t kv_head, int64_t num_kv_heads,
                        int64_t group, int64_t head_dim, int64_t block_size, float sm_scale,
                        float *restrict out_h) {
    float acc[SW_MAX_GROUP][SW_MAX_HEAD_DIM];
    float run_max[SW_MAX_GROUP], run_sum[SW_MAX_GROUP];
    float scores[SW_MAX_GROUP][SW_MAX_BLOCK];
    float row[SW_MAX_HEAD_DIM];
    const int64_t elem = is_f16 ? 2 : 4;
    const int64_t row_bytes = head_dim * elem;
    const int64_t block_bytes = num_kv_heads * block_size * row_bytes;
    online_softmax_init(acc, run_max, run_sum, group, head_dim);
    const int64_t num_blocks = (ctx_len + block_size - 1) / block_size;
    for (int64_t b = 0; b < num_blocks; b++) {
        const int64_t n = (b == num_blocks - 1) ? ctx_len - b * block_size : block_size;
        const int64_t base = (int64_t)table[b] * block_bytes + kv_head * block_size * row_bytes;
        float block_max[SW_MAX_GROUP];
        for (int64_t g = 0; g < group; g++) block_max[g] = -FLT_MAX;
        for (int64_t j = 0; j < n; j++) {
            load_row(k_cache + base + j * row_bytes, is_f16, head_dim, row);
            for (int64_t g = 0; g < group; g++) {
                const float s = dot(qh + g * head_dim, row, head_dim) * sm_scale;
                scores[g][j] = s;
                if (s > block_max[g]) block_max[g] = s;
            }
        }
        for (int64_t g = 0; g < group; g++) {
            const float new_max = block_max[g] > run_max[g] ? block_max[g] : run_max[g];
            const float correction = expf(run_max[g] - new_max);
            run_sum[g] *= correction;
            scale(correction, acc[g], head_dim);
            run_max[g] = new_max;
            for (int64_t j = 0; j < n; j++) {
                scores[g][j] = expf(scores[g][j] - new_max);
                run_sum[g] += scores[g][j];
            }
        }
        for (int64_t j = 0; j < n; j++) {
            load_row(v_cache + base + j * row_bytes, is_f16, head_dim, row);
            for (int64_t g = 0; g < group; g++) axpy(scores[g][j], row, acc[g], head_dim);
        }
    }
    online_softmax_finish(acc, run_sum, group, head_dim, out_h);
}

#ifdef SW_AVX2
/* exp(x) for x ≤ 0 (softmax after max subtraction); Cephes polynomial, ~2 ulp. */
static inline __m256 exp256(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

static inline __attribute__((always_inline)) __m256 ld8(const char *p, int is_f16) {
    return is_f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)) : _mm256_loadu_ps((const float *)p);
}

/* Scores of one query head against 8 consecutive key rows: [q·k0, ..., q·k7]. */
static inline __attribute__((always_inline)) __m256 scores8(const float *restrict qg, const char *k, int64_t row_bytes, int64_t head_dim,
                             int is_f16) {
    const int64_t step = is_f16 ? 16 : 32; /* bytes per 8 elements */
    __m256 a[8];
    for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
    for (int64_t d = 0; d < head_dim; d += 8) {
        const __m256 qv = _mm256_loadu_ps(qg + d);
        const int64_t off = (d / 8) * step;
        for (int j = 0; j < 8; j++) a[j] = _mm256_fmadd_ps(qv, ld8(k + j * row_bytes + off, is_f16), a[j]);
    }
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* The vector path: head_dim % 8 == 0, block_size % 8 == 0. Same maths as attend_item.
 * Always inlined into one copy per cache dtype so the fp16/fp32 choice is a constant. */
static inline __attribute__((always_inline)) void attend_item_avx2(const float *restrict qh, const char *k_cache, const char *v_cache, int is_f16,
                             const int32_t *restrict table, int64_t ctx_len, int64_t kv_head, int64_t num_kv_heads,
                             int64_t group, int64_t head_dim, int64_t block_size, float sm_scale,
                             float *restrict out_h) {
    float acc[SW_MAX_GROUP][SW_MAX_HEAD_DIM];
    float run_max[SW_MAX_GROUP], run_sum[SW_MAX_GROUP];
    float scores[SW_MAX_GROUP][SW_MAX_BLOCK];
    const int64_t row_bytes = head_dim * (is_f16 ? 2 : 4);
    const int64_t block_bytes = num_kv_heads * block_size * row_bytes;
    const __m256 vscale = _mm256_set1_ps(sm_scale);
    online_softmax_init(acc, run_max, run_sum, group, head_dim);
    const int64_t num_blocks = (ctx_len + block_size - 1) / block_size;
    for (int64_t b = 0; b < num_blocks; b++) {
        const int64_t n = (b == num_blocks - 1) ? ctx_len - b * block_size : block_size;
        const int64_t padded = (n + 7) & ~(int64_t)7;
        const int64_t base = (int64_t)table[b] * block_bytes + kv_head * block_size * row_bytes;
        const char *kb = k_cache + base, *vb = v_cache + base;
        for (int64_t g = 0; g < group; g++) {
            /* scores of the block (lanes past the context masked to -inf), their max */
            __m256 vmax8 = _mm256_set1_ps(-FLT_MAX);
            for (int64_t j = 0; j < padded; j += 8) {
                __m256 s8 = _mm256_mul_ps(scores8(qh + g * head_dim, kb + j * row_bytes, row_bytes, head_dim, is_f16),
                                          vscale);
                if (j + 8 > n) {
                    const __m256 lane = _mm256_add_ps(_mm256_set1_ps((float)j),
                                                      _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7));
                    s8 = _mm256_blendv_ps(s8, _mm256_set1_ps(-FLT_MAX),
                                          _mm256_cmp_ps(lane, _mm256_set1_ps((float)n), _CMP_GE_OQ));
                }
                _mm256_storeu_ps(&scores[g][j], s8);
                vmax8 = _mm256_max_ps(vmax8, s8);
            }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax8), _mm256_extractf128_ps(vmax8, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            const float block_max = _mm_cvtss_f32(m4);
            const float new_max = block_max > run_max[g] ? block_max : run_max[g];
            const float correction = expf(run_max[g] - new_max);
            run_max[g] = new_max;
            const __m256 vmax = _mm256_set1_ps(new_max);
            __m256 vsum = _mm256_setzero_ps();
            for (int64_t j = 0; j < padded; j += 8) {
                __m256 p = exp256(_mm256_sub_ps(_mm256_loadu_ps(&scores[g][j]), vmax));
                if (j + 8 > n) {
                    const __m256 lane = _mm256_add_ps(_mm256_set1_ps((float)j),
                                                      _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7));
                    p = _mm256_andnot_ps(_mm256_cmp_ps(lane, _mm256_set1_ps((float)n), _CMP_GE_OQ), p);
                }
                _mm256_storeu_ps(&scores[g][j], p);
                vsum = _mm256_add_ps(vsum, p);
            }
            __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(vsum), _mm256_extractf128_ps(vsum, 1));
            s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
            run_sum[g] = run_sum[g] * correction + _mm_cvtss_f32(s4);
            /* acc = acc * correction + sum_j p_j v_j, 64 dims (8 independent FMA chains) at a time */
            float *restrict ag = acc[g];
            const __m256 vc = _mm256_set1_ps(correction);
            const int64_t step = is_f16 ? 16 : 32;
            for (int64_t d0 = 0; d0 < head_dim; d0 += 64) {
                const int64_t chunks = (head_dim - d0) >= 64 ? 8 : (head_dim - d0) / 8;
                __m256 a[8];
                for (int64_t c = 0; c < chunks; c++) a[c] = _mm256_mul_ps(_mm256_loadu_ps(ag + d0 + 8 * c), vc);
                for (int64_t j = 0; j < n; j++) {
                    const __m256 p = _mm256_set1_ps(scores[g][j]);
                    const char *vrow = vb + j * row_bytes + (d0 / 8) * step;
                    for (int64_t c = 0; c < chunks; c++) a[c] = _mm256_fmadd_ps(p, ld8(vrow + c * step, is_f16), a[c]);
                }
                for (int64_t c = 0; c < chunks; c++) _mm256_storeu_ps(ag + d0 + 8 * c, a[c]);
            }
        }
    }
    online_softmax_finish(acc, run_sum, group, head_dim, out_h);
}
static void attend_item_avx2_f32(const float *qh, const char *k_cache, const char *v_cache, const int32_t *table,
                                 int64_t ctx_len, int64_t kv_head, int64_t num_kv_heads, int64_t group,
                                 int64_t head_dim, int64_t block_size, float sm_scale, float *out_h) {
    attend_item_avx2(qh, k_cache, v_cache, 0, table, ctx_len, kv_head, num_kv_heads, group, head_dim, block_size,
                     sm_scale, out_h);
}

static void attend_item_avx2_f16(const float *qh, const char *k_cache, const char *v_cache, const int32_t *table,
                                 int64_t ctx_len, int64_t kv_head, int64_t num_kv_heads, int64_t group,
                                 int64_t head_dim, int64_t block_size, float sm_scale, float *out_h) {
    attend_item_avx2(qh, k_cache, v_cache, 1, table, ctx_len, kv_head, num_kv_heads, group, head_dim, block_size,
                     sm_scale, out_h);
}
#endif

int sw_paged_attention(const float *q, const void *k_cache, const void *v_cache, int is_f16,
                       const int32_t *block_tables, int64_t max_blocks_per_row, const int32_t *token_rows,
                       const int32_t *ctx_lens, float *out, int64_t num_tokens, int64_t num_q_heads,
                       int64_t num_kv_heads, int64_t head_dim, int64_t block_size, float sm_scale) {
    if (num_kv_heads <= 0 || num_q_heads % num_kv_heads != 0) return 1;
    const int64_t group = num_q_heads / num_kv_heads;
    if (group > SW_MAX_GROUP || head_dim > SW_MAX_HEAD_DIM || block_size > SW_MAX_BLOCK) return 2;
    const int64_t items = num_tokens * num_kv_heads;
#pragma omp parallel for schedule(static) if (items > 1)
    for (int64_t item = 0; item < items; item++) {
        const int64_t t = item / num_kv_heads, h = item % num_kv_heads;
        const int32_t *table = block_tables + (int64_t)token_rows[t] * max_blocks_per_row;
        const int64_t offset = (t * num_q_heads + h * group) * head_dim;
#ifdef SW_AVX2
        if (head_dim % 8 == 0 && block_size % 8 == 0) {
            (is_f16 ? attend_item_avx2_f16 : attend_item_avx2_f32)(
                q + offset, (const char *)k_cache, (const char *)v_cache, table, ctx_lens[t], h, num_kv_heads, group,
                head_dim, block_size, sm_scale, out + offset);
            continue;
        }
#endif
        attend_item(q + offset, (const char *)k_cache, (const char *)v_cache, is_f16, table, ctx_lens[t], h,
                    num_kv_heads, group, head_dim, block_size, sm_scale, out + offset);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------- */
/* int8-weight linear: out[m, n] = scales[n] * sum_k x[m, k] * q[n, k] (+ bias[n])          */
/*
 * Weight-bandwidth-bound steps (few rows): int8 weights are read once per call and
 * widened to fp32 in registers; activations and outputs stay fp32. Rows of x are
 * processed 4 at a time, each with its own accumulators, so a row's sum never
 * depends on the others.
 */
#ifdef SW_AVX2
static inline __m256 widen8(const int8_t *w) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)w)));
}

static inline float hsum(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    const __m256 acc = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* Every row is summed the same way whichever path computes it: four accumulators over
 * 32-element chunks, then the 8-element remainder into the first, then a fixed
 * horizontal reduction, then the scalar tail. One row or two rows at a time give
 * bitwise-identical results. */
static void int8_dot_1(const float *restrict x, const int8_t *restrict w, int64_t k, float *out) {
#ifdef SW_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), widen8(w + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), widen8(w + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), widen8(w + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), widen8(w + i + 24), a3);
    }
    for (; i + 8 <= k; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), widen8(w + i), a0);
    float total = hsum(a0, a1, a2, a3);
    for (; i < k; i++) total += x[i] * (float)w[i];
    *out = total;
#else
    float total = 0.0f;
    for (int64_t i = 0; i < k; i++) total += x[i] * (float)w[i];
    *out = total;
#endif
}

static void int8_dot_2(const float *restrict x0, const float *restrict x1, const int8_t *restrict w, int64_t k,
                       float *out0, float *out1) {
#ifdef SW_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {
        const __m256 w0 = widen8(w + i), w1 = widen8(w + i + 8), w2 = widen8(w + i + 16), w3 = widen8(w + i + 24);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i), w0, a0);
        b0 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + i), w0, b0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i + 8), w1, a1);
        b1 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + i + 8), w1, b1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i + 16), w2, a2);
        b2 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + i + 16), w2, b2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i + 24), w3, a3);
        b3 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + i + 24), w3, b3);
    }
    for (; i + 8 <= k; i += 8) {
        const __m256 w0 = widen8(w + i);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i), w0, a0);
        b0 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + i), w0, b0);
    }
    float t0 = hsum(a0, a1, a2, a3), t1 = hsum(b0, b1, b2, b3);
    for (; i < k; i++) {
        t0 += x0[i] * (float)w[i];
        t1 += x1[i] * (float)w[i];
    }
    *out0 = t0;
    *out1 = t1;
#else
    int8_dot_1(x0, w, k, out0);
    int8_dot_1(x1, w, k, out1);
#endif
}

/* ------------------------------------------------------------------------------------- */
/* one Llama decoder layer for a small step (every token through the paged kernel)       */
/*
 * Small steps are dominated by per-operation overhead in PyTorch (~50 ops per layer);
 * this runs a whole layer in one call and one OpenMP region. Same maths as the PyTorch
 * path (RMSNorm, fused q/k/v, rotate-half RoPE, paged attention, o_proj + residual,
 * RMSNorm, fused gate/up, SiLU*up, down + residual), with int8 weights.
 */
typedef struct {
    const int8_t *q;     /* [n, k] int8 */
    const float *scales; /* [n] */
    const float *bias;   /* [n] or NULL */
    int64_t n, k;
} sw_qlinear;

typedef struct {
    const float *input_norm, *post_norm; /* [hidden] */
    sw_qlinear qkv, o, gate_up, down;
} sw_layer_weights;

typedef struct {
    int64_t num_tokens, hidden, num_heads, num_kv_heads, head_dim, intermediate, block_size, max_blocks_per_row;
    float eps, sm_scale;
    int kv_is_f16;
    const float *cos, *sin;        /* [max_positions, head_dim / 2] */
    const int64_t *positions;      /* [T] */
    const int64_t *slot_blocks;    /* [T] */
    const int64_t *slot_offsets;   /* [T] */
    const int32_t *block_tables;   /* [R, max_blocks_per_row] */
    const int32_t *token_rows;     /* [T] */
    const int32_t *ctx_lens;       /* [T] */
} sw_step_meta;

static void rms_norm_row(const float *restrict x, const float *restrict w, int64_t n, float eps, float *restrict out) {
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = w[i] * (x[i] * inv);
}

/* out[m, col] (+)= W x[m] for columns [begin, end): `accumulate` adds into out (residual). */
static void qlinear_cols(const sw_qlinear *l, const float *x, int64_t m, float *out, int64_t ldo, int accumulate) {
#pragma omp for schedule(static)
    for (int64_t col = 0; col < l->n; col++) {
        const int8_t *w = l->q + col * l->k;
        const float b = l->bias ? l->bias[col] : 0.0f;
        int64_t r = 0;
        for (; r + 2 <= m; r += 2) {
            float s0, s1;
            int8_dot_2(x + r * l->k, x + (r + 1) * l->k, w, l->k, &s0, &s1);
            s0 = s0 * l->scales[col] + b;
            s1 = s1 * l->scales[col] + b;
            if (accumulate) {
                out[r * ldo + col] += s0;
                out[(r + 1) * ldo + col] += s1;
            } else {
                out[r * ldo + col] = s0;
                out[(r + 1) * ldo + col] = s1;
            }
        }
        if (r < m) {
            float s0;
            int8_dot_1(x + r * l->k, w, l->k, &s0);
            s0 = s0 * l->scales[col] + b;
            out[r * ldo + col] = accumulate ? out[r * ldo + col] + s0 : s0;
        }
    }
}

int sw_int8_linear(const float *x, int64_t m, int64_t k, const int8_t *q, const float *scales, const float *bias,
                   float *out, int64_t n) {
    if (m <= 0 || k <= 0 || n <= 0) return 1;
    const sw_qlinear layer = {q, scales, bias, n, k};
#pragma omp parallel
    qlinear_cols(&layer, x, m, out, n, 0);
    return 0;
}

/* fp32 -> fp16, round to nearest even (as torch's .half()) */
static inline uint16_t float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint32_t sign = (x >> 16) & 0x8000, raw_exp = (x >> 23) & 0xff;
    uint32_t mant = x & 0x7fffff;
    if (raw_exp == 0xff) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
    const int32_t exp = (int32_t)raw_exp - 127 + 15;
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        mant |= 0x800000;
        const uint32_t shift = (uint32_t)(14 - exp), halfway = 1u << (shift - 1);
        uint32_t h = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1);
        if (rem > halfway || (rem == halfway && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* a carry rolls into the exponent, as it should */
    return (uint16_t)h;
}

static void store_kv(void *cache, int is_f16, int64_t offset, const float *src, int64_t n) {
    if (is_f16) {
        uint16_t *dst = (uint16_t *)cache + offset;
        int64_t i = 0;
#ifdef SW_AVX2
        for (; i + 8 <= n; i += 8)
            _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
        for (; i < n; i++) dst[i] = float_to_half(src[i]);
    } else {
        memcpy((float *)cache + offset, src, (size_t)n * sizeof(float));
    }
}

int sw_decoder_layer(float *x, const sw_layer_weights *w, void *k_cache, void *v_cache, const sw_step_meta *s,
                     float *work) {
    const int64_t T = s->num_tokens, H = s->hidden, D = s->head_dim, half = D / 2;
    const int64_t q_size = s->num_heads * D, kv_size = s->num_kv_heads * D, qkv_n = q_size + 2 * kv_size;
    const int64_t group = s->num_heads / s->num_kv_heads;
    if (group > SW_MAX_GROUP || D > SW_MAX_HEAD_DIM || s->block_size > SW_MAX_BLOCK || D % 2) return 2;
    float *normed = work;                      /* [T, max(H, I)] */
    float *qkv = normed + T * (H > s->intermediate ? H : s->intermediate); /* [T, qkv_n] */
    float *attn = qkv + T * qkv_n;             /* [T, q_size] */
    float *gate_up = attn + T * q_size;        /* [T, 2I] */
    const int64_t I = s->intermediate;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) rms_norm_row(x + t * H, w->input_norm, H, s->eps, normed + t * H);
        qlinear_cols(&w->qkv, normed, T, qkv, qkv_n, 0);
        /* RoPE on q and k heads, then the token's K/V into its cache slot */
#pragma omp for schedule(static)
        for (int64_t item = 0; item < T * (s->num_heads + s->num_kv_heads); item++) {
            const int64_t t = item / (s->num_heads + s->num_kv_heads), h = item % (s->num_heads + s->num_kv_heads);
            float *v = qkv + t * qkv_n + h * D; /* q heads then k heads are adjacent */
            const float *c = s->cos + s->positions[t] * half, *sn = s->sin + s->positions[t] * half;
            for (int64_t i = 0; i < half; i++) {
                const float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * sn[i];
                v[i + half] = b * c[i] + a * sn[i];
            }
            if (h >= s->num_heads) {
                const int64_t kvh = h - s->num_heads;
                const int64_t off = ((s->slot_blocks[t] * s->num_kv_heads + kvh) * s->block_size + s->slot_offsets[t]) * D;
                store_kv(k_cache, s->kv_is_f16, off, v, D);
                store_kv(v_cache, s->kv_is_f16, off, qkv + t * qkv_n + q_size + kv_size + kvh * D, D);
            }
        }
#pragma omp for schedule(static)
        for (int64_t item = 0; item < T * s->num_kv_heads; item++) {
            const int64_t t = item / s->num_kv_heads, h = item % s->num_kv_heads;
            const int32_t *table = s->block_tables + (int64_t)s->token_rows[t] * s->max_blocks_per_row;
            const float *qh = qkv + t * qkv_n + h * group * D;
            float *out_h = attn + t * q_size + h * group * D;
#ifdef SW_AVX2
            if (D % 8 == 0 && s->block_size % 8 == 0) {
                (s->kv_is_f16 ? attend_item_avx2_f16 : attend_item_avx2_f32)(
                    qh, (const char *)k_cache, (const char *)v_cache, table, s->ctx_lens[t], h, s->num_kv_heads,
                    group, D, s->block_size, s->sm_scale, out_h);
                continue;
            }
#endif
            attend_item(qh, (const char *)k_cache, (const char *)v_cache, s->kv_is_f16, table, s->ctx_lens[t], h,
                        s->num_kv_heads, group, D, s->block_size, s->sm_scale, out_h);
        }
        qlinear_cols(&w->o, attn, T, x, H, 1);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) rms_norm_row(x + t * H, w->post_norm, H, s->eps, normed + t * H);
        qlinear_cols(&w->gate_up, normed, T, gate_up, 2 * I, 0);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            float *g = gate_up + t * 2 * I, *out = normed + t * I;
            for (int64_t i = 0; i < I; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * g[I + i];
        }
        qlinear_cols(&w->down, normed, T, x, H, 1);
    }
    (void)qkv_n;
    return 0;
}
