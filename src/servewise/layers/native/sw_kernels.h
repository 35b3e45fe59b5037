/* Shared declarations of the ServeWise CPU kernels.
 *
 * The same sources are compiled once per instruction set, with that ISA's flags and
 * nothing more (never -march=native): the AVX2 object never holds an AVX-512 instruction.
 *   avx512: AVX-512 F/BW/VL/VNNI (+ AVX2/FMA/F16C), vpdpbusd dot products
 *   avx2:   AVX2/FMA/F16C, vpmaddubsw + vpmaddwd dot products
 *   generic: portable C
 * Every path computes each output element with the same integer sums and the same float
 * operations in the same order, so all three give bitwise-identical results, and no
 * result depends on how many rows share a call (batch invariance).
 */
#ifndef SW_KERNELS_H
#define SW_KERNELS_H

#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define SW_AVX512 1
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define SW_AVX2 1
#endif
#if defined(SW_AVX2) || defined(SW_AVX512)
#include <immintrin.h>
#endif

/* ---- shared helpers ------------------------------------------------------------------- */
static inline float sw_half_to_float(uint16_t h) {
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


#define SW_MAX_GROUP 16
#define SW_MAX_HEAD_DIM 256
#define SW_MAX_BLOCK 128

/* ---- quantized weights ---------------------------------------------------------------
 * A weight [n, k] is stored as tiles of 16 output rows; a tile holds every 32-wide block
 * along k (kb = ceil(k / 32) blocks; k is zero-padded), codes first, then scales:
 *   bits 4: value = d * code + m, code in 0..15 (Q4_0, Q4_1, Q4_K values)
 *           codes: kb x 256 bytes; scales: kb x (16 fp16 d, 16 fp16 m)
 *   bits 8: value = d * q, q in -128..127 (Q8_0 values)
 *           codes: kb x 512 bytes; scales: kb x 16 fp16 d
 * Inside a block, k-group g holds k = 4g..4g+3 and is stored as 64 bytes
 * [row0 k0..3, row1 k0..3, ..., row15 k0..3]: one 32-bit lane per row, the shape of a
 * vpdpbusd / vpmaddubsw+vpmaddwd dot product. 8-bit blocks store groups 0..7 in order;
 * 4-bit blocks store 4 chunks of 64 bytes, chunk c = group c (low nibbles) | group c+4
 * (high nibbles).
 */
#define SW_TILE_ROWS 16
#define SW_BLOCK 32

typedef struct {
    const uint8_t *tiles; /* [ceil(n / 16)][tile_bytes] */
    const float *bias;    /* [n] or NULL */
    int64_t n, k, kb;     /* kb = ceil(k / 32) */
    int64_t tile_bytes;   /* kb * (4-bit: 320, 8-bit: 544) */
    int64_t bits;         /* 4 or 8 */
} sw_qweight;

/* Activations quantized per row in 32-wide blocks: x ~ d * q, |q| <= 16256 (15 bits), held as
 * two int8 planes q = 128 * hi + lo so every dot product is two int8 ones (quant_gemm.c). */
typedef struct {
    int8_t *hi, *lo;     /* [m][kb * 32], zero past k */
    uint8_t *hiu, *lou;  /* hi + 128, lo + 128: vpdpbusd's unsigned operand against 8-bit weights */
    float *d;            /* [m][kb] */
    float *s;            /* [m][kb]: d * sum(q) over the block */
    int64_t kb;
} sw_qact;

/* Bytes of activation workspace for m rows of kb blocks (4 planes, d, s). */
static inline int64_t sw_qact_bytes(int64_t m, int64_t kb) { return m * kb * (4 * SW_BLOCK + 8); }
void sw_qact_init(sw_qact *a, void *work, int64_t m, int64_t kb);

void sw_quantize_row(const float *x, int64_t k, const sw_qact *a, int64_t row);
/* Worksharing pieces (orphaned `omp for`): call inside a parallel region, every thread. */
void sw_quantize_rows_ws(const float *x, int64_t m, int64_t k, int64_t ldx, const sw_qact *a);
void sw_qgemm_ws(const sw_qweight *w, const sw_qact *a, int64_t m, float *out, int64_t ldo, int accumulate);

/* ---- paged attention -------------------------------------------------------------------- */
#define SW_TILE_TOKENS 16 /* query tokens of one request that share each K/V chunk */

/* ntok tokens of one request (token t's query heads at q + t * q_stride, visible keys
 * ctx_lens[t]) against one KV head; out likewise. attention_tile.c. */
void sw_attend_tile(const float *q, int64_t q_stride, const int32_t *ctx_lens, int64_t ntok, const void *k_cache,
                    const void *v_cache, int is_f16, const int32_t *table, int64_t kv_head, int64_t num_kv_heads,
                    int64_t group, int64_t head_dim, int64_t block_size, float sm_scale, float *out,
                    int64_t out_stride);
void sw_attend_item_scalar(const float *qh, const void *k_cache, const void *v_cache, int is_f16, const int32_t *table,
                           int64_t ctx_len, int64_t kv_head, int64_t num_kv_heads, int64_t group, int64_t head_dim,
                           int64_t block_size, float sm_scale, float *out_h);
void sw_store_kv(void *cache, int is_f16, int64_t offset, const float *src, int64_t n);

#endif
