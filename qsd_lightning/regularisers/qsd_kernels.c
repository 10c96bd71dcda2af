/* Fused CPU kernels of the QSD fast release path (qsd_lightning/regularisers/_ckernel.py
   compiles this file with the system C compiler on first use and binds it with ctypes).
   The random streams here are reproduced bit for bit in torch ops by _stream.py. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GOLDEN 0x9e3779b97f4a7c15ULL
#define CHUNK 65536   /* elements per parallel task (a multiple of 8) */
#define BLOCK 2048    /* elements drawn at a time (a multiple of 64) */

static inline uint64_t mix64(uint64_t z) {  /* SplitMix64 output function */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* K_i, the 24-bit uniform of element i (release iff K_i < T_j = ceil(p_j 2^24)), is
   top16(i) 2^8 + low8(i): its 16 top bits are 16-bit word (i mod 4), in memory order, of
   mix64(seed + (i / 4) GOLDEN); its 8 low bits, drawn only on a tie of the top bits with the
   threshold's (probability 2^-16), are the low byte of mix64(seed2 + i GOLDEN). */
static inline void fill_top16(uint16_t *rb, uint64_t seed, int64_t i0, int64_t len) {  /* i0: a multiple of 4 */
    uint64_t base = (uint64_t)(i0 >> 2);
    int64_t nw = (len + 3) >> 2;
    for (int64_t k = 0; k < nw; ++k) {
        uint64_t w = mix64(seed + (base + (uint64_t)k) * GOLDEN);
        memcpy(rb + 4 * k, &w, 8);
    }
}

static inline uint32_t low8(uint64_t seed2, int64_t i) {
    return (uint32_t)(mix64(seed2 + (uint64_t)i * GOLDEN) & 0xFFu);
}

void qsd_uniform24(uint64_t seed, uint64_t seed2, int64_t start, int64_t n, int32_t *out) {
    for (int64_t t = 0; t < n; ++t) {
        int64_t i = start + t;
        uint64_t w = mix64(seed + (uint64_t)(i >> 2) * GOLDEN);
        uint16_t top[4];
        memcpy(top, &w, 8);
        out[t] = (int32_t)(((uint32_t)top[i & 3] << 8) | low8(seed2, i));
    }
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define FIRST_BYTE(w) __builtin_clzll(w)   /* offset (x8) of the first nonzero byte in memory */
#else
#define FIRST_BYTE(w) __builtin_ctzll(w)
#endif

/* T = ceil(p 2^24) (as _layout.thresholds): release iff K < T, i.e. top16 < T >> 8, or on a
   tie top16 == T >> 8, low8 < T & 255 (T = 2^24, p = 1: T >> 8 = 2^16, every element) */
void qsd_thresholds(const float *p, int64_t n, int32_t *thr) {
    for (int64_t i = 0; i < n; ++i) {  /* branch-free: vectorises */
        float v = p[i];
        v = v > 0.0f ? v : 0.0f;  /* NaN and p <= 0: never released */
        v = v < 1.0f ? v : 1.0f;
        float f = v * 16777216.0f;  /* exact */
        int32_t t = (int32_t)f;
        thr[i] = t + ((float)t < f);  /* ceil */
    }
}


/* ---------------------------------------------------------------- Gamma(a, 1) draws
   Marsaglia & Tsang (2000) with standard normals by inverse CDF (Acklam's rational
   approximation, relative error < 1.2e-9; tails by log/sqrt) from 32-bit uniforms; a < 1 via
   Gamma(a) = Gamma(a + 1) U^(1/a). Candidates are computed in vectorisable blocks, the rare
   squeeze failures and tails in scalar code. One sequential counter-based stream: the
   result depends on the seed only. */
static inline double u53(uint64_t w) {  /* uniform on (0, 1): 52 random bits and a half ulp */
    uint64_t b = 0x3FF0000000000000ULL | (w >> 12);  /* [1, 2) by its bits: vectorises */
    double d;
    memcpy(&d, &b, 8);
    return (d - 1.0) + 1.1102230246251565e-16;
}

static inline double u32(uint64_t w) {  /* uniform on (0, 1) from the top 32 bits of w */
    uint64_t b = 0x3FF0000000000000ULL | ((w >> 32) << 20);
    double d;
    memcpy(&d, &b, 8);
    return (d - 1.0) + 1.1641532182693481e-10;  /* + 2^-33 */
}

static const double IA[6] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                             1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00};
static const double IB[5] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                             6.680131188771972e+01, -1.328068155288572e+01};
static const double IC[6] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                             -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00};
static const double ID[4] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                             3.754408661907416e+00};
#define P_LOW 0.02425

static double norm_tail(double p) {  /* p < P_LOW or p > 1 - P_LOW */
    double q, x;
    if (p < 0.5) {
        q = sqrt(-2.0 * log(p));
        x = (((((IC[0] * q + IC[1]) * q + IC[2]) * q + IC[3]) * q + IC[4]) * q + IC[5]) /
            ((((ID[0] * q + ID[1]) * q + ID[2]) * q + ID[3]) * q + 1.0);
    } else {
        q = sqrt(-2.0 * log1p(-p));
        x = -(((((IC[0] * q + IC[1]) * q + IC[2]) * q + IC[3]) * q + IC[4]) * q + IC[5]) /
            ((((ID[0] * q + ID[1]) * q + ID[2]) * q + ID[3]) * q + 1.0);
    }
    return x;
}

#define GBLOCK 256
void qsd_gamma(float *out, int64_t n, double a, uint64_t seed) {
    double aa = a < 1.0 ? a + 1.0 : a;
    double d = aa - 1.0 / 3.0, cc = 1.0 / sqrt(9.0 * d);
    double pz[GBLOCK], z[GBLOCK], u[GBLOCK], v[GBLOCK];
    uint8_t ok[GBLOCK];
    uint64_t ctr = 0;
    int64_t got = 0;
    while (got < n) {
        for (int k = 0; k < GBLOCK; ++k) {  /* vectorised: central normals and the squeeze */
            uint64_t w = mix64(seed + (ctr + (uint64_t)k) * GOLDEN);
            double p = u32(w), uu = u32(w << 32);  /* two 32-bit uniforms per word */
            double q = p - 0.5, r = q * q;
            double x = (((((IA[0] * r + IA[1]) * r + IA[2]) * r + IA[3]) * r + IA[4]) * r + IA[5]) * q /
                       (((((IB[0] * r + IB[1]) * r + IB[2]) * r + IB[3]) * r + IB[4]) * r + 1.0);
            double t = 1.0 + cc * x;
            double x2 = x * x;
            pz[k] = p;
            z[k] = x;
            u[k] = uu;
            v[k] = t * t * t;
            ok[k] = (uint8_t)((p >= P_LOW) & (p <= 1.0 - P_LOW) & (t > 0.0) & (uu < 1.0 - 0.0331 * x2 * x2));
        }
        for (int k = 0; k < GBLOCK && got < n; ++k) {
            if (ok[k]) {
                out[got++] = (float)(d * v[k]);
                continue;
            }
            double p = pz[k], x = z[k];
            if (p < P_LOW || p > 1.0 - P_LOW) x = norm_tail(p);
            double t = 1.0 + cc * x;
            if (t <= 0.0) continue;
            double t3 = t * t * t, x2 = x * x;
            if (u[k] < 1.0 - 0.0331 * x2 * x2 || log(u[k]) < 0.5 * x2 + d * (1.0 - t3 + log(t3)))
                out[got++] = (float)(d * t3);
        }
        ctr += GBLOCK;
    }
    if (a < 1.0) {  /* boost: Gamma(a) = Gamma(a + 1) U^(1/a), U from a third stream */
        for (int64_t i = 0; i < n; ++i) {
            double uu = u53(mix64(~seed + (uint64_t)i * GOLDEN));
            out[i] = (float)((double)out[i] * exp(log(uu) / a));
        }
    }
}

/* The per-unit draws of one step (method.md, eqs. 1-3) in float32, as functional.draw_quanta:
   x = Gamma(ax) / gk, y = Gamma(ay) / gk, p = x / (x + y), c = y * cfac. */
void qsd_draw(float *p, float *c, int64_t n, double ax, double ay, float gk, float cfac,
              uint64_t seed_x, uint64_t seed_y, int nthreads) {
    /* two independent sequential streams: one thread each when two are allowed */
    _Pragma("omp parallel sections num_threads(2) if(nthreads > 1 && n >= 2048)")
    {
        _Pragma("omp section")
        qsd_gamma(p, n, ax, seed_x);
        _Pragma("omp section")
        qsd_gamma(c, n, ay, seed_y);
    }
    for (int64_t i = 0; i < n; ++i) {
        float x = p[i] / gk, y = c[i] / gk;
        p[i] = x / (x + y);
        c[i] = cfac == 1.0f ? y : y * cfac;
    }
}

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

#ifndef QSD_VARIANT
#define QSD_VARIANT 0  /* benchmark variants only (scripts/benchmark.py --kernel-parts): 0 = the kernel */
#endif

/* One pass that draws (or, in backward, redraws) the mask and scales: out = in * (m ? c : 0).
   The mask is a function of (seed, seed2, T, element index) only, so backward regenerates it
   from the same seeds instead of keeping it; with STORE it is written out as well. */
#define DEFINE_KERNELS(T, SUF)                                                                 \
static inline int fwd_seg_##SUF(const T *x, T *y, uint8_t *mk, const uint16_t *rb,           \
                                const uint16_t *hi, const T *c, int64_t len,                   \
                                const int64_t PS, const int64_t CS, const int STORE) {         \
    uint16_t tie = 0;                                                                          \
    for (int64_t t = 0; t < len; ++t) {                                                        \
        uint16_t h = hi[t * PS], a = rb[t];                                                    \
        T cv = c[t * CS];  /* unconditional loads: the select vectorises */                    \
        uint16_t m = a < h;                                                                    \
        tie |= a == h;                                                                         \
        y[t] = x[t] * (m ? cv : (T)0);                                                         \
        if (STORE) mk[t] = (uint8_t)m;                                                         \
    }                                                                                          \
    return (int)tie;                                                                           \
}                                                                                              \
                                                                                               \
/* a block with a tie (top16 == T >> 8, probability 2^-16 per element, so ~3% of blocks):   \
   release those iff low8 < T & 255. Flags the ties in a vectorised pass, then visits them;    \
   element i0 + t is of unit (j0 + t) mod U. */                                               \
static void fix_ties_##SUF(const T *x, T *y, uint8_t *mk, const uint16_t *rb,                 \
                           const uint16_t *hi, const int32_t *thr, const T *c, int64_t len,    \
                           int64_t U, int64_t j0, int64_t PS, int64_t CS, uint64_t seed2,      \
                           int64_t i0) {                                                       \
    uint8_t tb[BLOCK + 8];                                                                     \
    for (int64_t t = 0, j = j0; t < len; j = 0) {                                              \
        int64_t seg = min64(len - t, U - j);                                                   \
        const uint16_t *h = hi + j * PS;                                                       \
        if (PS) for (int64_t k = 0; k < seg; ++k) tb[t + k] = rb[t + k] == h[k];               \
        else for (int64_t k = 0; k < seg; ++k) tb[t + k] = rb[t + k] == h[0];                  \
        t += seg;                                                                              \
    }                                                                                          \
    memset(tb + len, 0, 8);                                                                    \
    for (int64_t k0 = 0; k0 < len; k0 += 8) {                                                  \
        uint64_t w;                                                                            \
        memcpy(&w, tb + k0, 8);                                                                \
        while (w) {  /* flags are 0/1 bytes: visit the set ones (memory order) */              \
            int64_t t = k0 + (FIRST_BYTE(w) >> 3), j = (j0 + t) % U;                           \
            w &= w - 1;                                                                        \
            int32_t lo = thr[j * PS] - ((int32_t)hi[j * PS] << 8);  /* in [0, 256] */          \
            uint8_t m = (int32_t)low8(seed2, i0 + t) < lo;                                     \
            if (mk) mk[t] = m;                                                                 \
            y[t] = x[t] * (m ? c[j * CS] : (T)0);                                              \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
                                                                                               \
/* x -> y = x * (m ? c : 0), the mask m drawn from (seed, seed2) and written to mk unless it   \
   is NULL: the forward (mk NULL when nobody reads the mask) and the backward (x the output's  \
   gradient, mk NULL: the same mask, drawn again). thr: T per unit (ps = 1) or one (ps = 0). */ \
int qsd_fwd_##SUF(const T *x, T *y, uint8_t *mk, int64_t n, int64_t U,                        \
                   const int32_t *thr, int64_t ps, const T *c, int64_t cs,                     \
                   uint64_t seed, uint64_t seed2, int nthreads) {                              \
    /* the top 16 bits of T, 2^16 (p = 1) capped to 2^16 - 1: then every tie releases */       \
    int64_t nu = ps ? U : 1;                                                                   \
    uint16_t hstack[1024], *hi = nu <= 1024 ? hstack : (uint16_t *)malloc((size_t)nu * 2);      \
    if (!hi) return -1;                                                                        \
    for (int64_t j = 0; j < nu; ++j) {                                                         \
        int32_t h = thr[j] >> 8;                                                               \
        hi[j] = (uint16_t)(h < 65535 ? h : 65535);                                             \
    }                                                                                          \
    int64_t nch = (n + CHUNK - 1) / CHUNK;                                                     \
    const int store = mk != NULL;                                                              \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if(nthreads > 1 && nch > 1)") \
    for (int64_t ch = 0; ch < nch; ++ch) {                                                     \
        uint16_t rb[BLOCK + 4];                                                                \
        int64_t s = ch * CHUNK, e = min64(n, s + CHUNK);                                       \
        for (int64_t b0 = s; b0 < e; b0 += BLOCK) {                                            \
            int64_t len = min64(e, b0 + BLOCK) - b0, tie = 0;                                  \
            if (QSD_VARIANT == 1) memset(rb, 0, 2 * (size_t)len);  /* no random bits, no ties */ \
            else fill_top16(rb, seed, b0, len);                                                \
            for (int64_t t = 0; t < len;) {                                                    \
                int64_t i = b0 + t, j = i % U, seg = min64(len - t, U - j);                    \
                const uint16_t *h = hi + j * ps; const T *cc = c + j * cs;                     \
                uint8_t *m = store ? mk + i : NULL;                                            \
                if (store) {                                                                   \
                    if (ps && cs) tie |= fwd_seg_##SUF(x + i, y + i, m, rb + t, h, cc, seg, 1, 1, 1); \
                    else if (ps) tie |= fwd_seg_##SUF(x + i, y + i, m, rb + t, h, cc, seg, 1, 0, 1);  \
                    else if (cs) tie |= fwd_seg_##SUF(x + i, y + i, m, rb + t, h, cc, seg, 0, 1, 1);  \
                    else tie |= fwd_seg_##SUF(x + i, y + i, m, rb + t, h, cc, seg, 0, 0, 1);          \
                } else {                                                                       \
                    if (ps && cs) tie |= fwd_seg_##SUF(x + i, y + i, m, rb + t, h, cc, seg, 1, 1, 0); \
                    else if (ps) tie |= fwd_seg_##SUF(x + i, y + i, m, rb + t, h, cc, seg, 1, 0, 0);  \
                    else if (cs) tie |= fwd_seg_##SUF(x + i, y + i, m, rb + t, h, cc, seg, 0, 1, 0);  \
                    else tie |= fwd_seg_##SUF(x + i, y + i, m, rb + t, h, cc, seg, 0, 0, 0);          \
                }                                                                              \
                t += seg;                                                                      \
            }                                                                                  \
            if (tie && QSD_VARIANT != 2)  /* variant 2: ties left as they are */               \
                fix_ties_##SUF(x + b0, y + b0, store ? mk + b0 : NULL, rb, hi, thr, c, len, U, \
                               b0 % U, ps, cs, seed2, b0);                                     \
        }                                                                                      \
    }                                                                                          \
    if (hi != hstack) free(hi);                                                                \
    return 0;                                                                                  \
}                                                                                              \
                                                                                               \
static inline void scale_seg_##SUF(const T *g, const uint8_t *mk, T *out, const T *c,         \
                                   int64_t len, const int64_t CS) {                            \
    for (int64_t t = 0; t < len; ++t) {                                                        \
        T cv = c[t * CS];                                                                      \
        out[t] = g[t] * (mk[t] ? cv : (T)0);                                                   \
    }                                                                                          \
}                                                                                              \
                                                                                               \
void qsd_scale_##SUF(const T *g, const uint8_t *mk, T *out, int64_t n, int64_t U,              \
                     const T *c, int64_t cs, int nthreads) {                                   \
    int64_t nch = (n + CHUNK - 1) / CHUNK;                                                     \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if(nthreads > 1 && nch > 1)") \
    for (int64_t ch = 0; ch < nch; ++ch) {                                                     \
        int64_t s = ch * CHUNK, e = min64(n, s + CHUNK);                                       \
        for (int64_t i = s; i < e;) {                                                          \
            int64_t j = i % U, seg = min64(e - i, U - j);                                      \
            if (cs) scale_seg_##SUF(g + i, mk + i, out + i, c + j, seg, 1);                    \
            else scale_seg_##SUF(g + i, mk + i, out + i, c, seg, 0);                           \
            i += seg;                                                                          \
        }                                                                                      \
    }                                                                                          \
}

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
