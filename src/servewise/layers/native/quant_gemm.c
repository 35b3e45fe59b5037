/* Quantized linear layer: out[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]).
 *
 * Weights stay in their stored blocks (4-bit d*code+m or 8-bit d*q, layout in sw_kernels.h)
 * and are read once per call whatever the number of rows. Activations are quantized per
 * row in 32-wide blocks to 15 bits (x ~ dx * qx, |qx| <= 16256), carried as two int8 planes:
 * 8-bit activations alone cost SmolLM2-135M 3% of its greedy top-1 agreement with fp32 (its
 * outlier channels flatten the rest of their block), 15 bits nothing measurable. For each
 * block the integer dot product isum = sum(code * qx) is exact on every path; it is then
 * folded into a float accumulator per output element in block order:
 *     acc = fma(isum, dw * dx, acc)              (both formats)
 *     acc = fma(mw, sx, acc)                     (4-bit only; sx = dx * sum(qx))
 * The same operations in the same order on every ISA and for every row count: results are
 * bitwise identical across paths and independent of the batch.
 */
#include <math.h>
#include <string.h>

#include "sw_kernels.h"

#define SW_PANEL_ROWS 256 /* rows of activations kept in L2 while a weight tile is reused */
#define SW_PREFETCH_ROWS 16 /* up to this many rows a tile is computed faster than DRAM delivers it */

static inline int32_t load_i32(const void *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline float load_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return sw_half_to_float(h);
}

void sw_qact_init(sw_qact *a, void *work, int64_t m, int64_t kb) {
    const int64_t plane = m * kb * SW_BLOCK;
    char *p = (char *)work;
    a->hi = (int8_t *)p;
    a->lo = (int8_t *)(p + plane);
    a->hiu = (uint8_t *)(p + 2 * plane);
    a->lou = (uint8_t *)(p + 3 * plane);
    a->d = (float *)(p + 4 * plane);
    a->s = a->d + m * kb;
    a->kb = kb;
}

/* ---- activation quantization ----------------------------------------------------------
 * Per 32-wide block: d = amax / 16256, q = round(x / d) in [-16256, 16256] (15 bits), kept as
 * two int8 planes q = 128 * hi + lo with hi = round(q / 128) in [-127, 127], lo in [-64, 63],
 * so that every dot product is two int8 ones. The scalar parts (d, 1/d, rounding) are the
 * same on every path, so the planes agree bit for bit. */
#define SW_QMAX 16256.0f /* 127 * 128 */

static inline void block_scale(float amax, float *d, float *id) {
    *d = amax / SW_QMAX;
    *id = amax > 0.0f ? SW_QMAX / amax : 0.0f;
}

typedef struct {
    int8_t *hi, *lo;
    uint8_t *hiu, *lou;
} block_out;

static inline block_out block_at(const sw_qact *a, int64_t r, int64_t b) {
    const int64_t off = (r * a->kb + b) * SW_BLOCK;
    return (block_out){a->hi + off, a->lo + off, a->hiu + off, a->lou + off};
}

static void quantize_block_scalar(const float *v, block_out o, float *d_out, float *s_out) {
    float amax = 0.0f;
    for (int i = 0; i < SW_BLOCK; i++) amax = fmaxf(amax, fabsf(v[i]));
    float d, id;
    block_scale(amax, &d, &id);
    int32_t sum = 0;
    for (int i = 0; i < SW_BLOCK; i++) {
        const float r = fminf(fmaxf(v[i] * id, -SW_QMAX), SW_QMAX);
        const int32_t q = (int32_t)rintf(r), hi = (q + 64) >> 7; /* nearest-even, as cvtps2dq */
        o.hi[i] = (int8_t)hi;
        o.lo[i] = (int8_t)(q - hi * 128);
        o.hiu[i] = (uint8_t)(hi + 128);
        o.lou[i] = (uint8_t)(o.lo[i] + 128);
        sum += q;
    }
    *d_out = d;
    *s_out = d * (float)sum;
}

#if defined(SW_AVX512)
static inline void quantize_block(const float *v, block_out o, float *d_out, float *s_out) {
    const __m512 x0 = _mm512_loadu_ps(v), x1 = _mm512_loadu_ps(v + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
    float d, id;
    block_scale(amax, &d, &id);
    const __m512 vid = _mm512_set1_ps(id), lim = _mm512_set1_ps(SW_QMAX);
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(x0, vid), -lim), lim));
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(x1, vid), -lim), lim));
    const __m512i c64 = _mm512_set1_epi32(64);
    const __m512i h0 = _mm512_srai_epi32(_mm512_add_epi32(q0, c64), 7), h1 = _mm512_srai_epi32(_mm512_add_epi32(q1, c64), 7);
    const __m512i l0 = _mm512_sub_epi32(q0, _mm512_slli_epi32(h0, 7)), l1 = _mm512_sub_epi32(q1, _mm512_slli_epi32(h1, 7));
    const __m256i hi = _mm256_set_m128i(_mm512_cvtsepi32_epi8(h1), _mm512_cvtsepi32_epi8(h0));
    const __m256i lo = _mm256_set_m128i(_mm512_cvtsepi32_epi8(l1), _mm512_cvtsepi32_epi8(l0));
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    _mm256_storeu_si256((__m256i *)o.hi, hi);
    _mm256_storeu_si256((__m256i *)o.lo, lo);
    _mm256_storeu_si256((__m256i *)o.hiu, _mm256_xor_si256(hi, flip));
    _mm256_storeu_si256((__m256i *)o.lou, _mm256_xor_si256(lo, flip));
    *d_out = d;
    *s_out = d * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
}
#elif defined(SW_AVX2)
/* 4 x 8 int32 (each in int8 range) -> 32 int8 in order (packs interleave 128-bit lanes) */
static inline __m256i pack32(const __m256i *v) {
    const __m256i w01 = _mm256_packs_epi32(v[0], v[1]), w23 = _mm256_packs_epi32(v[2], v[3]);
    return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static inline void quantize_block(const float *v, block_out o, float *d_out, float *s_out) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 x[4], m = _mm256_setzero_ps();
    for (int j = 0; j < 4; j++) {
        x[j] = _mm256_loadu_ps(v + 8 * j);
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, x[j]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float d, id;
    block_scale(_mm_cvtss_f32(m4), &d, &id);
    const __m256 vid = _mm256_set1_ps(id), lim = _mm256_set1_ps(SW_QMAX), nlim = _mm256_set1_ps(-SW_QMAX);
    __m256i hi[4], lo[4], sum = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        const __m256i q = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(x[j], vid), nlim), lim));
        hi[j] = _mm256_srai_epi32(_mm256_add_epi32(q, _mm256_set1_epi32(64)), 7);
        lo[j] = _mm256_sub_epi32(q, _mm256_slli_epi32(hi[j], 7));
        sum = _mm256_add_epi32(sum, q);
    }
    const __m256i h = pack32(hi), l = pack32(lo), flip = _mm256_set1_epi8((char)0x80);
    _mm256_storeu_si256((__m256i *)o.hi, h);
    _mm256_storeu_si256((__m256i *)o.lo, l);
    _mm256_storeu_si256((__m256i *)o.hiu, _mm256_xor_si256(h, flip));
    _mm256_storeu_si256((__m256i *)o.lou, _mm256_xor_si256(l, flip));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    *d_out = d;
    *s_out = d * (float)_mm_cvtsi128_si32(s4);
}
#else
#define quantize_block quantize_block_scalar
#endif

void sw_quantize_row(const float *xr, int64_t k, const sw_qact *a, int64_t r) {
    const int64_t kb = a->kb;
    for (int64_t b = 0; b < kb; b++) {
        float *d = a->d + r * kb + b, *s = a->s + r * kb + b;
        if ((b + 1) * SW_BLOCK <= k) {
            quantize_block(xr + b * SW_BLOCK, block_at(a, r, b), d, s);
        } else { /* the row's last, partial block: zero-padded */
            float v[SW_BLOCK] = {0};
            memcpy(v, xr + b * SW_BLOCK, (size_t)(k - b * SW_BLOCK) * sizeof(float));
            quantize_block_scalar(v, block_at(a, r, b), d, s);
        }
    }
}

void sw_quantize_rows_ws(const float *x, int64_t m, int64_t k, int64_t ldx, const sw_qact *a) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < m; r++) sw_quantize_row(x + r * ldx, k, a, r);
}

/* Block b of a tile: its code lines and its scales. */
static inline void sw_prefetch_block(const sw_qweight *w, const uint8_t *tile, int64_t b) {
    if (!tile) return;
    const int64_t code_bytes = w->bits == 4 ? 256 : 512, scale_bytes = w->bits == 4 ? 64 : 32;
    for (int64_t off = 0; off < code_bytes; off += 64) __builtin_prefetch(tile + b * code_bytes + off, 0, 3);
    __builtin_prefetch(tile + w->kb * code_bytes + b * scale_bytes, 0, 3);
}

/* ---- output: out = acc (+ bias), or out += acc (+ bias) for a residual ----------------- */
static inline float finish_scalar(float acc, const float *bias, int64_t col, float prev, int accumulate) {
    float v = bias ? acc + bias[col] : acc;
    return accumulate ? prev + v : v;
}

/* ---- generic tiles ---------------------------------------------------------------------- */
#if !defined(SW_AVX512) && !defined(SW_AVX2)
static void tile_generic(const sw_qweight *w, const uint8_t *tile, const sw_qact *a, int64_t r0, int64_t mr,
                         float *out, int64_t ldo, int64_t n0, int accumulate) {
    const int64_t kb = w->kb, cols = w->n - n0 < SW_TILE_ROWS ? w->n - n0 : SW_TILE_ROWS;
    const int64_t code_bytes = w->bits == 4 ? 256 : 512, scale_bytes = w->bits == 4 ? 64 : 32;
    const uint8_t *scales = tile + kb * code_bytes;
    for (int64_t r = r0; r < r0 + mr; r++) {
        for (int64_t c = 0; c < cols; c++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < kb; b++) {
                const uint8_t *cb = tile + b * code_bytes;
                const block_out x = block_at(a, r, b);
                int32_t isum = 0;
                for (int g = 0; g < 8; g++) {
                    for (int i = 0; i < 4; i++) {
                        int32_t code;
                        if (w->bits == 4) {
                            const uint8_t byte = cb[64 * (g & 3) + 4 * c + i];
                            code = g < 4 ? (byte & 0x0F) : (byte >> 4);
                        } else {
                            code = (int8_t)cb[64 * g + 4 * c + i];
                        }
                        isum += code * (128 * x.hi[4 * g + i] + x.lo[4 * g + i]);
                    }
                }
                const float dw = load_half(scales + b * scale_bytes + 2 * c);
                acc = fmaf((float)isum, dw * a->d[r * kb + b], acc);
                if (w->bits == 4) acc = fmaf(load_half(scales + b * scale_bytes + 32 + 2 * c), a->s[r * kb + b], acc);
            }
            float *o = out + r * ldo + n0 + c;
            *o = finish_scalar(acc, w->bias, n0 + c, *o, accumulate);
        }
    }
}

#elif defined(SW_AVX512)
#include "quant_gemm_avx512.h"
#else
#include "quant_gemm_avx2.h"
#endif

static void tile_rows(const sw_qweight *w, int64_t t, const sw_qact *a, int64_t r0, int64_t mr, float *out,
                      int64_t ldo, int accumulate) {
    const uint8_t *tile = w->tiles + t * w->tile_bytes;
    /* A few rows stream the weights from DRAM faster than the out-of-order window can request
     * them: each block also asks for the same block of the next tile (sw_prefetch_block). */
    const uint8_t *next = mr <= SW_PREFETCH_ROWS && (t + 2) * SW_TILE_ROWS < w->n ? tile + 2 * w->tile_bytes : NULL;
#if defined(SW_AVX512) || defined(SW_AVX2)
    sw_tile_simd(w, tile, next, a, r0, mr, out, ldo, t * SW_TILE_ROWS, accumulate);
#else
    (void)next;
    tile_generic(w, tile, a, r0, mr, out, ldo, t * SW_TILE_ROWS, accumulate);
#endif
}

void sw_qgemm_ws(const sw_qweight *w, const sw_qact *a, int64_t m, float *out, int64_t ldo, int accumulate) {
    const int64_t n_tiles = (w->n + SW_TILE_ROWS - 1) / SW_TILE_ROWS;
    for (int64_t p0 = 0; p0 < m; p0 += SW_PANEL_ROWS) {
        const int64_t pm = m - p0 < SW_PANEL_ROWS ? m - p0 : SW_PANEL_ROWS;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < n_tiles; t++) tile_rows(w, t, a, p0, pm, out, ldo, accumulate);
    }
}

/* ---- entry points ---------------------------------------------------------------------- */

/* x: [m, k] fp32 (row stride ldx) -> out: [m, n] fp32. work: sw_qact_bytes(m, kb) bytes. */
int sw_qlinear(const float *x, int64_t m, int64_t ldx, const sw_qweight *w, float *out, void *work) {
    if (m <= 0 || w->k <= 0 || w->n <= 0 || (w->bits != 4 && w->bits != 8) || w->kb * SW_BLOCK < w->k) return 1;
    sw_qact a;
    sw_qact_init(&a, work, m, w->kb);
#pragma omp parallel
    {
        sw_quantize_rows_ws(x, m, w->k, ldx, &a);
        sw_qgemm_ws(w, &a, m, out, w->n, 0);
    }
    return 0;
}

/* Activation quantization alone (tests compare it with the PyTorch reference). */
int sw_quantize_rows(const float *x, int64_t m, int64_t k, int64_t kb, void *work) {
    if (m <= 0 || k <= 0 || kb * SW_BLOCK < k) return 1;
    sw_qact a;
    sw_qact_init(&a, work, m, kb);
#pragma omp parallel
    sw_quantize_rows_ws(x, m, k, k, &a);
    return 0;
}

/* Rows of the weight as fp32 (an embedding lookup from the lm_head's blocks): the same
 * d * code + m (two roundings) as GGUF dequantization. rows: [num_rows] -> out [num_rows, k]. */
int sw_dequant_rows(const sw_qweight *w, const int64_t *rows, int64_t num_rows, float *out) {
    const int64_t code_bytes = w->bits == 4 ? 256 : 512, scale_bytes = w->bits == 4 ? 64 : 32;
    for (int64_t i = 0; i < num_rows; i++) {
        if (rows[i] < 0 || rows[i] >= w->n) return 1;
    }
#pragma omp parallel for schedule(static) if (num_rows > 8)
    for (int64_t i = 0; i < num_rows; i++) {
        const int64_t c = rows[i] % SW_TILE_ROWS;
        const uint8_t *tile = w->tiles + (rows[i] / SW_TILE_ROWS) * w->tile_bytes;
        const uint8_t *scales = tile + w->kb * code_bytes;
        for (int64_t j = 0; j < w->k; j++) {
            const int64_t b = j / SW_BLOCK, g = (j % SW_BLOCK) / 4, e = j % 4;
            const uint8_t *cb = tile + b * code_bytes;
            const float d = load_half(scales + b * scale_bytes + 2 * c);
            if (w->bits == 4) {
                const uint8_t byte = cb[64 * (g & 3) + 4 * c + e];
                const float code = (float)(g < 4 ? (byte & 0x0F) : (byte >> 4));
                out[i * w->k + j] = d * code + load_half(scales + b * scale_bytes + 32 + 2 * c);
            } else {
                out[i * w->k + j] = d * (float)(int8_t)cb[64 * g + 4 * c + e];
            }
        }
    }
    return 0;
}

int sw_isa(void) {
#if defined(SW_AVX512)
    return 2;
#elif defined(SW_AVX2)
    return 1;
#else
    return 0;
#endif
}
