/* Attention of up to SW_TILE_TOKENS query tokens of one request, for one KV head.
 *
 * Keys are visited in chunks of one vector width (SW_VW: 16 on avx512, 8 on avx2). Each chunk
 * is converted to fp32 once, K transposed to [D][SW_VW] so that one query's scores against
 * the chunk are D broadcast FMAs, and V kept as rows; every query head of every token in
 * the tile then updates its online softmax from those. A prefill chunk shares each K/V
 * chunk among all its tokens; a decode token is a tile of one.
 *
 * Batch invariance: each query's arithmetic depends only on its own ctx_len. Lanes past it
 * (keys other tokens of the tile see) are masked out of the max and the sum, and the V
 * accumulation stops at its last key, so a token gets the same bits alone or in any tile.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "simd_vec.h"

#if defined(SW_AVX512) || defined(SW_AVX2)

typedef struct {
    const char *k, *v;        /* caches [NB, Hkv, BS, D] */
    const int32_t *table;     /* the request's blocks */
    int64_t kv_head, num_kv_heads, block_size, head_dim, row_bytes;
    int is_f16;
} kv_view;

/* Byte offsets of the K/V rows of positions [c0, c0 + n) (one division per chunk, not per row). */
static inline void row_offsets(const kv_view *kv, int64_t c0, int64_t n, int64_t *off) {
    const int64_t bs = kv->block_size, head_rows = kv->kv_head * bs;
    int64_t block = c0 / bs, pos = c0 % bs;
    for (int64_t j = 0; j < n; j++) {
        off[j] = ((int64_t)kv->table[block] * kv->num_kv_heads * bs + head_rows + pos) * kv->row_bytes;
        if (++pos == bs) {
            pos = 0;
            block++;
        }
    }
}

static inline vf load_vf(const char *p, int is_f16) { return is_f16 ? vf_load_f16(p) : vf_load((const float *)p); }

/* A request's blocks lie anywhere in the pool, so hardware prefetchers cannot guess the next
 * chunk: request its K/V rows while this one is computed. */
static void prefetch_chunk(const kv_view *kv, int64_t c0, int64_t n) {
    int64_t off[SW_VW];
    row_offsets(kv, c0, n, off);
    for (int64_t j = 0; j < n; j++) {
        for (int64_t b = 0; b < kv->row_bytes; b += 64) {
            __builtin_prefetch(kv->k + off[j] + b, 0, 3);
            __builtin_prefetch(kv->v + off[j] + b, 0, 3);
        }
    }
}

/* Keys [c0, c0 + n) (zero past n): KT [D][SW_VW], V [SW_VW][D], fp32. */
static void load_chunk(const kv_view *kv, int64_t c0, int64_t n, float *restrict kt, float *restrict v) {
    const int64_t D = kv->head_dim, elem = kv->is_f16 ? 2 : 4;
    int64_t off[SW_VW];
    row_offsets(kv, c0, n, off);
    for (int64_t j = n; j < SW_VW; j++) off[j] = -1;
    for (int64_t d0 = 0; d0 < D; d0 += SW_VW) {
        vf r[SW_VW];
        for (int64_t j = 0; j < SW_VW; j++) {
            r[j] = off[j] < 0 ? vf_zero() : load_vf(kv->k + off[j] + d0 * elem, kv->is_f16);
            vf_store(v + j * D + d0, off[j] < 0 ? vf_zero() : load_vf(kv->v + off[j] + d0 * elem, kv->is_f16));
        }
        vf_transpose(r);
        for (int64_t i = 0; i < SW_VW; i++) vf_store(kt + (d0 + i) * SW_VW, r[i]);
    }
}

/* nh query heads of one token against one chunk: each one's first `valid` keys update its
 * (run_max, run_sum, acc). Phase by phase across the heads, so the latency of one head's
 * softmax overlaps another's FMAs; each head's own operations do not depend on nh. */
static inline __attribute__((always_inline)) void attend_heads(const int nh, const float *restrict q, float *acc0,
                                                              const float *restrict kt, const float *restrict v,
                                                              int64_t valid, int64_t D, float sm_scale,
                                                              float *run_max, float *run_sum) {
    vf s[4], p[4];
    float corr[4], pj[4][SW_VW];
    for (int h = 0; h < nh; h++) {
        const float *qi = q + h * D;
        vf s0 = vf_zero(), s1 = vf_zero(), s2 = vf_zero(), s3 = vf_zero();
        for (int64_t d = 0; d < D; d += 4) {
            s0 = vf_fmadd(vf_set1(qi[d]), vf_load(kt + d * SW_VW), s0);
            s1 = vf_fmadd(vf_set1(qi[d + 1]), vf_load(kt + (d + 1) * SW_VW), s1);
            s2 = vf_fmadd(vf_set1(qi[d + 2]), vf_load(kt + (d + 2) * SW_VW), s2);
            s3 = vf_fmadd(vf_set1(qi[d + 3]), vf_load(kt + (d + 3) * SW_VW), s3);
        }
        s[h] = vf_keep_first(vf_mul(vf_add(vf_add(s0, s1), vf_add(s2, s3)), vf_set1(sm_scale)), valid, -FLT_MAX);
    }
    for (int h = 0; h < nh; h++) {
        const float new_max = fmaxf(run_max[h], vf_reduce_max(s[h]));
        corr[h] = expf(run_max[h] - new_max);
        p[h] = vf_keep_first(vf_exp(vf_sub(s[h], vf_set1(new_max))), valid, 0.0f);
        run_sum[h] = run_sum[h] * corr[h] + vf_reduce_add(p[h]);
        run_max[h] = new_max;
        vf_store(pj[h], p[h]);
    }
    for (int h = 0; h < nh; h++) {
        float *restrict acc = acc0 + h * D;
        for (int64_t d0 = 0; d0 < D; d0 += 8 * SW_VW) { /* up to 8 independent accumulator chains */
            const int64_t chunks = (D - d0) / SW_VW < 8 ? (D - d0) / SW_VW : 8;
            vf a[8];
            for (int64_t c = 0; c < chunks; c++) a[c] = vf_mul(vf_load(acc + d0 + c * SW_VW), vf_set1(corr[h]));
            for (int64_t j = 0; j < valid; j++) {
                const vf pb = vf_set1(pj[h][j]);
                for (int64_t c = 0; c < chunks; c++) a[c] = vf_fmadd(pb, vf_load(v + j * D + d0 + c * SW_VW), a[c]);
            }
            for (int64_t c = 0; c < chunks; c++) vf_store(acc + d0 + c * SW_VW, a[c]);
        }
    }
}

static void attend_tile_simd(const float *q, int64_t q_stride, const int32_t *ctx_lens, int64_t ntok,
                             const kv_view *kv, int64_t group, float sm_scale, float *out, int64_t out_stride) {
    const int64_t D = kv->head_dim;
    float kt[SW_MAX_HEAD_DIM * SW_VW] __attribute__((aligned(64)));
    float v[SW_VW * SW_MAX_HEAD_DIM] __attribute__((aligned(64)));
    float run_max[SW_TILE_TOKENS * SW_MAX_GROUP], run_sum[SW_TILE_TOKENS * SW_MAX_GROUP];
    int64_t max_ctx = 0;
    for (int64_t t = 0; t < ntok; t++) {
        max_ctx = ctx_lens[t] > max_ctx ? ctx_lens[t] : max_ctx;
        for (int64_t g = 0; g < group; g++) {
            run_max[t * group + g] = -FLT_MAX;
            run_sum[t * group + g] = 0.0f;
            memset(out + t * out_stride + g * D, 0, (size_t)D * sizeof(float));
        }
    }
    for (int64_t c0 = 0; c0 < max_ctx; c0 += SW_VW) {
        load_chunk(kv, c0, max_ctx - c0 < SW_VW ? max_ctx - c0 : SW_VW, kt, v);
        const int64_t next = c0 + SW_VW;
        if (next < max_ctx) prefetch_chunk(kv, next, max_ctx - next < SW_VW ? max_ctx - next : SW_VW);
        for (int64_t t = 0; t < ntok; t++) {
            if (c0 >= ctx_lens[t]) continue;
            const int64_t valid = ctx_lens[t] - c0 < SW_VW ? ctx_lens[t] - c0 : SW_VW;
            for (int64_t g = 0; g < group; g += 4) {
                const float *qg = q + t * q_stride + g * D;
                float *og = out + t * out_stride + g * D, *m = &run_max[t * group + g], *l = &run_sum[t * group + g];
                switch (group - g < 4 ? group - g : 4) {
                case 1: attend_heads(1, qg, og, kt, v, valid, D, sm_scale, m, l); break;
                case 2: attend_heads(2, qg, og, kt, v, valid, D, sm_scale, m, l); break;
                case 3: attend_heads(3, qg, og, kt, v, valid, D, sm_scale, m, l); break;
                default: attend_heads(4, qg, og, kt, v, valid, D, sm_scale, m, l); break;
                }
            }
        }
    }
    for (int64_t t = 0; t < ntok; t++) {
        for (int64_t g = 0; g < group; g++) {
            const float inv = run_sum[t * group + g] > 0.0f ? 1.0f / run_sum[t * group + g] : 0.0f;
            float *o = out + t * out_stride + g * D;
            for (int64_t d = 0; d < D; d++) o[d] *= inv;
        }
    }
}
#endif

void sw_attend_tile(const float *q, int64_t q_stride, const int32_t *ctx_lens, int64_t ntok, const void *k_cache,
                    const void *v_cache, int is_f16, const int32_t *table, int64_t kv_head, int64_t num_kv_heads,
                    int64_t group, int64_t head_dim, int64_t block_size, float sm_scale, float *out,
                    int64_t out_stride) {
#if defined(SW_AVX512) || defined(SW_AVX2)
    if (head_dim % SW_VW == 0 && ntok <= SW_TILE_TOKENS) {
        const kv_view kv = {(const char *)k_cache, (const char *)v_cache, table, kv_head, num_kv_heads, block_size,
                            head_dim, head_dim * (is_f16 ? 2 : 4), is_f16};
        attend_tile_simd(q, q_stride, ctx_lens, ntok, &kv, group, sm_scale, out, out_stride);
        return;
    }
#endif
    for (int64_t t = 0; t < ntok; t++)
        sw_attend_item_scalar(q + t * q_stride, k_cache, v_cache, is_f16, table, ctx_lens[t], kv_head, num_kv_heads,
                              group, head_dim, block_size, sm_scale, out + t * out_stride);
}
