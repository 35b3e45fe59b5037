/* AVX-512 VNNI tiles of quant_gemm.c (included there only when compiled for avx512).
 *
 * One tile = 16 output columns = one zmm lane per column. Per 32-wide block, 16 vpdpbusd
 * (one per k-group of 4 and activation plane) give each column's exact integer dot product
 * for one row; the weights of the block are loaded (and unpacked) once and reused for up to
 * SW_MR rows.
 *   4-bit: codes (u8 0..15) are vpdpbusd's unsigned operand, the activation planes its signed one.
 *   8-bit: the signed weights are the signed operand, so the planes go in as hi + 128 and
 *          lo + 128; the 128 * sum(w) each adds is computed per block (one more vpdpbusd chain
 *          against ones, shared by every row) and subtracted, 129 times in all once hi is
 *          scaled by 128: the result is the exact sum(q * w).
 */
#define SW_MR 8

static inline __attribute__((always_inline)) void store16(float *o, __m512 acc, const float *bias, int64_t n0,
                                                          int64_t cols, int accumulate) {
    const __mmask16 mask = cols >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << cols) - 1);
    __m512 v = acc;
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, bias + n0));
    if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), v);
    _mm512_mask_storeu_ps(o, mask, v);
}

/* The block's 8 k-groups as vpdpbusd operands (4-bit: unpacked codes; 8-bit: signed bytes),
 * and for 8-bit the 129 * 128 * sum(w) correction. */
static inline __attribute__((always_inline)) __m512i load_block(const uint8_t *cb, const int bits, __m512i wv[8]) {
    if (bits == 4) {
        const __m512i low = _mm512_set1_epi8(0x0F);
        for (int c = 0; c < 4; c++) {
            const __m512i v = _mm512_loadu_si512((const void *)(cb + 64 * c));
            wv[c] = _mm512_and_si512(v, low);
            wv[c + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        }
        return _mm512_setzero_si512();
    }
    __m512i wsum = _mm512_setzero_si512();
    for (int g = 0; g < 8; g++) {
        wv[g] = _mm512_loadu_si512((const void *)(cb + 64 * g));
        wsum = _mm512_dpbusd_epi32(wsum, _mm512_set1_epi8(1), wv[g]);
    }
    return _mm512_add_epi32(_mm512_slli_epi32(wsum, 14), _mm512_slli_epi32(wsum, 7));
}

static inline __attribute__((always_inline)) void qtile_rows(const sw_qweight *w, const uint8_t *tile,
                                                             const uint8_t *next, const sw_qact *a, int64_t r0,
                                                             const int mr, const int bits, float *out, int64_t ldo,
                                                             int64_t n0, int accumulate) {
    const int64_t kb = w->kb, code_bytes = bits == 4 ? 256 : 512, scale_bytes = bits == 4 ? 64 : 32;
    const uint8_t *scales = tile + kb * code_bytes;
    __m512 acc[SW_MR];
    for (int r = 0; r < mr; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < kb; b++) {
        sw_prefetch_block(w, next, b);
        __m512i wv[8];
        const __m512i corr = load_block(tile + b * code_bytes, bits, wv);
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + b * scale_bytes)));
        const __m512 mw = bits == 4 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + b * 64 + 32)))
                                    : _mm512_setzero_ps();
        for (int r = 0; r < mr; r++) {
            const block_out x = block_at(a, r0 + r, b);
            __m512i sh = _mm512_setzero_si512(), sl = _mm512_setzero_si512();
            for (int g = 0; g < 8; g++) {
                if (bits == 4) {
                    sh = _mm512_dpbusd_epi32(sh, wv[g], _mm512_set1_epi32(load_i32(x.hi + 4 * g)));
                    sl = _mm512_dpbusd_epi32(sl, wv[g], _mm512_set1_epi32(load_i32(x.lo + 4 * g)));
                } else {
                    sh = _mm512_dpbusd_epi32(sh, _mm512_set1_epi32(load_i32(x.hiu + 4 * g)), wv[g]);
                    sl = _mm512_dpbusd_epi32(sl, _mm512_set1_epi32(load_i32(x.lou + 4 * g)), wv[g]);
                }
            }
            const __m512i s = _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(sh, 7), sl), corr);
            const int64_t i = (r0 + r) * kb + b;
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(a->d[i])), acc[r]);
            if (bits == 4) acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(a->s[i]), acc[r]);
        }
    }
    const int64_t cols = w->n - n0;
    for (int r = 0; r < mr; r++) store16(out + (r0 + r) * ldo + n0, acc[r], w->bias, n0, cols, accumulate);
}

/* Rows [r0, r0 + mr) against one tile, SW_MR rows at a time (each row is computed the same
 * way whichever group it falls in). */
static void sw_tile_simd(const sw_qweight *w, const uint8_t *tile, const uint8_t *next, const sw_qact *a, int64_t r0,
                         int64_t mr, float *out, int64_t ldo, int64_t n0, int accumulate) {
    const int64_t end = r0 + mr;
#define SW_ROWS_CASE(n)                                                                 \
    case n:                                                                             \
        if (w->bits == 4) qtile_rows(w, tile, next, a, r, n, 4, out, ldo, n0, accumulate); \
        else qtile_rows(w, tile, next, a, r, n, 8, out, ldo, n0, accumulate);              \
        break;
    for (int64_t r = r0; r < end; r += SW_MR) {
        switch (end - r >= SW_MR ? SW_MR : end - r) {
            SW_ROWS_CASE(1) SW_ROWS_CASE(2) SW_ROWS_CASE(3) SW_ROWS_CASE(4)
            SW_ROWS_CASE(5) SW_ROWS_CASE(6) SW_ROWS_CASE(7) SW_ROWS_CASE(8)
        }
    }
#undef SW_ROWS_CASE
}
