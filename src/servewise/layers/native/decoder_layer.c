/* One Llama decoder layer for a whole step, in one call and one OpenMP region.
 *
 * Every token of the step (decodes and prefill chunks alike) attends through the paged
 * KV cache, so each token is computed by the same code whatever else is in the step:
 * RMSNorm, fused q/k/v, rotate-half RoPE, K/V into the cache, paged attention,
 * o_proj + residual, RMSNorm, fused gate/up, SiLU*up, down + residual. Each linear layer's
 * input rows are quantized as they are produced (quant_gemm.c) and its weights read once
 * for all rows.
 */
#include <math.h>
#include <string.h>

#include "simd_vec.h"

typedef struct {
    const float *input_norm, *post_norm; /* [hidden] */
    sw_qweight qkv, o, gate_up, down;
} sw_layer_weights;

typedef struct {
    int64_t num_tokens, hidden, num_heads, num_kv_heads, head_dim, intermediate, block_size, max_blocks_per_row;
    float eps, sm_scale;
    int kv_is_f16;
    const float *cos, *sin;      /* [max_positions, head_dim / 2] */
    const int64_t *positions;    /* [T] */
    const int64_t *slot_blocks;  /* [T] */
    const int64_t *slot_offsets; /* [T] */
    const int32_t *block_tables; /* [R, max_blocks_per_row] */
    const int32_t *token_rows;   /* [T] */
    const int32_t *ctx_lens;     /* [T] */
} sw_step_meta;

static void rms_norm_row(const float *restrict x, const float *restrict w, int64_t n, float eps, float *restrict out) {
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = w[i] * (x[i] * inv);
}

/* out[i] = silu(gate[i]) * up[i], silu(g) = g * sigmoid(g), sigmoid from exp(-|g|) <= 1. */
static void silu_mul_row(const float *restrict gate, const float *restrict up, int64_t n, float *restrict out) {
    int64_t i = 0;
#if defined(SW_AVX512) || defined(SW_AVX2)
    const vf one = vf_set1(1.0f), sign = vf_set1(-0.0f);
    for (; i + SW_VW <= n; i += SW_VW) {
        const vf g = vf_load(gate + i);
        const vf e = vf_exp(vf_or(g, sign)); /* exp(-|g|) */
        const vf r = vf_div(one, vf_add(one, e));
        vf_store(out + i, vf_mul(vf_mul(g, vf_select_nonneg(g, r, vf_mul(e, r))), vf_load(up + i)));
    }
#endif
    for (; i < n; i++) {
        const float e = expf(-fabsf(gate[i])), r = 1.0f / (1.0f + e);
        out[i] = gate[i] * (gate[i] >= 0.0f ? r : e * r) * up[i];
    }
}

/* Rotate one head in place (rotate-half layout) at position pos. */
static void rope_head(float *v, const float *c, const float *sn, int64_t half) {
    for (int64_t i = 0; i < half; i++) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * sn[i];
        v[i + half] = b * c[i] + a * sn[i];
    }
}

/* RMSNorm of each row of x, then its quantization for the next linear: one pass per row, one
 * barrier (a decode step's layer is mostly barriers and weight reads). */
static void norm_quantize_ws(const float *x, const float *weight, int64_t T, int64_t H, float eps, float *normed,
                             const sw_qact *a) {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; t++) {
        rms_norm_row(x + t * H, weight, H, eps, normed + t * H);
        sw_quantize_row(normed + t * H, H, a, t);
    }
}

/* Bytes of `work` sw_decoder_layer needs for T tokens. */
int64_t sw_decoder_work_bytes(int64_t T, int64_t hidden, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                              int64_t intermediate) {
    const int64_t wide = hidden > intermediate ? hidden : intermediate;
    const int64_t q_size = num_heads * head_dim, qkv_n = q_size + 2 * num_kv_heads * head_dim;
    const int64_t widest_in = wide > q_size ? wide : q_size;
    const int64_t floats = T * (wide + qkv_n + q_size + 2 * intermediate);
    return floats * (int64_t)sizeof(float) + sw_qact_bytes(T, (widest_in + SW_BLOCK - 1) / SW_BLOCK) + 64 +
           (T + 1) * (int64_t)sizeof(int64_t);
}

/* Runs of at most SW_TILE_TOKENS consecutive tokens of the same request (same block-table
 * row): starts[i] .. starts[i + 1]. Returns the number of tiles. */
static int64_t attention_tiles(const sw_step_meta *s, int64_t *starts) {
    int64_t n = 0;
    for (int64_t t = 0; t < s->num_tokens; t++) {
        if (t == 0 || s->token_rows[t] != s->token_rows[t - 1] || t - starts[n - 1] == SW_TILE_TOKENS)
            starts[n++] = t;
    }
    starts[n] = s->num_tokens;
    return n;
}

int sw_decoder_layer(float *x, const sw_layer_weights *w, void *k_cache, void *v_cache, const sw_step_meta *s,
                     void *work) {
    const int64_t T = s->num_tokens, H = s->hidden, D = s->head_dim, half = D / 2, I = s->intermediate;
    const int64_t q_size = s->num_heads * D, kv_size = s->num_kv_heads * D, qkv_n = q_size + 2 * kv_size;
    const int64_t group = s->num_heads / s->num_kv_heads, heads = s->num_heads + s->num_kv_heads;
    if (group > SW_MAX_GROUP || D > SW_MAX_HEAD_DIM || s->block_size > SW_MAX_BLOCK || D % 2) return 2;
    if (w->qkv.n != qkv_n || w->o.n != H || w->gate_up.n != 2 * I || w->down.n != H || w->qkv.k != H ||
        w->o.k != q_size || w->gate_up.k != H || w->down.k != I)
        return 3;
    float *normed = (float *)work;                                    /* [T, max(H, I)] */
    float *qkv = normed + T * (H > I ? H : I);                        /* [T, qkv_n] */
    float *attn = qkv + T * qkv_n;                                    /* [T, q_size] */
    float *gate_up = attn + T * q_size;                               /* [T, 2I] */
    char *act = (char *)(((uintptr_t)(gate_up + T * 2 * I) + 63) & ~(uintptr_t)63); /* quantized rows */
    const int64_t widest_in = (H > I ? H : I) > q_size ? (H > I ? H : I) : q_size;
    int64_t *tiles = (int64_t *)(act + sw_qact_bytes(T, (widest_in + SW_BLOCK - 1) / SW_BLOCK));
    const int64_t num_tiles = attention_tiles(s, tiles);
    sw_qact a_hidden, a_attn, a_mlp; /* the same workspace, laid out for each input width */
    sw_qact_init(&a_hidden, act, T, w->qkv.kb);
    sw_qact_init(&a_attn, act, T, w->o.kb);
    sw_qact_init(&a_mlp, act, T, w->down.kb);
#pragma omp parallel
    {
        norm_quantize_ws(x, w->input_norm, T, H, s->eps, normed, &a_hidden);
        sw_qgemm_ws(&w->qkv, &a_hidden, T, qkv, qkv_n, 0);
        /* RoPE on q and k heads (adjacent in qkv), then the token's K/V into its cache slot */
#pragma omp for schedule(static)
        for (int64_t item = 0; item < T * heads; item++) {
            const int64_t t = item / heads, h = item % heads;
            float *v = qkv + t * qkv_n + h * D;
            rope_head(v, s->cos + s->positions[t] * half, s->sin + s->positions[t] * half, half);
            if (h >= s->num_heads) {
                const int64_t kvh = h - s->num_heads;
                const int64_t off = ((s->slot_blocks[t] * s->num_kv_heads + kvh) * s->block_size + s->slot_offsets[t]) * D;
                sw_store_kv(k_cache, s->kv_is_f16, off, v, D);
                sw_store_kv(v_cache, s->kv_is_f16, off, qkv + t * qkv_n + q_size + kv_size + kvh * D, D);
            }
        }
        /* dynamic: a prefill's later tiles see more keys than its first ones */
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < num_tiles * s->num_kv_heads; item++) {
            const int64_t i = item / s->num_kv_heads, h = item % s->num_kv_heads, t = tiles[i];
            const int32_t *table = s->block_tables + (int64_t)s->token_rows[t] * s->max_blocks_per_row;
            sw_attend_tile(qkv + t * qkv_n + h * group * D, qkv_n, s->ctx_lens + t, tiles[i + 1] - t, k_cache, v_cache,
                           s->kv_is_f16, table, h, s->num_kv_heads, group, D, s->block_size, s->sm_scale,
                           attn + t * q_size + h * group * D, q_size);
        }
        sw_quantize_rows_ws(attn, T, q_size, q_size, &a_attn);
        sw_qgemm_ws(&w->o, &a_attn, T, x, H, 1);
        norm_quantize_ws(x, w->post_norm, T, H, s->eps, normed, &a_hidden);
        sw_qgemm_ws(&w->gate_up, &a_hidden, T, gate_up, 2 * I, 0);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            silu_mul_row(gate_up + t * 2 * I, gate_up + t * 2 * I + I, I, normed + t * I);
            sw_quantize_row(normed + t * I, I, &a_mlp, t);
        }
        sw_qgemm_ws(&w->down, &a_mlp, T, x, H, 1);
    }
    return 0;
}
