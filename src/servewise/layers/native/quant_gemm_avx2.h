/* AVX2 tiles of quant_gemm.c (included there only when compiled for avx2).
 *
 * A 16-column tile is two halves of 8 columns, one ymm lane per column. Dot products go
 * through vpmaddubsw (u8 x s8 -> pairs summed in s16) and vpmaddwd against ones (-> s32).
 * Each activation plane (hi, lo) is one pass. Every intermediate is exact: for 4-bit codes,
 * 8 vpmaddubsw results summed in s16 stay below 8 * 2 * 15 * 127 = 30480 < 32767; 8-bit
 * weights use the sign trick (|w| x sign(x, w), pairs below 2 * 128 * 127 = 32512) and
 * widen to s32 after each k-group.
 */
#define SW_MR 4

static inline __attribute__((always_inline)) void store8(float *o, __m256 acc, const float *bias, int64_t col0,
                                                         int64_t cols, int accumulate) {
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(cols > 8 ? 8 : cols)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 v = acc;
    if (bias) v = _mm256_add_ps(v, _mm256_maskload_ps(bias + col0, mask));
    if (accumulate) v = _mm256_add_ps(_mm256_maskload_ps(o, mask), v);
    _mm256_maskstore_ps(o, mask, v);
}

/* sum(code * q) over one block for 8 columns, the 4-bit codes unpacked in wv: each plane's 8
 * vpmaddubsw summed in s16 (exact, see above), then widened once. */
static inline __attribute__((always_inline)) __m256i dot4(const __m256i wv[8], block_out x) {
    __m256i h16 = _mm256_setzero_si256(), l16 = _mm256_setzero_si256();
    for (int g = 0; g < 8; g++) {
        h16 = _mm256_add_epi16(h16, _mm256_maddubs_epi16(wv[g], _mm256_set1_epi32(load_i32(x.hi + 4 * g))));
        l16 = _mm256_add_epi16(l16, _mm256_maddubs_epi16(wv[g], _mm256_set1_epi32(load_i32(x.lo + 4 * g))));
    }
    const __m256i ones16 = _mm256_set1_epi16(1);
    return _mm256_add_epi32(_mm256_slli_epi32(_mm256_madd_epi16(h16, ones16), 7), _mm256_madd_epi16(l16, ones16));
}

/* The same for signed 8-bit weights (the k-groups at cb, 64 bytes apart): |w| x sign(x, w). */
static inline __attribute__((always_inline)) __m256i dot8(const uint8_t *cb, block_out x) {
    const __m256i ones16 = _mm256_set1_epi16(1);
    __m256i sh = _mm256_setzero_si256(), sl = _mm256_setzero_si256();
    for (int g = 0; g < 8; g++) {
        const __m256i wg = _mm256_loadu_si256((const __m256i *)(cb + 64 * g)), aw = _mm256_abs_epi8(wg);
        const __m256i xh = _mm256_set1_epi32(load_i32(x.hi + 4 * g)), xl = _mm256_set1_epi32(load_i32(x.lo + 4 * g));
        sh = _mm256_add_epi32(sh, _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xh, wg)), ones16));
        sl = _mm256_add_epi32(sl, _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xl, wg)), ones16));
    }
    return _mm256_add_epi32(_mm256_slli_epi32(sh, 7), sl);
}

/* Columns [8 * half0, 8 * (half0 + nh)) of a tile for rows [r0, r0 + mr). nh = 2 walks each
 * weight line once (few rows: streaming from DRAM), nh = 1 leaves registers for more rows. */
static inline __attribute__((always_inline)) void qcols(const sw_qweight *w, const uint8_t *tile, const uint8_t *next,
                                                        const sw_qact *a, int64_t r0, const int mr, const int bits,
                                                        float *out, int64_t ldo, int64_t n0, const int half0,
                                                        const int nh, int accumulate) {
    const int64_t kb = w->kb, code_bytes = bits == 4 ? 256 : 512, scale_bytes = bits == 4 ? 64 : 32;
    const uint8_t *scales = tile + kb * code_bytes;
    __m256 accs[2][SW_MR];
    for (int h = 0; h < nh; h++)
        for (int r = 0; r < mr; r++) accs[h][r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < kb; b++) for (int h = 0; h < nh; h++) {
        if (h == 0 && half0 == 0) sw_prefetch_block(w, next, b);
        const int half = half0 + h;
        __m256 *acc = accs[h];
        const uint8_t *cb = tile + b * code_bytes + 32 * half;
        __m256i wv[8];
        if (bits == 4) {
            for (int c = 0; c < 4; c++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(cb + 64 * c)), low = _mm256_set1_epi8(0x0F);
                wv[c] = _mm256_and_si256(v, low);
                wv[c + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
            }
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(scales + b * scale_bytes + 16 * half)));
        const __m256 mw = bits == 4 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(scales + b * 64 + 32 + 16 * half)))
                                    : _mm256_setzero_ps();
        for (int r = 0; r < mr; r++) {
            const block_out x = block_at(a, r0 + r, b);
            const __m256i s = bits == 4 ? dot4(wv, x) : dot8(cb, x);
            const int64_t i = (r0 + r) * kb + b;
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(a->d[i])), acc[r]);
            if (bits == 4) acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(a->s[i]), acc[r]);
        }
    }
    for (int h = 0; h < nh; h++) {
        const int64_t col0 = n0 + 8 * (half0 + h);
        for (int r = 0; r < mr; r++) store8(out + (r0 + r) * ldo + col0, accs[h][r], w->bias, col0, w->n - col0, accumulate);
    }
}

/* Rows [r0, r0 + mr) against one tile. Up to 2 rows: both halves per block (each weight line
 * read once while it streams in); more: one half at a time, SW_MR rows per pass. Each row
 * is computed the same way either way. */
static void sw_tile_simd(const sw_qweight *w, const uint8_t *tile, const uint8_t *next, const sw_qact *a, int64_t r0, int64_t mr,
                         float *out, int64_t ldo, int64_t n0, int accumulate) {
#define SW_COLS(rows, half0, nh)                                                               \
    if (w->bits == 4) qcols(w, tile, next, a, r, rows, 4, out, ldo, n0, half0, nh, accumulate); \
    else qcols(w, tile, next, a, r, rows, 8, out, ldo, n0, half0, nh, accumulate);
    const int64_t end = r0 + mr;
    int64_t r = r0;
    if (mr <= 2) {
        if (mr == 2) { SW_COLS(2, 0, 2) } else { SW_COLS(1, 0, 2) }
        return;
    }
    for (int half = 0; half < 2 && n0 + 8 * half < w->n; half++) {
        for (r = r0; r < end; r += SW_MR) {
            switch (end - r >= SW_MR ? SW_MR : end - r) {
            case 1: SW_COLS(1, half, 1) break;
            case 2: SW_COLS(2, half, 1) break;
            case 3: SW_COLS(3, half, 1) break;
            default: SW_COLS(4, half, 1) break;
            }
        }
    }
#undef SW_COLS
}
