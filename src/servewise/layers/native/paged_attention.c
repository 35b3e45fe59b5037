/* Paged attention over a block-structured KV cache, fp32, for CPU.
 *
 * One work item = one query token x one KV head; the G query heads sharing that
 * KV head are computed together so every K/V row is loaded once. Softmax is
 * computed online block by block (running max and sum), so no score buffer the
 * size of the context is needed. Items are independent and each is reduced in a
 * fixed order: a token's result does not depend on what else is in the batch.
 *
 * Layouts (all contiguous):
 *   q, out        [num_tokens, num_q_heads, head_dim]
 *   k/v_cache     [num_blocks, num_kv_heads, block_size, head_dim]
 *   block_tables  [num_rows, max_blocks_per_row]  (int32 block ids)
 *   token_rows    [num_tokens]  row of block_tables that token reads
 *   ctx_lens      [num_tokens]  number of keys the token attends to (positions 0..ctx_len-1)
 */
#include <float.h>
#include <math.h>
#include <stdint.h>

#define SW_MAX_GROUP 16
#define SW_MAX_HEAD_DIM 256
#define SW_MAX_BLOCK 128

static void attend_item(const float *restrict qh, const float *restrict k_cache,
                        const float *restrict v_cache, const int32_t *restrict table,
                        int64_t ctx_len, int64_t kv_head, int64_t num_kv_heads, int64_t group,
                        int64_t head_dim, int64_t block_size, float scale, float *restrict out_h) {
    float acc[SW_MAX_GROUP][SW_MAX_HEAD_DIM];
    float run_max[SW_MAX_GROUP], run_sum[SW_MAX_GROUP];
    float scores[SW_MAX_GROUP][SW_MAX_BLOCK];
    for (int64_t g = 0; g < group; g++) {
        run_max[g] = -FLT_MAX;
        run_sum[g] = 0.0f;
        for (int64_t d = 0; d < head_dim; d++) acc[g][d] = 0.0f;
    }
    const int64_t block_stride = num_kv_heads * block_size * head_dim;
    const int64_t num_blocks = (ctx_len + block_size - 1) / block_size;
    for (int64_t b = 0; b < num_blocks; b++) {
        const int64_t n = (b == num_blocks - 1) ? ctx_len - b * block_size : block_size;
        const int64_t base = (int64_t)table[b] * block_stride + kv_head * block_size * head_dim;
        const float *restrict kb = k_cache + base;
        const float *restrict vb = v_cache + base;
        for (int64_t g = 0; g < group; g++) {
            const float *restrict qg = qh + g * head_dim;
            float block_max = -FLT_MAX;
            for (int64_t j = 0; j < n; j++) {
                const float *restrict kj = kb + j * head_dim;
                float s = 0.0f;
#pragma omp simd reduction(+ : s)
                for (int64_t d = 0; d < head_dim; d++) s += qg[d] * kj[d];
                s *= scale;
                scores[g][j] = s;
                if (s > block_max) block_max = s;
            }
            const float new_max = block_max > run_max[g] ? block_max : run_max[g];
            const float correction = expf(run_max[g] - new_max);
            run_sum[g] *= correction;
            for (int64_t d = 0; d < head_dim; d++) acc[g][d] *= correction;
            for (int64_t j = 0; j < n; j++) {
                const float p = expf(scores[g][j] - new_max);
                run_sum[g] += p;
                const float *restrict vj = vb + j * head_dim;
#pragma omp simd
                for (int64_t d = 0; d < head_dim; d++) acc[g][d] += p * vj[d];
            }
            run_max[g] = new_max;
        }
    }
    for (int64_t g = 0; g < group; g++) {
        const float inv = run_sum[g] > 0.0f ? 1.0f / run_sum[g] : 0.0f;
        for (int64_t d = 0; d < head_dim; d++) out_h[g * head_dim + d] = acc[g][d] * inv;
    }
}

int sw_paged_attention_f32(const float *q, const float *k_cache, const float *v_cache,
                           const int32_t *block_tables, int64_t max_blocks_per_row,
                           const int32_t *token_rows, const int32_t *ctx_lens, float *out,
                           int64_t num_tokens, int64_t num_q_heads, int64_t num_kv_heads,
                           int64_t head_dim, int64_t block_size, float scale) {
    if (num_kv_heads <= 0 || num_q_heads % num_kv_heads != 0) return 1;
    const int64_t group = num_q_heads / num_kv_heads;
    if (group > SW_MAX_GROUP || head_dim > SW_MAX_HEAD_DIM || block_size > SW_MAX_BLOCK) return 2;
    const int64_t items = num_tokens * num_kv_heads;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; item++) {
        const int64_t t = item / num_kv_heads, h = item % num_kv_heads;
        const int32_t *table = block_tables + (int64_t)token_rows[t] * max_blocks_per_row;
        const int64_t offset = (t * num_q_heads + h * group) * head_dim;
        attend_item(q + offset, k_cache, v_cache, table, ctx_lens[t], h, num_kv_heads, group,
                    head_dim, block_size, scale, out + offset);
    }
    return 0;
}
