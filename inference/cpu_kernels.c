/* int8-weight projections for few rows (decode, batched decode) on AVX-512 VNNI CPUs.

   y[n, o] = sum_g scales[g, o] * sum_k x[n, g*Kg + k] * w[g, o, k]   (bfloat16 x and y)

   The weight stays as released (int8, read once per call: decode is bound by reading it). Each
   row of x is quantised per scale group to int16 (scale = max|x| / 32767, an error far below
   bfloat16's own rounding), so the inner loop is VNNI's int16 dot product (vpdpwssd: 32 MACs an
   instruction, exact int32 sums; int8 weights widen to int16 in one instruction). The int32 sums
   cannot overflow for Kg <= 8192 (Kg/16 products of at most 32767 * 128 per lane).

   Built and loaded by inference/cpu_kernels.py. */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as PyTorch does */
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* x [N, K] bf16 -> xq [N, K] int16 and xs [N, G] (the dequantising factor of each row's group). */
static void quantise_rows(const uint16_t *x, int N, int K, int G, int16_t *xq, float *xs) {
    int kg = K / G;
    for (int n = 0; n < N; n++)
        for (int g = 0; g < G; g++) {
            const uint16_t *row = x + (size_t)n * K + (size_t)g * kg;
            float amax = 0.0f;
            for (int k = 0; k < kg; k++) amax = fmaxf(amax, fabsf(bf16_to_f32(row[k])));
            float step = amax / 32767.0f, inv = amax > 0.0f ? 32767.0f / amax : 0.0f;
            int16_t *q = xq + (size_t)n * K + (size_t)g * kg;
            for (int k = 0; k < kg; k++) q[k] = (int16_t)lrintf(bf16_to_f32(row[k]) * inv);
            xs[n * G + g] = step;
        }
}

/* Dot products of NR rows of xq with 4 weight rows over one group (kg weights each), added to
   out[j][i] (output o0 + j, row n0 + i) times the group's scales. */
static inline __attribute__((always_inline)) void tile(
    int NR, const int16_t *xq, int K, int kg, const int8_t *const w[4], const float ws[4],
    const float *xs, int G, float out[4][4]) {
    __m512i acc[4][4];
    for (int i = 0; i < NR; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_si512();
    int k = 0;
    for (; k + 32 <= kg; k += 32) {
        __m512i wv[4];
        for (int j = 0; j < 4; j++) {
            /* The next tile's rows (4 rows on): with more rows than one the loop is too busy for
               the hardware prefetcher alone to keep the memory busy. */
            _mm_prefetch((const char *)(w[j] + 4 * (size_t)kg + k), _MM_HINT_T0);
            wv[j] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w[j] + k)));
        }
        for (int i = 0; i < NR; i++) {
            __m512i xv = _mm512_loadu_si512((const void *)(xq + (size_t)i * K + k));
            for (int j = 0; j < 4; j++) acc[i][j] = _mm512_dpwssd_epi32(acc[i][j], xv, wv[j]);
        }
    }
    for (int i = 0; i < NR; i++)
        for (int j = 0; j < 4; j++) {
            int64_t sum = _mm512_reduce_add_epi32(acc[i][j]);
            for (int r = k; r < kg; r++) sum += (int32_t)xq[(size_t)i * K + r] * w[j][r];
            out[j][i] += ws[j] * xs[i * G] * (float)sum;
        }
}

/* x [N, K] bf16, w [G, O, K/G] int8, scales [G, O] bf16 -> y [N, O] bf16, on `threads` threads. */
void int8_linear_bf16(const uint16_t *x, int N, int K, const int8_t *w, const uint16_t *scales, int G, int O,
                      uint16_t *y, int threads) {
    int kg = K / G;
    int16_t *xq = aligned_alloc(64, ((size_t)N * K * 2 + 63) / 64 * 64);
    float *xs = malloc(sizeof(float) * N * G);
    quantise_rows(x, N, K, G, xq, xs);
    int tiles = (O + 3) / 4;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < tiles; t++) {
        int o0 = t * 4;
        for (int n0 = 0; n0 < N; n0 += 4) {
            int nr = N - n0 < 4 ? N - n0 : 4;
            float out[4][4] = {{0}};
            for (int g = 0; g < G; g++) {
                const int8_t *wr[4];
                float ws[4];
                for (int j = 0; j < 4; j++) {
                    int o = o0 + j < O ? o0 + j : O - 1; /* past the end: repeat the last row, dropped below */
                    wr[j] = w + ((size_t)g * O + o) * kg;
                    ws[j] = bf16_to_f32(scales[(size_t)g * O + o]);
                }
                const int16_t *xg = xq + (size_t)n0 * K + (size_t)g * kg;
                const float *xsg = xs + n0 * G + g;
                /* A constant NR lets the compiler keep every accumulator in a register. */
                if (nr == 4) tile(4, xg, K, kg, wr, ws, xsg, G, out);
                else if (nr == 3) tile(3, xg, K, kg, wr, ws, xsg, G, out);
                else if (nr == 2) tile(2, xg, K, kg, wr, ws, xsg, G, out);
                else tile(1, xg, K, kg, wr, ws, xsg, G, out);
            }
            for (int j = 0; j < 4 && o0 + j < O; j++)
                for (int i = 0; i < nr; i++) y[(size_t)(n0 + i) * O + o0 + j] = f32_to_bf16(out[j][i]);
        }
    }
    free(xq);
    free(xs);
}

/* int8 [n] -> bfloat16 [n], exactly: an int8 is exact in float32, and its top 16 bits are its
   bfloat16 (at most 8 significant bits). For the prefill's weight blocks; a few times faster than
   PyTorch's copy_. */
void int8_to_bf16(const int8_t *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(src + i))));
        __m256i h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(f), 16));
        _mm256_storeu_si256((__m256i *)(dst + i), h);
    }
    for (; i < n; i++) {
        float f = (float)src[i];
        uint32_t u;
        memcpy(&u, &f, 4);
        dst[i] = (uint16_t)(u >> 16);
    }
}
