/* The element-wise half of one LSTM time step, forward and backward, in one pass.

   arlm/fast/ does the matrix products with torch (oneDNN); what is left of a step is
   a dozen element-wise operations on (batch, hidden) tensors. As separate torch calls
   each one reads and writes memory and pays a dispatch, and torch's tanh is slow on
   CPU; that was most of a step at hidden size 256. Here they are one loop the compiler
   vectorizes. Same equations as LSTMCell.forward (tests check equality to 1e-5):

       f = σ(z_f)   i = σ(z_i)   c̃ = tanh(z_c)   o = σ(z_o)
       c = f ⊙ c_prev + i ⊙ c̃        h = o ⊙ tanh(c)

   Layout: z and gates are (batch, 4·hidden) in the order f, i, c̃, o; states are
   (batch, hidden); `keep` is one float per batch row (0 where a document starts, which
   zeroes the state the step reads), or NULL. Built by arlm/fast/build.py with the system C
   compiler; plain C99, no torch headers, so it compiles in a fraction of a second. */

#include <stdint.h>
#include <math.h>
#include <string.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* W floats at a time, written with GCC/Clang vector extensions rather than left to
   the auto-vectorizer (which gives up on these loops for some -march targets): the
   compiler maps them onto AVX/AVX-512, SSE or NEON, whatever the build targets.
   build.py compiles one library per instruction set (avx512, avx2, generic on x86-64;
   native, generic elsewhere) and loads the best the CPU runs; W follows the build. */
#if defined(__AVX512F__)
#define W 16  /* lanes: one AVX-512 register */
#elif (defined(__x86_64__) || defined(__i386__)) && !defined(__AVX__)
#define W 4   /* one SSE register (the generic x86-64 build): as two, 8 lanes ran 2-7x slower */
#else
#define W 8   /* one AVX register; two NEON ones */
#endif
typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
/* a - 0 rather than 0 + a: subtracting +0 is exact for every float (-0 included), so the
   compiler drops it and broadcasts straight from memory; adding 0 turns -0 into +0, a real
   scalar add before every broadcast in the products' inner loops. */
static inline vf splat(float a) { return a - (vf){0}; }
static inline vf select_(vi mask, vf a, vf b) {  /* mask ? a : b, lane by lane */
    vi ai, bi;
    memcpy(&ai, &a, sizeof ai); memcpy(&bi, &b, sizeof bi);
    vi r = (mask & ai) | (~mask & bi);
    vf out; memcpy(&out, &r, sizeof out);
    return out;
}

/* Batch rows are independent: split them over `threads` (torch's own thread count; the
   OpenMP runtime is the one torch loaded, so no second thread pool). The product that
   precedes a step ran on all threads, so a single-threaded step would also read half
   its input from the other core's cache. Small steps stay on one thread. */
#define PARALLEL_ROWS _Pragma("omp parallel for num_threads(threads) if(threads > 1 && B > 1 && B * H >= 4096) schedule(static)")

/* e^x to about 2 ulp (Cephes' polynomial) for x ≤ 88.37 — e.g. a logit minus its maximum,
   which is never positive. NaN stays NaN (the clamp compares, and a NaN compares false),
   so a diverging run is still caught by the NaN check on the loss. */
static inline vf exp_upto_(vf x) {
    x = select_(x < -87.3365447504019f, splat(-87.3365447504019f), x);
    /* n = round(x / ln 2): adding and subtracting 1.5 * 2^23 rounds to an integer. */
    vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vi bits = (__builtin_convertvector(n, vi) + 127) << 23;  /* 2^n */
    vf scale; memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* e^x for any x (clamped where float32's e^x overflows). */
static inline vf exp_(vf x) { return exp_upto_(select_(x > 88.3762626647949f, splat(88.3762626647949f), x)); }

static inline vf sigmoid_(vf x) { return 1.0f / (1.0f + exp_(-x)); }

/* tanh(x) = 1 - 2 / (e^{2x} + 1): exact limits ±1, absolute error ~1e-7 near 0. */
static inline vf tanh_(vf x) { return 1.0f - 2.0f / (exp_(2.0f * x) + 1.0f); }

/* One forward step on W lanes. In: pre-activations zf, zi, zc, zo and c_prev (already
   reset by keep). Out: the gates, c, tanh(c), h. */
static inline void forward_lanes(vf zf, vf zi, vf zc, vf zo, vf c_prev, vf out[7]) {
    vf f = sigmoid_(zf), i = sigmoid_(zi), c_tilde = tanh_(zc), o = sigmoid_(zo);
    vf c = f * c_prev + i * c_tilde;  /* c_t = f ⊙ c_{t-1} + i ⊙ c̃_t */
    vf tanh_c = tanh_(c);
    out[0] = f, out[1] = i, out[2] = c_tilde, out[3] = o, out[4] = c, out[5] = tanh_c;
    out[6] = o * tanh_c;              /* h_t = o ⊙ tanh(c_t) */
}

/* Forward. Reads the pre-activations W·[h_{t-1}, x_t] + b in three parts, zh = W_h·h_{t-1},
   zx = W_x·x_t (computed for all steps before the loop) and b, and c_prev; writes the
   gates, c, tanh(c) and h. If keep_next is given, also h_next = h ⊙ keep_next: the
   h the next step's matrix product reads, already reset where a document starts. */
static void lstm_forward(int64_t threads, int64_t B, int64_t H, const float *zh, const float *zx,
                         const float *bias, const float *c_prev, const float *keep,
                         float *gates, float *c, float *tanh_c, float *h,
                         const float *keep_next, float *h_next) {
    PARALLEL_ROWS
    for (int64_t b = 0; b < B; b++) {
        const float *hb_ = zh + b * 4 * H, *xb = zx + b * 4 * H, *cp = c_prev + b * H;
        float *g = gates + b * 4 * H, *cb = c + b * H, *tb = tanh_c + b * H, *hb = h + b * H;
        float *hn = keep_next ? h_next + b * H : 0;
        const float k = keep ? keep[b] : 1.0f, kn = keep_next ? keep_next[b] : 1.0f;
        for (int64_t j = 0; j < H; j += W) {
            vf out[7];
            if (j + W <= H) {
                forward_lanes(load(hb_ + j) + load(xb + j) + load(bias + j),
                              load(hb_ + H + j) + load(xb + H + j) + load(bias + H + j),
                              load(hb_ + 2 * H + j) + load(xb + 2 * H + j) + load(bias + 2 * H + j),
                              load(hb_ + 3 * H + j) + load(xb + 3 * H + j) + load(bias + 3 * H + j),
                              k * load(cp + j), out);
                for (int q = 0; q < 4; q++) store(g + q * H + j, out[q]);
                store(cb + j, out[4]), store(tb + j, out[5]), store(hb + j, out[6]);
                if (hn) store(hn + j, out[6] * kn);
            } else {  /* the last H mod W units: through a padded copy, same arithmetic */
                int64_t m = H - j;
                float in[5][W] = {{0}}, o_[7][W];
                for (int64_t u = 0; u < m; u++) {
                    for (int q = 0; q < 4; q++) in[q][u] = hb_[q * H + j + u] + xb[q * H + j + u] + bias[q * H + j + u];
                    in[4][u] = cp[j + u];
                }
                forward_lanes(load(in[0]), load(in[1]), load(in[2]), load(in[3]), k * load(in[4]), out);
                for (int q = 0; q < 7; q++) store(o_[q], out[q]);
                for (int64_t u = 0; u < m; u++) {
                    for (int q = 0; q < 4; q++) g[q * H + j + u] = o_[q][u];
                    cb[j + u] = o_[4][u], tb[j + u] = o_[5][u], hb[j + u] = o_[6][u];
                    if (hn) hn[j + u] = o_[6][u] * kn;
                }
            }
        }
    }
}

/* Exported names call static implementations, and the C calls them directly: several
   builds of this file (one per instruction set, build.py) may be loaded in one process,
   and a call between exported functions could otherwise bind to another build's copy. */
void arlm_lstm_forward(int64_t threads, int64_t B, int64_t H, const float *zh, const float *zx,
                       const float *bias, const float *c_prev, const float *keep,
                       float *gates, float *c, float *tanh_c, float *h,
                       const float *keep_next, float *h_next) {
    lstm_forward(threads, B, H, zh, zx, bias, c_prev, keep, gates, c, tanh_c, h, keep_next, h_next);
}

/* One backward step on W lanes: from the gates, c_{t-1} (reset by keep), tanh(c_t) and
   the incoming dh and dc, the gradients on the four pre-activations and on c_{t-1}. */
static inline void backward_lanes(vf f, vf i, vf c_tilde, vf o, vf c_prev, vf tanh_c, vf dh, vf dc, vf out[5]) {
    dc = dc + dh * o * (1.0f - tanh_c * tanh_c);       /* ∂h/∂c = o (1 - tanh²c) */
    out[0] = dc * c_prev * f * (1.0f - f);              /* via f: σ' = f (1 - f) */
    out[1] = dc * c_tilde * i * (1.0f - i);             /* via i */
    out[2] = dc * i * (1.0f - c_tilde * c_tilde);       /* via c̃: tanh' = 1 - c̃² */
    out[3] = dh * tanh_c * o * (1.0f - o);              /* via o, which acts through h */
    out[4] = dc * f;                                    /* on to c_{t-1} */
}

/* Backward through one step. dh_rec and dc (in/out) are the gradients arriving from
   step t+1, cut by keep_after (keep[t+1]) where that step started a new document;
   d_h (may be NULL) is the gradient on h_t from above. Writes dG, the gradient on the
   pre-activations z, and leaves in dc the part of ∂L/∂c_{t-1} that flows through f. */
void arlm_lstm_backward(int64_t threads, int64_t B, int64_t H, const float *gates, const float *c_prev, const float *keep,
                        const float *tanh_c, const float *dh_rec, const float *keep_after,
                        const float *d_h, float *dc, float *dG) {
    PARALLEL_ROWS
    for (int64_t b = 0; b < B; b++) {
        const float *g = gates + b * 4 * H, *cp = c_prev + b * H, *tc = tanh_c + b * H, *dr = dh_rec + b * H;
        const float *dhb = d_h ? d_h + b * H : 0;
        float *dGb = dG + b * 4 * H, *dcb = dc + b * H;
        const float k = keep ? keep[b] : 1.0f, ka = keep_after ? keep_after[b] : 1.0f;
        for (int64_t j = 0; j < H; j += W) {
            vf out[5];
            if (j + W <= H) {
                vf dh = ka * load(dr + j);
                if (dhb) dh += load(dhb + j);
                backward_lanes(load(g + j), load(g + H + j), load(g + 2 * H + j), load(g + 3 * H + j),
                               k * load(cp + j), load(tc + j), dh, ka * load(dcb + j), out);
                for (int q = 0; q < 4; q++) store(dGb + q * H + j, out[q]);
                store(dcb + j, out[4]);
            } else {  /* the last H mod W units: through a padded copy, same arithmetic */
                int64_t m = H - j;
                float in[9][W] = {{0}}, o_[5][W];
                for (int64_t u = 0; u < m; u++) {
                    for (int q = 0; q < 4; q++) in[q][u] = g[q * H + j + u];
                    in[4][u] = cp[j + u], in[5][u] = tc[j + u], in[6][u] = dr[j + u], in[7][u] = dcb[j + u];
                    in[8][u] = dhb ? dhb[j + u] : 0.0f;
                }
                backward_lanes(load(in[0]), load(in[1]), load(in[2]), load(in[3]), k * load(in[4]), load(in[5]),
                               ka * load(in[6]) + load(in[8]), ka * load(in[7]), out);
                for (int q = 0; q < 5; q++) store(o_[q], out[q]);
                for (int64_t u = 0; u < m; u++) {
                    for (int q = 0; q < 4; q++) dGb[q * H + j + u] = o_[q][u];
                    dcb[j + u] = o_[4][u];
                }
            }
        }
    }
}

/* --- Inference products from smaller weights (and float32 ones) ------------------------

   y (M × N) = x (M × K) · W[:, :K]ᵀ, with W stored as IEEE float16, or as int8 with one
   float32 scale per row (w ≈ scale[n] · q[n, k], q in -127..127), and all arithmetic in
   float32. For decoding: one token at a time, a step reads every weight once and does
   little with it, so its speed is the speed of reading memory. float16 halves the bytes,
   int8 quarters them, and the default model's ~20 MB of float32 weights shrink to a size
   that stays in the CPU's cache. (Measured on the default model: validation perplexity
   changes by less than 0.05% with int8, not at all with float16.) */


#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

static inline float hsum(vf v) {  /* the sum of the lanes */
#if defined(__AVX512F__)
    return _mm512_reduce_add_ps((__m512)v);
#else  /* as a tree: log2(W) dependent adds */
    float t[W];
    memcpy(t, &v, sizeof t);
    for (int w = W / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) t[l] += t[l + w];
    return t[0];
#endif
}

static inline float i8_to_float(int8_t v) { return (float)v; }
static inline vf load_i8(const int8_t *p) {  /* W int8 values → float32 lanes */
#if defined(__AVX512F__)
    return (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#elif defined(__AVX2__) && W == 8
    return (vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
#else
    typedef int8_t vi8 __attribute__((vector_size(W)));
    vi8 v; memcpy(&v, p, sizeof v);
    return __builtin_convertvector(__builtin_convertvector(v, vi), vf);
#endif
}

/* float16 weights → float32 lanes, in every build: with F16C (the AVX2 and AVX-512 builds)
   by vcvtph2ps; on other CPUs by the compiler's half type where it has one (ARM converts in
   hardware), else (the generic x86-64 build) from the bits by integer arithmetic. */
#if defined(__F16C__)
static inline vf load_f16(const uint16_t *p) {
#if defined(__AVX512F__)
    return (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#else
    return (vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#endif
}
static inline float f16_to_float(uint16_t h) { return _cvtsh_ss(h); }
#elif defined(__FLT16_MAX__) && !defined(__x86_64__) && !defined(__i386__)  /* e.g. ARM */
static inline float f16_to_float(uint16_t h) { _Float16 f; memcpy(&f, &h, 2); return (float)f; }
static inline vf load_f16(const uint16_t *p) {
    vf v;
    for (int l = 0; l < W; l++) v[l] = f16_to_float(p[l]);
    return v;
}
#else
/* Exact for every half (zeros, subnormals, infinities, NaN): the 5-bit exponent is rebased
   to 8 bits; a subnormal becomes 2^-14 · (1 + m/1024) and one subtraction of 2^-14 leaves
   m · 2^-24; an infinity or NaN gets the all-ones exponent. (After F. Giesen.) */
static inline vf half_bits_to_float(vi h) {
    const int32_t exp_mask = 0x7c00 << 13;        /* the exponent, once shifted into place */
    vi o = (h & 0x7fff) << 13, e = o & exp_mask;
    const vi inf_nan = e == exp_mask, small = e == 0;  /* lanes of -1 (true) or 0 */
    o += (127 - 15) << 23;
    o += inf_nan & ((128 - 16) << 23);
    o += small & (1 << 23);
    vf f; memcpy(&f, &o, sizeof f);
    f = select_(small, f - 6.103515625e-05f, f);  /* 2^-14 */
    vi r; memcpy(&r, &f, sizeof r);
    r |= (h & 0x8000) << 16;                      /* the sign */
    memcpy(&f, &r, sizeof f);
    return f;
}
static inline vf load_f16(const uint16_t *p) {
    typedef uint16_t vu16 __attribute__((vector_size(2 * W)));
    vu16 v; memcpy(&v, p, sizeof v);
    return half_bits_to_float(__builtin_convertvector(v, vi));
}
static inline float f16_to_float(uint16_t h) { return half_bits_to_float((vi){0} + (int32_t)h)[0]; }
#endif
#define HAVE_HALF 1

/* nr weight rows against mb input rows (both constants once inlined): nr × mb independent
   accumulators, so the loop is not held up by the latency of one chain of FMAs. */
#define DEFINE_PRODUCTS(SUFFIX, T, LOAD, SCALAR)                                                  \
static inline __attribute__((always_inline)) void rows_dot_##SUFFIX(                              \
        const int nr, const int mb, const T *w, const T *next, int64_t ld, int64_t K,             \
        const float *x, float *out) {                                                             \
    vf acc[4][4] = {{{0}}};                                                                       \
    const int64_t Kv = K - K % W;                                                                 \
    for (int64_t k = 0; k < Kv; k += W) {                                                         \
        vf xs[4];                                                                                 \
        for (int q = 0; q < mb; q++) xs[q] = load(x + q * K + k);                                 \
        for (int r = 0; r < nr; r++) {                                                            \
            /* This line of the next four rows, once per line: a decoding step reads W from       \
               memory once, and four interleaved rows are more streams than the hardware          \
               prefetcher runs ahead of by itself. Only a hint: the numbers are the same. */      \
            if ((k * (int64_t)sizeof(T)) % 64 == 0) __builtin_prefetch(next + r * ld + k);        \
            vf wf = LOAD(w + r * ld + k);                                                         \
            for (int q = 0; q < mb; q++) acc[q][r] += wf * xs[q];                                 \
        }                                                                                         \
    }                                                                                             \
    for (int q = 0; q < mb; q++)                                                                  \
        for (int r = 0; r < nr; r++) {                                                            \
            float s = hsum(acc[q][r]);                                                            \
            for (int64_t k = Kv; k < K; k++) s += SCALAR(w[r * ld + k]) * x[q * K + k];           \
            out[q * 4 + r] = s;                                                                   \
        }                                                                                         \
}                                                                                                 \
                                                                                                  \
/* scale (N floats) may be NULL: no per-row scale. */                                             \
static void matmul_##SUFFIX(int64_t threads, int64_t M, int64_t N, int64_t K, const T *Wt, int64_t ld, \
                             const float *scale, const float *x, float *y) {                      \
    for (int64_t m0 = 0; m0 < M; m0 += 4) {  /* up to four input rows share each weight read */  \
        const int64_t mb = M - m0 < 4 ? M - m0 : 4;                                               \
        const float *xm = x + m0 * K;                                                             \
        _Pragma("omp parallel for num_threads(threads) if(threads > 1 && N * K >= 65536) schedule(static)") \
        for (int64_t n = 0; n < N; n += 4) {                                                      \
            float out[16];                                                                        \
            const int64_t nr = N - n < 4 ? N - n : 4;                                             \
            const T *w = Wt + n * ld;                                                             \
            const T *next = n + 8 <= N ? w + 4 * ld : w;  /* the rows after these, to prefetch */ \
            if (nr == 4) {                                                                        \
                switch (mb) {                                                                     \
                    case 1: rows_dot_##SUFFIX(4, 1, w, next, ld, K, xm, out); break;              \
                    case 2: rows_dot_##SUFFIX(4, 2, w, next, ld, K, xm, out); break;              \
                    case 3: rows_dot_##SUFFIX(4, 3, w, next, ld, K, xm, out); break;              \
                    default: rows_dot_##SUFFIX(4, 4, w, next, ld, K, xm, out); break;             \
                }                                                                                 \
            } else {                                                                              \
                for (int64_t r = 0; r < nr; r++) {                                                \
                    float o1[16];                                                                 \
                    const T *wr = w + r * ld;  /* the last rows, one by one: none after */        \
                    switch (mb) {                                                                 \
                        case 1: rows_dot_##SUFFIX(1, 1, wr, wr, ld, K, xm, o1); break;            \
                        case 2: rows_dot_##SUFFIX(1, 2, wr, wr, ld, K, xm, o1); break;            \
                        case 3: rows_dot_##SUFFIX(1, 3, wr, wr, ld, K, xm, o1); break;            \
                        default: rows_dot_##SUFFIX(1, 4, wr, wr, ld, K, xm, o1); break;           \
                    }                                                                             \
                    for (int64_t q = 0; q < mb; q++) out[q * 4 + r] = o1[q * 4];                  \
                }                                                                                 \
            }                                                                                     \
            for (int64_t q = 0; q < mb; q++)                                                      \
                for (int64_t r = 0; r < nr; r++)                                                  \
                    y[(m0 + q) * N + n + r] = scale ? scale[n + r] * out[q * 4 + r] : out[q * 4 + r]; \
        }                                                                                         \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
void arlm_matmul_##SUFFIX(int64_t threads, int64_t M, int64_t N, int64_t K, const T *Wt, int64_t ld, \
                          const float *scale, const float *x, float *y) {                         \
    matmul_##SUFFIX(threads, M, N, K, Wt, ld, scale, x, y);                                       \
}                                                                                                 \
                                                                                                  \
/* The same product from a transposed copy, WT (K × N), scale per column of WT:                  \
   y_m = (Σ_k x[m,k] · WT[k,:]) ⊙ scale, vectorized along N. For the few-column matrices of the \
   adaptive softmax's tail (K of 16 or 64, N in the thousands), where a dot product per row      \
   would be mostly its final sum. */                                                               \
static void matmul_t_##SUFFIX(int64_t M, int64_t N, int64_t K, const T *WT, const float *scale,    \
                             const float *x, float *y) {                                          \
    const int64_t Nv = N - N % W;                                                                 \
    for (int64_t m = 0; m < M; m++) {                                                             \
        float *ym = y + m * N;                                                                    \
        const float *xm = x + m * K;                                                              \
        for (int64_t n = 0; n < Nv; n += W) {                                                     \
            vf acc = splat(0.0f);                                                                 \
            for (int64_t k = 0; k < K; k++) acc += xm[k] * LOAD(WT + k * N + n);                  \
            store(ym + n, scale ? acc * load(scale + n) : acc);                                   \
        }                                                                                         \
        for (int64_t n = Nv; n < N; n++) {                                                        \
            float s = 0.0f;                                                                       \
            for (int64_t k = 0; k < K; k++) s += xm[k] * SCALAR(WT[k * N + n]);                   \
            ym[n] = scale ? s * scale[n] : s;                                                     \
        }                                                                                         \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
void arlm_matmul_##SUFFIX##_t(int64_t M, int64_t N, int64_t K, const T *WT, const float *scale,   \
                              const float *x, float *y) {                                         \
    matmul_t_##SUFFIX(M, N, K, WT, scale, x, y);                                                  \
}

/* A whole window of one layer in inference, from the low-precision weight: per step the
   product with h_{t-1} (the first H columns of W) and the element-wise step, with no
   trip back to Python in between. gx (T, B, 4H) holds W_x·x_t for every step; zh (B, 4H)
   and h_in (B, H) are scratch. keep (T, B) may be NULL. */
#define DEFINE_SEQUENCE(SUFFIX, T_)                                                               \
void arlm_lstm_sequence_##SUFFIX(int64_t threads, int64_t T, int64_t B, int64_t H, const T_ *Wq,   \
        int64_t ld, const float *scale, const float *gx, const float *bias, const float *h0,      \
        const float *c0, const float *keep, float *gates, float *cs, float *tanh_cs, float *hs,   \
        float *zh, float *h_in) {                                                                 \
    for (int64_t t = 0; t < T; t++) {                                                             \
        const float *h_prev = t == 0 ? h0 : hs + (t - 1) * B * H;                                 \
        const float *c_prev = t == 0 ? c0 : cs + (t - 1) * B * H;                                 \
        const float *k = keep ? keep + t * B : 0;                                                 \
        for (int64_t b = 0; b < B; b++)                                                           \
            for (int64_t j = 0; j < H; j++) h_in[b * H + j] = k ? h_prev[b * H + j] * k[b] : h_prev[b * H + j]; \
        matmul_##SUFFIX(threads, B, 4 * H, H, Wq, ld, scale, h_in, zh);                            \
        lstm_forward(threads, B, H, zh, gx + t * B * 4 * H, bias, c_prev, k, gates + t * B * 4 * H,      \
                          cs + t * B * H, tanh_cs + t * B * H, hs + t * B * H, 0, 0);             \
    }                                                                                             \
}

/* float32 weights through the same loops: for a decoding step, where the product is one
   pass over the weight and torch's per-call cost would be most of it. */
static inline vf load_f32(const float *p) { return load(p); }
static inline float f32_to_float(float v) { return v; }
DEFINE_PRODUCTS(f32, float, load_f32, f32_to_float)
DEFINE_SEQUENCE(f32, float)
DEFINE_PRODUCTS(i8, int8_t, load_i8, i8_to_float)
DEFINE_SEQUENCE(i8, int8_t)
#ifdef HAVE_HALF
DEFINE_PRODUCTS(f16, uint16_t, load_f16, f16_to_float)
DEFINE_SEQUENCE(f16, uint16_t)
#endif

/* --- One decoding step of the whole model, in one call --------------------------------------

   Generation, beam search and a typing session read one token per sequence at a time, and
   such a step is one pass over every weight. Made of torch calls and the C calls above (two
   dozen: each layer's two products and gate pass, the projection, the softmax head, each
   tail cluster's two products and log-softmax, and the buffers between them), their
   dispatch and allocations cost a third of the step for the default model in float32.
   Here the same loops run back to back: the cells' products and gate passes are the very
   calls arlm_lstm_sequence makes, so the new state is the same to the bit; only the
   log-softmax is this file's own (exp_ above, where torch has its own vectorized exp). */

typedef struct {
    const void *w;        /* the weight as stored: (n, ld) rows, or (k, n) if transposed */
    const float *scale;   /* int8: one scale per output; else NULL */
    const float *bias;    /* n floats, or NULL */
    int64_t n, k, ld, transposed;
} arlm_linear;

typedef struct {
    int64_t layers, hidden, emb;
    const float *embedding;         /* (vocabulary, emb) */
    const arlm_linear *cells;       /* per layer: the fused W (4H, H + I), whose bias is b */
    const arlm_linear *projection;  /* hidden → emb before the softmax, or NULL */
    const arlm_linear *head;        /* the whole output layer, or the adaptive softmax's head */
    int64_t shortlist, clusters;    /* adaptive: the head's word rows and the tail clusters (0: none) */
    const int64_t *cutoffs;         /* cluster k holds ids cutoffs[k] .. cutoffs[k + 1] - 1 */
    const arlm_linear *down, *up;   /* per cluster: emb → its width, its width → its words */
    int64_t eos;                    /* a sequence reading this id starts afresh (state zeroed); -1: never */
} arlm_decoder;

/* z ← log softmax(z), n values: (z - max) - log Σ e^(z - max), as torch's log_softmax. */
static void log_softmax_(int64_t n, float *z) {
    float m = -INFINITY;
    for (int64_t j = 0; j < n; j++) m = z[j] > m ? z[j] : m;
    vf acc = splat(0.0f);
    const int64_t nv = n - n % W;
    for (int64_t j = 0; j < nv; j += W) acc += exp_(load(z + j) - m);
    float tail[W] = {0};
    for (int64_t j = nv; j < n; j++) tail[j - nv] = z[j] - m;
    vf e = exp_(load(tail));
    for (int64_t j = n - nv; j < W; j++) e[j] = 0.0f;
    const float log_sum = logf(hsum(acc + e));
    for (int64_t j = 0; j < n; j++) z[j] = (z[j] - m) - log_sum;
}

#define DEFINE_DECODE(SUFFIX, T_)                                                                 \
/* y (B, n) = x (B, k) · Wᵀ (+ bias), from the columns [column, column + k) of a row-major W. */  \
static void linear_##SUFFIX(int64_t threads, const arlm_linear *L, int64_t B, int64_t column,     \
                            int64_t k, const float *x, float *y) {                                \
    if (L->transposed)                                                                            \
        matmul_t_##SUFFIX(B, L->n, L->k, (const T_ *)L->w, L->scale, x, y);                       \
    else                                                                                          \
        matmul_##SUFFIX(threads, B, L->n, k, (const T_ *)L->w + column, L->ld, L->scale, x, y);   \
    if (L->bias)                                                                                  \
        for (int64_t b = 0; b < B; b++)                                                           \
            for (int64_t j = 0; j < L->n; j++) y[b * L->n + j] += L->bias[j];                     \
}                                                                                                 \
                                                                                                  \
/* B sequences (at most a few: their rows share each weight read) read one token each: ids (B),  \
   the state h0, c0 (layers, B, H) → h, c (layers, B, H) and out (B, vocabulary), the            \
   log-probabilities of the next token. Returns 0, or -1 if scratch could not be allocated. */   \
int arlm_decode_##SUFFIX(int64_t threads, const arlm_decoder *m, int64_t B, const int64_t *ids,   \
                         const float *h0, const float *c0, float *h, float *c, float *out) {      \
    const int64_t H = m->hidden, E = m->emb, X = E > H ? E : H, n_head = m->head->n;              \
    int64_t width = 0, words = 0;  /* the widest tail cluster and its most words */               \
    for (int64_t k = 0; k < m->clusters; k++) {                                                   \
        width = m->down[k].n > width ? m->down[k].n : width;                                      \
        words = m->up[k].n > words ? m->up[k].n : words;                                          \
    }                                                                                             \
    const int64_t size = B * (X + H + 3 * 4 * H + H + E + n_head + width + words) + B;            \
    float *scratch = malloc(size * sizeof(float));                                                \
    if (!scratch) return -1;                                                                      \
    float *x = scratch, *h_in = x + B * X, *zh = h_in + B * H, *zx = zh + B * 4 * H;              \
    float *gates = zx + B * 4 * H, *tanh_c = gates + B * 4 * H, *y = tanh_c + B * H;              \
    float *head = y + B * E, *mid = head + B * n_head, *logits = mid + B * width;                 \
    float *keep = logits + B * words;                                                             \
    for (int64_t b = 0; b < B; b++) {                                                             \
        memcpy(x + b * E, m->embedding + ids[b] * E, E * sizeof(float));                          \
        keep[b] = ids[b] == m->eos ? 0.0f : 1.0f;                                                 \
    }                                                                                             \
    const float *k_ = m->eos >= 0 ? keep : 0;                                                     \
    int64_t I = E;                                                                                \
    for (int64_t l = 0; l < m->layers; l++) {                                                     \
        const arlm_linear *cell = m->cells + l;                                                   \
        const float *hp = h0 + l * B * H, *cp = c0 + l * B * H;                                   \
        float *hl = h + l * B * H, *cl = c + l * B * H;                                           \
        /* W_x·x_t, then W_h·(h_{t-1} ⊙ keep) and the gates: arlm_lstm_sequence's T = 1 */        \
        matmul_##SUFFIX(threads, B, 4 * H, I, (const T_ *)cell->w + H, cell->ld, cell->scale, x, zx); \
        for (int64_t b = 0; b < B; b++)                                                           \
            for (int64_t j = 0; j < H; j++) h_in[b * H + j] = k_ ? hp[b * H + j] * k_[b] : hp[b * H + j]; \
        matmul_##SUFFIX(threads, B, 4 * H, H, (const T_ *)cell->w, cell->ld, cell->scale, h_in, zh); \
        lstm_forward(threads, B, H, zh, zx, cell->bias, cp, k_, gates, cl, tanh_c, hl, 0, 0);     \
        memcpy(x, hl, B * H * sizeof(float));                                                     \
        I = H;                                                                                    \
    }                                                                                             \
    const float *features = x;                                                                    \
    if (m->projection) {                                                                          \
        linear_##SUFFIX(threads, m->projection, B, 0, H, x, y);                                   \
        features = y;                                                                             \
    }                                                                                             \
    const int64_t V = m->clusters ? m->cutoffs[m->clusters] : n_head;                             \
    linear_##SUFFIX(threads, m->head, B, 0, m->head->k, features, head);                          \
    for (int64_t b = 0; b < B; b++) {                                                             \
        float *hb = head + b * n_head, *ob = out + b * V;                                         \
        log_softmax_(n_head, hb);                                                                 \
        memcpy(ob, hb, (m->clusters ? m->shortlist : n_head) * sizeof(float));                    \
    }                                                                                             \
    for (int64_t k = 0; k < m->clusters; k++) {  /* log P(cluster k) + log P(word | cluster k) */ \
        const arlm_linear *down = m->down + k, *up = m->up + k;                                   \
        linear_##SUFFIX(threads, down, B, 0, down->k, features, mid);                             \
        linear_##SUFFIX(threads, up, B, 0, up->k, mid, logits);                                   \
        for (int64_t b = 0; b < B; b++) {                                                         \
            float *lb = logits + b * up->n, *ob = out + b * V + m->cutoffs[k];                    \
            const float class_lp = head[b * n_head + m->shortlist + k];                           \
            log_softmax_(up->n, lb);                                                              \
            for (int64_t j = 0; j < up->n; j++) ob[j] = lb[j] + class_lp;                         \
        }                                                                                         \
    }                                                                                             \
    free(scratch);                                                                                \
    return 0;                                                                                     \
}

DEFINE_DECODE(f32, float)
DEFINE_DECODE(i8, int8_t)
#ifdef HAVE_HALF
DEFINE_DECODE(f16, uint16_t)
#endif

/* --- A whole window for training, in one call ---------------------------------------------

   The per-step product with h_{t-1} done here too, so that a window is one call instead of
   T trips through Python and a matmul library: each thread owns a slice of the hidden units
   (chunks of W units), computes those units' four gates (its columns of the product), their
   element-wise step, and their part of the next step's input, then waits once for the
   others. A step's product and gate math stay in the core that owns the units. The weight
   is repacked per window into panels (chunk, gate, k, W lanes) that the micro-kernel reads
   in order. Needs H to be a multiple of W; otherwise the backend keeps the step-by-step loop (c_step.py). */

/* z rows r < mb (a constant once inlined) for two panels of W columns:
   z0[r] = Σ_k a[r, k] · p0[k], z1 likewise. */
static inline __attribute__((always_inline)) void panel_product(
        const int mb, int64_t K, const float *a, int64_t lda, const float *p0, const float *p1,
        float *z0, float *z1, int64_t ldz) {
    vf acc0[8], acc1[8];
    for (int r = 0; r < mb; r++) acc0[r] = splat(0.0f), acc1[r] = splat(0.0f);
    for (int64_t k = 0; k < K; k++) {
        const vf w0 = load(p0 + k * W), w1 = load(p1 + k * W);
        for (int r = 0; r < mb; r++) {
            const vf ar = splat(a[r * lda + k]);
            acc0[r] += ar * w0;
            acc1[r] += ar * w1;
        }
    }
    for (int r = 0; r < mb; r++) store(z0 + r * ldz, acc0[r]), store(z1 + r * ldz, acc1[r]);
}

/* Rows per block: the block's 2·MR accumulators, two weight vectors and a broadcast must fit
   the register file, or the compiler spills accumulators to the stack inside the inner loop.
   AVX-512 has 32 registers (8 rows: 19 used); AVX2 and SSE have 16, where 8 rows spilled and
   6 fit (15); NEON's 32 hold 6 rows of its two-register vectors. */
#if W == 16
#define MR 8
#else
#define MR 6
#endif

/* All B rows of a against two panels, in blocks of at most MR rows of near-equal size (32 rows
   on AVX2: 6, 6, 5, 5, 5, 5 rather than five 6s and a thin, slow 2). */
static void panels_product(int64_t B, int64_t K, const float *a, int64_t lda, const float *p0, const float *p1,
                           float *z0, float *z1, int64_t ldz) {
    const int64_t nb = (B + MR - 1) / MR;
    for (int64_t blk = 0, m = 0; blk < nb; blk++) {
        const int64_t mb = (B - m) / (nb - blk) + ((B - m) % (nb - blk) != 0);  /* ceil(left / blocks left) */
        const float *am = a + m * lda;
        float *y0 = z0 + m * ldz, *y1 = z1 + m * ldz;
        switch (mb) {
            case 1: panel_product(1, K, am, lda, p0, p1, y0, y1, ldz); break;
            case 2: panel_product(2, K, am, lda, p0, p1, y0, y1, ldz); break;
            case 3: panel_product(3, K, am, lda, p0, p1, y0, y1, ldz); break;
            case 4: panel_product(4, K, am, lda, p0, p1, y0, y1, ldz); break;
            case 5: panel_product(5, K, am, lda, p0, p1, y0, y1, ldz); break;
#if MR == 8
            case 6: panel_product(6, K, am, lda, p0, p1, y0, y1, ldz); break;
            case 7: panel_product(7, K, am, lda, p0, p1, y0, y1, ldz); break;
            default: panel_product(8, K, am, lda, p0, p1, y0, y1, ldz); break;
#else
            default: panel_product(6, K, am, lda, p0, p1, y0, y1, ldz); break;
#endif
        }
        m += mb;
    }
}

static inline void thread_chunks(int64_t nchunks, int *c0, int *c1) {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
#else
    const int t = 0, n = 1;
#endif
    *c0 = (int)(nchunks * t / n), *c1 = (int)(nchunks * (t + 1) / n);
}

/* Forward over a window. Wf: the fused weight (4H × ld), its first H columns multiply h.
   gx (T, B, 4H): W_x·x_t for every step; keep (T, B) or NULL. Scratch: Wp (4H·H floats),
   h_in (2·B·H), z (B·4H). Writes gates (T, B, 4H), cs, tanh_cs, hs (T, B, H); gates may be gx
   itself (each gate is stored where its part of gx was, after that was read). mask (4H, H) or
   NULL: DropConnect's scaled mask, the window multiplying by W_h ⊙ mask (applied while packing:
   the same products as from a masked copy, without making one). */
void arlm_lstm_window_forward(int64_t threads, int64_t T, int64_t B, int64_t H, const float *Wf, int64_t ld,
                              const float *gx, const float *bias, const float *h0, const float *c0,
                              const float *keep, float *gates, float *cs, float *tanh_cs, float *hs,
                              float *Wp, float *h_in, float *z, const float *mask) {
    const int64_t nchunks = H / W;
    _Pragma("omp parallel num_threads(threads)")
    {
        int ca, cb;
        thread_chunks(nchunks, &ca, &cb);
        /* pack this thread's columns: Wp[chunk][gate][k][lane] = W_h[gate·H + chunk·W + lane][k] */
        for (int c = ca; c < cb; c++)
            for (int g = 0; g < 4; g++) {
                float *p = Wp + ((int64_t)c * 4 + g) * H * W;
                for (int l = 0; l < W; l++) {
                    const int64_t n = g * H + c * W + l;  /* the gate row */
                    if (mask)
                        for (int64_t k = 0; k < H; k++) p[k * W + l] = Wf[n * ld + k] * mask[n * H + k];
                    else
                        for (int64_t k = 0; k < H; k++) p[k * W + l] = Wf[n * ld + k];
                }
            }
        for (int64_t b = 0; b < B; b++)  /* h_in for step 0: h0, reset where a document starts */
            for (int64_t j = ca * W; j < cb * W; j++) h_in[b * H + j] = h0[b * H + j] * (keep ? keep[b] : 1.0f);
        _Pragma("omp barrier")
        for (int64_t t = 0; t < T; t++) {
            const float *hin = h_in + (t % 2) * B * H;
            float *hnext = h_in + ((t + 1) % 2) * B * H;
            const float *k = keep ? keep + t * B : 0, *kn = keep && t + 1 < T ? keep + (t + 1) * B : 0;
            const float *c_prev = t == 0 ? c0 : cs + (t - 1) * B * H;
            for (int c = ca; c < cb; c++) {  /* this thread's columns of W_h · h_{t-1} */
                const float *p = Wp + (int64_t)c * 4 * H * W;
                float *zc = z + c * W;  /* z[b][gate·H + unit] */
                panels_product(B, H, hin, H, p, p + H * W, zc, zc + H, 4 * H);
                panels_product(B, H, hin, H, p + 2 * H * W, p + 3 * H * W, zc + 2 * H, zc + 3 * H, 4 * H);
            }
            for (int64_t b = 0; b < B; b++) {
                const float kb = k ? k[b] : 1.0f, knb = kn ? kn[b] : 1.0f;
                const float *zb = z + b * 4 * H, *xb = gx + (t * B + b) * 4 * H;
                float *gb = gates + (t * B + b) * 4 * H;
                for (int64_t j = ca * W; j < cb * W; j += W) {
                    vf out[7];
                    forward_lanes(load(zb + j) + load(xb + j) + load(bias + j),
                                  load(zb + H + j) + load(xb + H + j) + load(bias + H + j),
                                  load(zb + 2 * H + j) + load(xb + 2 * H + j) + load(bias + 2 * H + j),
                                  load(zb + 3 * H + j) + load(xb + 3 * H + j) + load(bias + 3 * H + j),
                                  kb * load(c_prev + b * H + j), out);
                    for (int q = 0; q < 4; q++) store(gb + q * H + j, out[q]);
                    const int64_t o = (t * B + b) * H + j;
                    store(cs + o, out[4]), store(tanh_cs + o, out[5]), store(hs + o, out[6]);
                    store(hnext + b * H + j, knb * out[6]);
                }
            }
            _Pragma("omp barrier")
        }
    }
}

/* Backward over a window (the recurrence only; weight and input gradients are one product
   each over the window, in arlm/fast/__init__.py). d_hs (T, B, H) or NULL; dh (B, H): in, ∂L/∂h_T; out,
   ∂L/∂h_0. dc likewise. Writes dG (T, B, 4H). Scratch: Wp (4H·H), dh_rec (B·H). mask: as forward. */
void arlm_lstm_window_backward(int64_t threads, int64_t T, int64_t B, int64_t H, const float *Wf, int64_t ld,
                               const float *gates, const float *c0, const float *cs, const float *tanh_cs,
                               const float *keep, const float *d_hs, float *dh, float *dc, float *dG,
                               float *Wp, float *dh_rec, const float *mask) {
    const int64_t nchunks = H / W;
    _Pragma("omp parallel num_threads(threads)")
    {
        int ca, cb;
        thread_chunks(nchunks, &ca, &cb);
        /* pack: Wp[chunk][n][lane] = W_h[n][chunk·W + lane], n over the 4H gate rows */
        for (int c = ca; c < cb; c++) {
            float *p = Wp + (int64_t)c * 4 * H * W;
            for (int64_t n = 0; n < 4 * H; n++)
                if (mask)
                    for (int l = 0; l < W; l++) p[n * W + l] = Wf[n * ld + c * W + l] * mask[n * H + c * W + l];
                else
                    for (int l = 0; l < W; l++) p[n * W + l] = Wf[n * ld + c * W + l];
        }
        for (int64_t b = 0; b < B; b++)
            for (int64_t j = ca * W; j < cb * W; j++) dh_rec[b * H + j] = dh[b * H + j];
        _Pragma("omp barrier")
        for (int64_t t = T - 1; t >= -1; t--) {
            if (t < T - 1) {  /* dh_rec = dG_{t+1} · W_h, this thread's units */
                const float *g1 = dG + (t + 1) * B * 4 * H;
                for (int c = ca; c < cb; c += 2) {
                    const float *p0 = Wp + (int64_t)c * 4 * H * W;
                    if (c + 1 < cb) {
                        panels_product(B, 4 * H, g1, 4 * H, p0, p0 + 4 * H * W, dh_rec + c * W, dh_rec + (c + 1) * W, H);
                    } else {  /* an odd chunk: the second panel is computed and dropped */
                        float *tmp = dh + 0;  /* dh is free until the end: use it as scratch */
                        panels_product(B, 4 * H, g1, 4 * H, p0, p0, dh_rec + c * W, tmp + c * W, H);
                    }
                }
            }
            if (t < 0) break;
            const float *ka = keep && t + 1 < T ? keep + (t + 1) * B : 0, *k = keep ? keep + t * B : 0;
            const float *c_prev = t == 0 ? c0 : cs + (t - 1) * B * H;
            for (int64_t b = 0; b < B; b++) {
                const float kb = k ? k[b] : 1.0f, kab = ka ? ka[b] : 1.0f;
                const float *gb = gates + (t * B + b) * 4 * H;
                float *dGb = dG + (t * B + b) * 4 * H;
                for (int64_t j = ca * W; j < cb * W; j += W) {
                    vf out[5], dhv = kab * load(dh_rec + b * H + j);
                    if (d_hs) dhv += load(d_hs + (t * B + b) * H + j);
                    backward_lanes(load(gb + j), load(gb + H + j), load(gb + 2 * H + j), load(gb + 3 * H + j),
                                   kb * load(c_prev + b * H + j), load(tanh_cs + (t * B + b) * H + j), dhv,
                                   kab * load(dc + b * H + j), out);
                    for (int q = 0; q < 4; q++) store(dGb + q * H + j, out[q]);
                    store(dc + b * H + j, out[4]);
                }
            }
            _Pragma("omp barrier")
        }
        /* ∂L/∂h_0 and ∂L/∂c_0, cut where step 0 started a new document */
        _Pragma("omp barrier")
        for (int64_t b = 0; b < B; b++) {
            const float k0 = keep ? keep[b] : 1.0f;
            for (int64_t j = ca * W; j < cb * W; j++) dh[b * H + j] = k0 * dh_rec[b * H + j], dc[b * H + j] *= k0;
        }
    }
}

/* --- One adaptive-softmax tail cluster: the target's log-probability, in one pass ----------

   For n tokens with projections P (n, d) and a cluster of V words with weights Wc (V, d):
       z[t][j] = P[t] · Wc[j]        out[t] = z[t][y[t]] - lse[t],   lse[t] = log Σ_j e^{z[t][j]}
   torch forms the whole n × V logit matrix, its log-softmax, a zero matrix for the gather's
   gradient and the softmax's gradient: four n × V arrays (27 MB each for 171 tokens of a
   40,000-word cluster), bound by memory and fresh pages rather than by the narrow (d = 16)
   products. Here the words go in blocks of BW (8 vectors) whose weights stay in L1:
   forward, each token's logits for a block live in registers only, folded into a running
   maximum and sum per lane (so no horizontal step per block); backward recomputes them,
   forms ∂z = g·(onehot − softmax) for the block's tokens in an L1 buffer, and adds its two
   products, ∂P += ∂z·Wc and ∂Wc = ∂zᵀ·P. Threads own whole word blocks, so each writes
   its own rows of ∂Wc; their partial sums over words (lse's, ∂P's) are added in thread
   order, so a thread count always gives the same answer. Needs d % W == 0. */
#define BW (8 * W)

static inline vf vmax_(vf a, vf b) { return select_(a > b, a, b); }

/* Small clusters (a few tokens, or few words) stay on one thread. */
#define CLUSTER_PARALLEL _Pragma("omp parallel num_threads(threads) if(threads > 1 && n * V >= 65536)")

static inline int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* wt[k][l] = Wc[j0 + l][k] for the block's nw words, 0 beyond them. */
static void block_transpose(int64_t d, int64_t j0, int64_t nw, const float *Wc, float *wt) {
    for (int64_t l = 0; l < BW; l++)
        for (int64_t k = 0; k < d; k++) wt[k * BW + l] = l < nw ? Wc[(j0 + l) * d + k] : 0.0f;
}

/* z[v] = p · wt[:, v·W : (v+1)·W]: the block's logits for one token. */
static inline void block_logits(int64_t d, const float *p, const float *wt, vf z[8]) {
    for (int v = 0; v < 8; v++) z[v] = splat(0.0f);
    for (int64_t k = 0; k < d; k++) {
        const vf pk = splat(p[k]);
        const float *row = wt + k * BW;
        for (int v = 0; v < 8; v++) z[v] += pk * load(row + v * W);
    }
}

/* Lanes of vector v that hold one of the block's nw words (all but in the last block). */
static inline vi block_lanes(int v, int64_t nw) {
    vi lane;
    for (int l = 0; l < W; l++) lane[l] = v * W + l;
    return lane < (int32_t)nw;
}

static inline float dot_(int64_t d, const float *a, const float *b) {
    vf acc = splat(0.0f);
    for (int64_t k = 0; k < d; k += W) acc += load(a + k) * load(b + k);
    return hsum(acc);
}

/* Writes out (n) and lse (n). Scratch: threads · (2·n·W + d·BW) floats. */
void arlm_cluster_forward(int64_t threads, int64_t n, int64_t V, int64_t d, const float *P, const float *Wc,
                          const int64_t *y, float *out, float *lse, float *scratch) {
    const int64_t nblocks = (V + BW - 1) / BW, per = 2 * n * W + d * BW;
    const float lowest = -3.4028234663852886e38f;  /* a finite -inf: lowest − lowest is 0, not NaN */
    for (int64_t r = 0; r < threads; r++)  /* every thread's running maxima and sums, per token and lane */
        for (int64_t q = 0; q < n * W; q++) scratch[r * per + q] = lowest, scratch[r * per + n * W + q] = 0.0f;
    CLUSTER_PARALLEL
    {
        const int tid = thread_id();
        int ca, cb;
        thread_chunks(nblocks, &ca, &cb);
        float *Ml = scratch + tid * per, *Sl = Ml + n * W, *wt = Sl + n * W;
        for (int64_t blk = ca; blk < cb; blk++) {
            const int64_t j0 = blk * BW, nw = V - j0 < BW ? V - j0 : BW;
            block_transpose(d, j0, nw, Wc, wt);
            for (int64_t t = 0; t < n; t++) {
                vf z[8];
                block_logits(d, P + t * d, wt, z);
                if (nw < BW)
                    for (int v = 0; v < 8; v++) z[v] = select_(block_lanes(v, nw), z[v], splat(lowest));
                vf mx = z[0];
                for (int v = 1; v < 8; v++) mx = vmax_(mx, z[v]);
                const vf m_old = load(Ml + t * W), m = vmax_(m_old, mx);
                vf s = load(Sl + t * W) * exp_upto_(m_old - m);
                if (nw < BW)
                    for (int v = 0; v < 8; v++) s += select_(block_lanes(v, nw), exp_upto_(z[v] - m), splat(0.0f));
                else
                    for (int v = 0; v < 8; v++) s += exp_upto_(z[v] - m);
                store(Ml + t * W, m), store(Sl + t * W, s);
            }
        }
        _Pragma("omp barrier")
        _Pragma("omp for schedule(static)")
        for (int64_t t = 0; t < n; t++) {  /* fold threads and lanes: lse = M + log Σ S e^{m − M} */
            float M = lowest, S = 0.0f;
            for (int64_t r = 0; r < threads; r++)
                for (int l = 0; l < W; l++) M = scratch[r * per + t * W + l] > M ? scratch[r * per + t * W + l] : M;
            for (int64_t r = 0; r < threads; r++)
                for (int l = 0; l < W; l++) {
                    const float s = scratch[r * per + n * W + t * W + l];
                    if (s != 0.0f) S += s * expf(scratch[r * per + t * W + l] - M);  /* a NaN sum too */
                }
            lse[t] = M + logf(S);
            out[t] = dot_(d, P + t * d, Wc + y[t] * d) - lse[t];
        }
    }
}

/* g (n): ∂L/∂out. Writes dP (n, d) and dWc (V, d). Scratch: threads · (n·d + d·BW + n·BW) floats. */
void arlm_cluster_backward(int64_t threads, int64_t n, int64_t V, int64_t d, const float *P, const float *Wc,
                           const int64_t *y, const float *lse, const float *g, float *dP, float *dWc, float *scratch) {
    const int64_t nblocks = (V + BW - 1) / BW, per = n * d + d * BW + n * BW;
    for (int64_t r = 0; r < threads; r++) memset(scratch + r * per, 0, sizeof(float) * n * d);  /* every ∂P part */
    CLUSTER_PARALLEL
    {
        const int tid = thread_id();
        int ca, cb;
        thread_chunks(nblocks, &ca, &cb);
        float *dPl = scratch + tid * per, *wt = dPl + n * d, *dz = wt + d * BW;  /* dz: (n, BW) */
        for (int64_t blk = ca; blk < cb; blk++) {
            const int64_t j0 = blk * BW, nw = V - j0 < BW ? V - j0 : BW;
            const float *wb = Wc + j0 * d;
            block_transpose(d, j0, nw, Wc, wt);
            for (int64_t t = 0; t < n; t++) {  /* ∂z = g · (onehot − softmax), 0 beyond the words */
                vf z[8];
                block_logits(d, P + t * d, wt, z);
                const vf l = splat(lse[t]), gt = splat(g[t]);
                for (int v = 0; v < 8; v++) {
                    vf e = -gt * exp_upto_(z[v] - l);
                    store(dz + t * BW + v * W, nw < BW ? select_(block_lanes(v, nw), e, splat(0.0f)) : e);
                }
                const int64_t yl = y[t] - j0;
                if (yl >= 0 && yl < nw) dz[t * BW + yl] += g[t];
            }
            /* ∂Wc rows of the block: 8 words × W of their d columns at a time, over every token */
            for (int64_t w0 = 0; w0 < nw; w0 += 8)
                for (int64_t c = 0; c < d; c += W) {
                    vf a[8];
                    for (int i = 0; i < 8; i++) a[i] = splat(0.0f);
                    for (int64_t t = 0; t < n; t++) {
                        const vf pv = load(P + t * d + c);
                        const float *dzt = dz + t * BW + w0;
                        for (int i = 0; i < 8; i++) a[i] += dzt[i] * pv;
                    }
                    for (int i = 0; i < 8 && w0 + i < nw; i++) store(dWc + (j0 + w0 + i) * d + c, a[i]);
                }
            /* ∂P += ∂z · Wc[block]: 8 tokens × W columns at a time, over the block's words */
            for (int64_t t0 = 0; t0 < n; t0 += 8) {
                const int nt = n - t0 < 8 ? (int)(n - t0) : 8;
                for (int64_t c = 0; c < d; c += W) {
                    vf a[8];
                    for (int i = 0; i < 8; i++) a[i] = i < nt ? load(dPl + (t0 + i) * d + c) : splat(0.0f);
                    if (nt == 8)
                        for (int64_t w = 0; w < nw; w++) {
                            const vf wv = load(wb + w * d + c);
                            for (int i = 0; i < 8; i++) a[i] += dz[(t0 + i) * BW + w] * wv;
                        }
                    else
                        for (int64_t w = 0; w < nw; w++) {
                            const vf wv = load(wb + w * d + c);
                            for (int i = 0; i < nt; i++) a[i] += dz[(t0 + i) * BW + w] * wv;
                        }
                    for (int i = 0; i < nt; i++) store(dPl + (t0 + i) * d + c, a[i]);
                }
            }
        }
        _Pragma("omp barrier")
        _Pragma("omp for schedule(static)")
        for (int64_t q = 0; q < n * d; q++) {
            float sum = 0.0f;
            for (int64_t r = 0; r < threads; r++) sum += scratch[r * per + q];
            dP[q] = sum;
        }
    }
}

/* --- Dropout masks: torch's own Bernoulli draws, many at a time -------------------------------

   On the CPU torch fills `bernoulli_(p)` one element at a time from its generator, a 32-bit
   Mersenne Twister (MT19937): two outputs make a 53-bit uniform u = v / 2^53, and the element
   is 1 where u < p. At ~10 ns an element that loop was a tenth of a training step with
   DropConnect on a 2048 x 512 W_h. Here is the same generator (its state handed over from
   torch and back, arlm/fast/masks.py), the same two outputs an element, the same comparison
   made exactly on integers (v < ceil(p * 2^53)), in loops the compiler vectorizes: the same
   mask bit for bit, and the generator left where torch would leave it. */

#define MT_N 624
#define MT_M 397

static inline uint32_t mt_mix(uint32_t u, uint32_t v) {  /* MT19937's twist of two words */
    return (((u & 0x80000000u) | (v & 0x7fffffffu)) >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u);
}

static void mt_refill(uint32_t *s) {  /* the next 624 words of state, as torch's next_state */
    int i;
    for (i = 0; i < MT_N - MT_M; i++) s[i] = s[i + MT_M] ^ mt_mix(s[i], s[i + 1]);
    for (; i < MT_N - 1; i++) s[i] = s[i + MT_M - MT_N] ^ mt_mix(s[i], s[i + 1]);
    s[MT_N - 1] = s[MT_M - 1] ^ mt_mix(s[MT_N - 1], s[0]);
}

/* n elements of out = (u < p) ? 1 : 0 with `threshold` = ceil(p * 2^53). The generator:
   state64 its 624 words (kept as 64-bit integers in torch's state blob), *left and *next
   its position, updated in place. */
void arlm_bernoulli(int64_t n, uint64_t threshold, int32_t *left_io, uint64_t *next_io, uint64_t *state64,
                    float *out) {
    uint32_t s[MT_N], buf[2048];
    for (int i = 0; i < MT_N; i++) s[i] = (uint32_t)state64[i];
    int64_t left = *left_io, next = (int64_t)*next_io;
    for (int64_t done = 0; done < n;) {
        const int64_t want = 2 * (n - done < 1024 ? n - done : 1024);
        for (int64_t got = 0; got < want;) {
            /* each output first counts `left` down and refills the state when it reaches 0 */
            if (--left == 0) { mt_refill(s); left = MT_N; next = 0; }
            const int64_t k = left < want - got ? left : want - got;  /* outputs before the next refill */
            for (int64_t j = 0; j < k; j++) {
                uint32_t y = s[next + j];
                y ^= y >> 11;
                y ^= (y << 7) & 0x9d2c5680u;
                y ^= (y << 15) & 0xefc60000u;
                y ^= y >> 18;
                buf[got + j] = y;
            }
            next += k; left -= k - 1; got += k;
        }
        for (int64_t j = 0; j < want / 2; j++) {  /* the first output is the high half */
            const uint64_t v = (((uint64_t)buf[2 * j] << 32) | buf[2 * j + 1]) & ((1ull << 53) - 1);
            out[done + j] = v < threshold ? 1.0f : 0.0f;
        }
        done += want / 2;
    }
    for (int i = 0; i < MT_N; i++) state64[i] = s[i];
    *left_io = (int32_t)left;
    *next_io = (uint64_t)next;
}

int64_t arlm_lanes(void) { return W; }  /* the vector width: the window calls need H % W == 0 */
