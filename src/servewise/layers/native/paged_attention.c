/* Paged attention over the KV cache, and writing a token's K/V into it.
 *
 * Every output element is computed in a fixed order that depends only on its own inputs,
 * never on how many other tokens share the call: a request's results do not depend on the
 * batch it is in. The SIMD builds go through the tiled kernel (attention_tile.c); this file
 * holds the portable path, the standalone kernel the PyTorch layers call, and K/V stores.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "sw_kernels.h"

/* ------------------------------------------------------------------------------------- */
/* helpers                                                                               */

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
    for (; d < n; d++) dst[d] = sw_half_to_float(h[d]);
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
 * together. Softmax is online, block by block. Layouts (contiguous):
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

/* The portable path (and the fallback for head sizes the SIMD tile does not take). */
void sw_attend_item_scalar(const float *restrict qh, const void *k_cache_v, const void *v_cache_v, int is_f16,
                           const int32_t *restrict table, int64_t ctx_len, int64_t kv_head, int64_t num_kv_heads,
                           int64_t group, int64_t head_dim, int64_t block_size, float sm_scale,
                           float *restrict out_h) {
    const char *k_cache = (const char *)k_cache_v, *v_cache = (const char *)v_cache_v;
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
        sw_attend_tile(q + offset, 0, ctx_lens + t, 1, k_cache, v_cache, is_f16, table, h, num_kv_heads, group,
                       head_dim, block_size, sm_scale, out + offset, 0);
    }
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

void sw_store_kv(void *cache, int is_f16, int64_t offset, const float *src, int64_t n) {
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
