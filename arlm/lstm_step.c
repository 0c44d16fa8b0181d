/* The element-wise half of one LSTM time step, forward and backward, in one pass.

   arlm/cell.py does the matrix products with torch (oneDNN); what is left of a step is
   a dozen element-wise operations on (batch, hidden) tensors. As separate torch calls
   each one reads and writes memory and pays a dispatch, and torch's tanh is slow on
   CPU; that was most of a step at hidden size 256. Here they are one loop the compiler
   vectorizes. Same equations as LSTMCell.forward (tests check equality to 1e-5):

       f = σ(z_f)   i = σ(z_i)   c̃ = tanh(z_c)   o = σ(z_o)
       c = f ⊙ c_prev + i ⊙ c̃        h = o ⊙ tanh(c)

   Layout: z and gates are (batch, 4·hidden) in the order f, i, c̃, o; states are
   (batch, hidden); `keep` is one float per batch row (0 where a document starts, which
   zeroes the state the step reads), or NULL. Built by arlm/kernel.py with the system C
   compiler; plain C99, no torch headers, so it compiles in a fraction of a second. */

#include <stdint.h>
#include <string.h>

/* W floats at a time, written with GCC/Clang vector extensions rather than left to
   the auto-vectorizer (which gives up on these loops for some -march targets): the
   compiler maps them onto AVX/AVX-512, SSE or NEON, whatever the CPU has. */
#if defined(__AVX512F__)
#define W 16  /* lanes: one AVX-512 register */
#else
#define W 8   /* one AVX register; two SSE/NEON ones */
#endif
typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf splat(float a) { return (vf){0} + a; }
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

/* e^x to about 2 ulp (Cephes' polynomial). NaN stays NaN (the clamps compare, and a
   NaN compares false), so a diverging run is still caught by the NaN check on the loss. */
static inline vf exp_(vf x) {
    x = select_(x > 88.3762626647949f, splat(88.3762626647949f), x);
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
void arlm_lstm_forward(int64_t threads, int64_t B, int64_t H, const float *zh, const float *zx,
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
