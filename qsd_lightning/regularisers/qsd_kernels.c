/* Fused CPU kernels of the QSD fast release path (qsd_lightning/regularisers/_ckernel.py
   compiles this file with the system C compiler on first use and binds it with ctypes).
   The random streams here are reproduced bit for bit in torch ops by _stream.py. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GOLDEN 0x9e3779b97f4a7c15ULL
#define CHUNK 65536   /* elements per parallel task (a multiple of 8) */
#define BLOCK 2048    /* random bytes generated at a time (a multiple of 8) */

static inline uint64_t mix64(uint64_t z) {  /* SplitMix64 output function */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* top byte of K_i: byte (i mod 8), in memory order, of the word mix64(seed + (i / 8) GOLDEN),
   for i0 (a multiple of 8) on */
static inline void fill_bytes(uint8_t *rb, uint64_t seed, int64_t i0, int64_t len) {
    uint64_t base = (uint64_t)(i0 >> 3);
    int64_t nw = (len + 7) >> 3;
    for (int64_t k = 0; k < nw; ++k) {
        uint64_t w = mix64(seed + (base + (uint64_t)k) * GOLDEN);
        memcpy(rb + 8 * k, &w, 8);
    }
}

static inline uint32_t low16(uint64_t seed2, int64_t i) {
    return (uint32_t)(mix64(seed2 + (uint64_t)i * GOLDEN) & 0xFFFFu);
}

void qsd_uniform24(uint64_t seed, uint64_t seed2, int64_t start, int64_t n, int32_t *out) {
    for (int64_t t = 0; t < n; ++t) {
        int64_t i = start + t;
        uint64_t w = mix64(seed + (uint64_t)(i >> 3) * GOLDEN);
        uint8_t bytes[8];
        memcpy(bytes, &w, 8);
        uint32_t top = bytes[i & 7];
        out[t] = (int32_t)((top << 16) | low16(seed2, i));
    }
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define FIRST_BYTE(w) __builtin_clzll(w)   /* offset (x8) of the first nonzero byte in memory */
#else
#define FIRST_BYTE(w) __builtin_ctzll(w)
#endif

/* T = ceil(p 2^24) split as hi = min(T >> 16, 255), lo = T - hi 2^16 (as fast.thresholds) */
void qsd_thresholds(const float *p, int64_t n, uint8_t *hi, int32_t *lo) {
    for (int64_t i = 0; i < n; ++i) {  /* branch-free: vectorises */
        float v = p[i];
        v = v > 0.0f ? v : 0.0f;  /* NaN and p <= 0: never released */
        v = v < 1.0f ? v : 1.0f;
        float f = v * 16777216.0f;  /* exact */
        int32_t t = (int32_t)f;
        t += (float)t < f;          /* ceil */
        int32_t h = t >> 16;
        h = h < 255 ? h : 255;
        hi[i] = (uint8_t)h;
        lo[i] = t - (h << 16);
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
              uint64_t seed_x, uint64_t seed_y) {
    qsd_gamma(p, n, ax, seed_x);
    qsd_gamma(c, n, ay, seed_y);
    for (int64_t i = 0; i < n; ++i) {
        float x = p[i] / gk, y = c[i] / gk;
        p[i] = x / (x + y);
        c[i] = cfac == 1.0f ? y : y * cfac;
    }
}

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

#define DEFINE_KERNELS(T, SUF)                                                                 \
static inline void fwd_seg_##SUF(const T *x, T *y, uint8_t *mk, const uint8_t *rb,           \
                                 uint8_t *tb, const uint8_t *hi, const T *c, int64_t len,      \
                                 const int64_t PS, const int64_t CS) {                         \
    for (int64_t t = 0; t < len; ++t) {                                                        \
        uint8_t h = hi[t * PS], a = rb[t];                                                     \
        T cv = c[t * CS];  /* unconditional loads: the select vectorises */                    \
        uint8_t m = a < h;                                                                     \
        tb[t] = (uint8_t)(a == h);                                                             \
        y[t] = x[t] * (m ? cv : (T)0);                                                         \
        mk[t] = m;                                                                             \
    }                                                                                          \
}                                                                                              \
                                                                                               \
/* ties (tb[t] = 1, probability 1/256): release iff the 16 low bits < lo; scan 8 flags a word */ \
static void fix_ties_##SUF(const T *x, T *y, uint8_t *mk, const uint8_t *tb,                  \
                           const int32_t *lo, const T *c, int64_t len,                         \
                           int64_t PS, int64_t CS, uint64_t seed2, int64_t i0) {               \
    for (int64_t k0 = 0; k0 < len; k0 += 32) {                                                 \
        uint64_t v[4]; memcpy(v, tb + k0, 32);  /* skip 32 flags at a time: ~88% are all 0 */ \
        if (!(v[0] | v[1] | v[2] | v[3])) continue;                                            \
        for (int q = 0; q < 4; ++q) {                                                          \
            uint64_t w = v[q];                                                                 \
            int64_t k = k0 + 8 * q;                                                            \
            while (w) {  /* flags are 0/1 bytes: visit the set ones (memory order) */          \
                int64_t t = k + (FIRST_BYTE(w) >> 3);                                          \
                w &= w - 1;                                                                    \
                if (t >= len) break;                                                           \
                uint8_t m = (int64_t)low16(seed2, i0 + t) < (int64_t)lo[t * PS];               \
                mk[t] = m;                                                                     \
                y[t] = x[t] * (m ? c[t * CS] : (T)0);                                          \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
                                                                                               \
int qsd_fwd_##SUF(const T *x, T *y, uint8_t *mk, int64_t n, int64_t U,                        \
                  const float *p, int64_t ps, const T *c, int64_t cs,                          \
                  uint64_t seed, uint64_t seed2, int nthreads) {                               \
    int64_t nu = ps ? U : 1;                                                                   \
    uint8_t *hi = (uint8_t *)malloc((size_t)nu * 5);                                           \
    if (!hi) return -1;                                                                        \
    int32_t *lo = (int32_t *)malloc((size_t)nu * sizeof(int32_t));                            \
    if (!lo) { free(hi); return -1; }                                                          \
    qsd_thresholds(p, nu, hi, lo);                                                             \
    int64_t nch = (n + CHUNK - 1) / CHUNK;                                                     \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if(nthreads > 1 && nch > 1)") \
    for (int64_t ch = 0; ch < nch; ++ch) {                                                     \
        uint8_t rb[BLOCK + 8], tb[BLOCK + 32];                                                  \
        int64_t s = ch * CHUNK, e = min64(n, s + CHUNK);                                       \
        for (int64_t b0 = s; b0 < e; b0 += BLOCK) {                                            \
            int64_t len = min64(e, b0 + BLOCK) - b0;                                           \
            fill_bytes(rb, seed, b0, len);                                                     \
            memset(tb + len, 0, 32);                                                           \
            for (int64_t t = 0; t < len;) {                                                    \
                int64_t i = b0 + t, j = i % U, seg = min64(len - t, U - j);                    \
                const uint8_t *h = hi + j * ps; const T *cc = c + j * cs;                      \
                if (ps && cs) fwd_seg_##SUF(x + i, y + i, mk + i, rb + t, tb + t, h, cc, seg, 1, 1); \
                else if (ps) fwd_seg_##SUF(x + i, y + i, mk + i, rb + t, tb + t, h, cc, seg, 1, 0);  \
                else if (cs) fwd_seg_##SUF(x + i, y + i, mk + i, rb + t, tb + t, h, cc, seg, 0, 1);  \
                else fwd_seg_##SUF(x + i, y + i, mk + i, rb + t, tb + t, h, cc, seg, 0, 0);          \
                t += seg;                                                                      \
            }                                                                                  \
            /* second sweep over the block for ties, unit by unit again */                     \
            for (int64_t t = 0; t < len;) {                                                    \
                int64_t i = b0 + t, j = i % U, seg = min64(len - t, U - j);                    \
                fix_ties_##SUF(x + i, y + i, mk + i, tb + t, lo + j * ps, c + j * cs, seg,     \
                               ps, cs, seed2, i);                                              \
                t += seg;                                                                      \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    free(hi);                                                                                  \
    free(lo);                                                                                  \
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
