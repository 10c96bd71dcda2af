"""Compiled CPU kernels of the fast release path (float32 / float64, elementwise masks).

A small C file, compiled on first use with the system C compiler (``$CC``, else ``cc``) into
a per-user cache (``$QSD_KERNEL_CACHE`` or ``~/.cache/qsd_lightning``, created mode 0o700)
and loaded with ctypes; no build step at install time. Only a library this user built is
loaded: a cache directory that is not the user's own, or that others can write, is not used
(a warning; the kernel is compiled in a private temporary directory), and a cached library
is loaded only if it is the user's, writable by no one else, and has the SHA-256 recorded
when it was built (else a warning, and it is rebuilt). Where no compiler works (or with
``QSD_CKERNEL=0``) everything falls back to the eager torch ops of :mod:`.fast`, with the
same results.

* ``qsd_fwd``: one pass that draws the mask and scales: for element i with unit j = i mod U,
  K_i < T_j decides release (T_j = ceil(p_j 2^24), as :func:`.fast.thresholds`) and
  y_i = x_i * (m_i ? c_j : 0) is written with the mask byte m_i. The top byte of K_i comes
  from a counter-based SplitMix64 stream (8 bytes per 64-bit word), its 16 low bits only on
  a tie (1/256), from a second stream; seeds come from torch's generator, so results do
  not depend on the number of threads (OpenMP over chunks of 64Ki elements).
* ``qsd_scale``: out_i = g_i * (m_i ? c_j : 0): backward, and scaling by a given mask.
* ``qsd_draw`` / ``qsd_gamma``: the per-unit draws (method.md, eqs. 1-3) with Gamma variates
  from Marsaglia and Tsang's method (normals by Acklam's inverse CDF), ~3x numpy's speed.

The products are exactly the reference's ``x * (m * c).to(dtype)``, bit for bit.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "usable", "usable_release", "scale", "release", "thresholds", "uniform24"]

_SOURCE = r"""
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
"""

_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_CTYPE = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
ENABLED = os.environ.get("QSD_CKERNEL", "1").lower() not in ("0", "false", "no", "off")


def _cpu_signature() -> str:
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "model name", "Features")):
                    text += line
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        pass
    return text


class KernelCacheWarning(UserWarning):
    """The kernel cache was not used, or a cached kernel not loaded, for safety."""


class _Untrusted(Exception):
    """A cached file this user must not load code from."""


def _warn(message: str) -> None:
    warnings.warn(f"qsd_lightning: {message}", KernelCacheWarning, stacklevel=4)


def _cache_key() -> str:
    """Names the kernel: changes with the C source, the CPU (model and flags) and the Python."""
    return hashlib.sha256((_SOURCE + _cpu_signature() + sys.version).encode()).hexdigest()[:16]


def _compile(workdir: Path) -> Path:
    """Compiles the kernel in ``workdir`` (a private directory); returns the library's path.
    Relative names, so the same compiler builds the same bytes in any directory."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    (workdir / "qsd_kernels.c").write_text(_SOURCE)
    base = [cc, "-O3", "-std=c11", "-fPIC", "-shared", "-fno-math-errno", "qsd_kernels.c", "-lm", "-o", "qsd_kernels.so"]
    errors = []
    for extra in (["-march=native", "-fopenmp"], ["-march=native"], ["-fopenmp"], []):
        proc = subprocess.run(base + extra, cwd=workdir, capture_output=True, text=True)
        if proc.returncode == 0:
            out = workdir / "qsd_kernels.so"
            os.chmod(out, 0o700)
            return out
        errors.append(proc.stderr.strip()[-500:])
    raise RuntimeError("C compiler failed: " + " | ".join(errors))


# ---------------------------------------------------------------- the cache: trust nothing
# Loading a library runs its constructors, so only code this user built is loaded: the cache
# directory must be this user's and writable by nobody else (its parents this user's or
# root's, and not writable by others unless sticky, like /tmp); each library is recorded with
# the SHA-256 of the bytes compiled, in a sidecar written atomically, and the file loaded is
# the very file (open descriptor, same inode) whose bytes were hashed and matched. An unsafe
# cache is not used (one warning; the kernel is compiled in a fresh private directory); an
# untrusted cached file is not loaded (one warning; the kernel is rebuilt).


def _dir_problem(path: Path) -> str | None:
    """Why ``path`` (absolute, symlinks resolved) is not safe to load code from, or None."""
    uid = os.geteuid()
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid != uid:
        return f"{path} is owned by uid {st.st_uid}, not by you (uid {uid})"
    if st.st_mode & 0o022:
        return f"{path} is writable by group/others (mode {stat.S_IMODE(st.st_mode):o})"
    home = os.path.realpath(os.path.expanduser("~"))
    for parent in path.parents:
        st = os.lstat(parent)
        if st.st_uid not in (uid, 0):
            return f"its parent {parent} is owned by uid {st.st_uid}"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return f"its parent {parent} is writable by group/others"
        if str(parent) == home:  # as ssh does: above one's home is the system's business
            break
    return None


def _cache_dir() -> tuple[Path | None, str]:
    """(the cache directory, created mode 0o700 and symlinks resolved, or None when it is
    not safe; the configured path or why it is not safe)."""
    configured = os.environ.get("QSD_KERNEL_CACHE") or str(Path.home() / ".cache" / "qsd_lightning")
    configured = os.path.abspath(os.path.expanduser(configured))
    try:
        missing = []
        head = configured
        while not os.path.lexists(head) and os.path.dirname(head) != head:
            missing.append(head)
            head = os.path.dirname(head)
        for d in reversed(missing):  # what we create, only we can write
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
        real = Path(os.path.realpath(configured))
        problem = _dir_problem(real)
    except OSError as err:
        return None, f"cannot use the kernel cache {configured} ({err})"
    if problem is not None:
        return None, f"not using the kernel cache {configured}: {problem}"
    return real, configured


def _open_own_file(path: Path) -> int:
    """A read-only descriptor on ``path``, a regular file (not a link) of this user that no
    one else can write; _Untrusted otherwise, FileNotFoundError if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as err:
        raise _Untrusted(f"cannot open {path} ({err.strerror or err})") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
    elif st.st_mode & 0o022:
        problem = f"is writable by group/others (mode {stat.S_IMODE(st.st_mode):o})"
    if problem:
        os.close(fd)
        raise _Untrusted(f"{path} {problem}")
    return fd


def _read_fd(fd: int, limit: int = 1 << 30) -> bytes:
    chunks, size = [], 0
    while size <= limit:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    raise _Untrusted("file too large")


def _dlopen_verified(path: Path, digest: str) -> ctypes.CDLL:
    """Loads ``path`` if its bytes have SHA-256 ``digest``: the bytes hashed are read from the
    descriptor that is loaded (/proc/self/fd), and only this user can write the file."""
    fd = _open_own_file(path)
    try:
        if hashlib.sha256(_read_fd(fd)).hexdigest() != digest:
            raise _Untrusted(f"{path} does not match the SHA-256 recorded when it was built")
        by_fd = f"/proc/self/fd/{fd}"
        return ctypes.CDLL(by_fd if os.path.exists(by_fd) else str(path))
    finally:
        os.close(fd)


def _record_path(cache: Path, key: str) -> Path:
    return cache / f"qsd_kernels_{key}.sha256"


def _library_path(cache: Path, key: str, digest: str) -> Path:
    return cache / f"qsd_kernels_{key}_{digest[:16]}.so"


def _load_cached(cache: Path, key: str) -> ctypes.CDLL | None:
    """The recorded kernel of ``key`` in ``cache``; None if none is recorded; _Untrusted if
    the record or the library is not what this user built."""
    record = _record_path(cache, key)
    try:
        fd = _open_own_file(record)
    except FileNotFoundError:
        return None
    try:
        digest = _read_fd(fd, limit=4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise _Untrusted(f"{record} is not a SHA-256 record")
    try:
        return _dlopen_verified(_library_path(cache, key, digest), digest)
    except FileNotFoundError:
        return None


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)  # mode 0o600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _build(cache: Path, key: str) -> ctypes.CDLL:
    """Compiles the kernel into ``cache`` (safe), records its SHA-256, and loads it verified.
    The library's name carries its hash and the record is replaced atomically, so processes
    building at once never pair a record with another build's library."""
    workdir = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        built = _compile(workdir)
        digest = hashlib.sha256(built.read_bytes()).hexdigest()
        library = _library_path(cache, key, digest)
        os.replace(built, library)
        _write_atomic(_record_path(cache, key), digest + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return _dlopen_verified(library, digest)


def _build_private(key: str) -> ctypes.CDLL:
    """Compiles and loads the kernel in a fresh private temporary directory, then removes it."""
    tmp = Path(os.path.realpath(tempfile.mkdtemp(prefix="qsd_kernels_")))
    try:
        problem = _dir_problem(tmp)
        if problem is not None:
            raise RuntimeError(f"no private directory to compile in ({problem})")
        return _build(tmp, key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open_library() -> ctypes.CDLL:
    key = _cache_key()
    cache, note = _cache_dir()
    if cache is None:
        _warn(f"{note}; compiling the kernel in a private temporary directory instead "
              "(set QSD_KERNEL_CACHE to a directory only you can write)")
        return _build_private(key)
    try:
        lib = _load_cached(cache, key)
    except _Untrusted as err:
        _warn(f"not loading the cached kernel: {err}; rebuilding it")
        lib = None
    return lib if lib is not None else _build(cache, key)


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        try:
            if sys.platform == "win32":
                raise RuntimeError("disabled")
            lib = _open_library()
            i64, u64, ptr, cint = ctypes.c_int64, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int
            for suf in _SUFFIX.values():
                getattr(lib, f"qsd_fwd_{suf}").argtypes = [ptr, ptr, ptr, i64, i64, ptr, i64, ptr, i64, u64, u64, cint]
                getattr(lib, f"qsd_fwd_{suf}").restype = cint
                getattr(lib, f"qsd_scale_{suf}").argtypes = [ptr, ptr, ptr, i64, i64, ptr, i64, cint]
                getattr(lib, f"qsd_scale_{suf}").restype = None
            lib.qsd_thresholds.argtypes = [ptr, i64, ptr, ptr]
            lib.qsd_thresholds.restype = None
            lib.qsd_draw.argtypes = [ptr, ptr, i64, ctypes.c_double, ctypes.c_double, ctypes.c_float, ctypes.c_float, u64, u64]
            lib.qsd_draw.restype = None
            lib.qsd_gamma.argtypes = [ptr, i64, ctypes.c_double, u64]
            lib.qsd_gamma.restype = None
            lib.qsd_uniform24.argtypes = [u64, u64, i64, i64, ptr]
            lib.qsd_uniform24.restype = None
            _lib = lib
        except Exception as err:  # no compiler, no private directory, ...: eager fallback
            if str(err) != "disabled":
                warnings.warn(f"qsd_lightning: fused CPU kernel unavailable ({err}); using eager torch ops", stacklevel=3)
            _lib = None
        _tried = True
        return _lib


def available() -> bool:
    """Whether the compiled kernel is enabled and loaded (compiling it on first call)."""
    return ENABLED and _load() is not None


def _dtype_ok(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in _SUFFIX and x.numel() > 0


def usable(x: Tensor, mask: Tensor, c: Tensor) -> bool:
    return (
        ENABLED and _dtype_ok(x) and mask.dtype == torch.bool and mask.shape == x.shape
        and c.device.type == "cpu" and _load() is not None
    )


def usable_release(x: Tensor, draw, mask_shape: tuple[int, ...]) -> bool:
    return (
        ENABLED and _dtype_ok(x) and tuple(mask_shape) == tuple(x.shape)
        and draw.p.device.type == "cpu" and draw.c.device.type == "cpu" and _load() is not None
    )


def _threads(n: int) -> int:
    return 1 if n < 2 * 65536 else max(1, torch.get_num_threads())


def thresholds(p: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`.fast.thresholds` of a float32 CPU tensor in one C call (what ``qsd_fwd`` does)."""
    pf = p.float().contiguous()
    hi = torch.empty(pf.shape, dtype=torch.uint8)
    lo = torch.empty(pf.shape, dtype=torch.int32)
    _load().qsd_thresholds(pf.data_ptr(), pf.numel(), hi.data_ptr(), lo.data_ptr())
    return hi, lo


_MIN_UNITS = 256  # per-unit arrays shorter than this are tiled: long inner loops vectorise


def _tiled(units: int, *flat: Tensor) -> tuple[int, list[Tensor]]:
    """(U', arrays repeated to U' = a multiple of ``units`` >= 256): unit i mod U' mod U is
    unit i mod U, so the kernels see the same values with longer contiguous runs."""
    if not 0 < units < _MIN_UNITS:
        return units, list(flat)
    reps = -(-_MIN_UNITS // units)
    return units * reps, [t.repeat(reps) if t.dim() else t for t in flat]


def _scaler(units: int, dtype: torch.dtype):
    """``(g, mask, cf) -> g * (mask ? cf[i mod units] : 0)`` (cf flat per unit, or 0-d)."""
    fn = getattr(_load(), f"qsd_scale_{_SUFFIX[dtype]}")

    def scale(g: Tensor, mask: Tensor, cf: Tensor) -> Tensor:
        units_, (cf,) = _tiled(units, cf) if cf.dim() else (units, [cf])
        g = g.contiguous()
        out = torch.empty_like(g, memory_format=torch.contiguous_format)
        n = g.numel()
        per_unit = cf.dim() > 0
        fn(g.data_ptr(), mask.data_ptr(), out.data_ptr(), n, units_ if per_unit else n, cf.data_ptr(), int(per_unit), _threads(n))
        return out

    return scale


def _suffix_shape(shape: tuple[int, ...], units: int) -> tuple[int, ...]:
    """The trailing dims of ``shape`` holding ``units`` elements (the shape of a flat per-unit
    array as a broadcastable tensor); () for a scalar."""
    if not units:
        return ()
    n = 1
    for d in range(len(shape) - 1, -1, -1):
        n *= shape[d]
        if n == units:
            return tuple(shape[d:])
    raise ValueError(f"{units} units do not fill trailing dims of {shape}")


def scale(x: Tensor, mask: Tensor, c: Tensor) -> Tensor:
    """``x * (mask * c).to(x.dtype)`` (``c`` already in x's dtype), one pass."""
    from .fast import unit_arrays

    shape = tuple(x.shape)
    arrays = unit_arrays(shape, c)
    if arrays is None:
        raise ValueError("scale: c does not broadcast to x as a per-unit value")
    (cf,), units = arrays
    return _scaler(units, x.dtype)(x, mask.contiguous(), cf)


def release(x: Tensor, draw, mask_shape, bits) -> tuple[Tensor, Tensor]:
    """Fused sample-and-scale forward of :func:`.fast.fast_release` (same contract)."""
    from .fast import _Release, masked_scale, sample_mask, unit_arrays

    shape = tuple(x.shape)
    c = draw.c if draw.c.dtype == x.dtype else draw.c.to(x.dtype)
    arrays = unit_arrays(shape, draw.p, c)
    if arrays is None:  # exotic broadcast: eager path
        mask = sample_mask(draw.p, mask_shape, bits, device=x.device)
        return masked_scale(x, mask, draw.c), mask
    (pf, cf), units = arrays
    if pf.dtype != torch.float32:
        pf = pf.float()
    ps = 1 if pf.dim() else 0
    cs = 1 if cf.dim() else 0
    kunits, (pk, ck) = _tiled(units, pf, cf)
    seed, seed2 = bits.seeds(2)
    fwd = getattr(_load(), f"qsd_fwd_{_SUFFIX[x.dtype]}")

    def compute(xd: Tensor) -> tuple[Tensor, Tensor]:
        xd = xd.contiguous()
        n = xd.numel()
        y = torch.empty_like(xd, memory_format=torch.contiguous_format)
        mask = torch.empty(shape, dtype=torch.bool)
        status = fwd(
            xd.data_ptr(), y.data_ptr(), mask.data_ptr(), n, kunits or n,
            pk.data_ptr(), ps, ck.data_ptr(), cs, seed, seed2, _threads(n),
        )
        if status:
            raise MemoryError("qsd_fwd: out of memory")
        return y, mask

    return _Release.apply(x, cf, compute, _scaler(units, x.dtype), _suffix_shape(shape, units if cs else 0))


def standard_gamma(shape: float, size, seed: int) -> Tensor:
    """``size`` Gamma(shape, 1) draws in float32 from the C sampler (Marsaglia-Tsang)."""
    out = torch.empty(tuple(size), dtype=torch.float32)
    _load().qsd_gamma(out.data_ptr(), out.numel(), float(shape), seed)
    return out


def draw(size, rate: float, gamma: float, coupled: bool, seeds) -> tuple[Tensor, Tensor]:
    """(p, y) or, ``coupled``, (p, c = y (gamma + r) / gamma) of :func:`.fast.draw_quanta_fast`."""
    k = 1.0 - rate
    p = torch.empty(tuple(size), dtype=torch.float32)
    c = torch.empty(tuple(size), dtype=torch.float32)
    factor = (gamma + rate) / gamma if coupled else 1.0
    _load().qsd_draw(p.data_ptr(), c.data_ptr(), p.numel(), gamma * k / rate, gamma, gamma * k, factor, *seeds)
    return p, c


def uniform24(seed: int, seed2: int, start: int, n: int) -> Tensor:
    """The 24-bit uniforms K_i the forward kernel compares with T (for tests)."""
    lib = _load()
    out = torch.empty(n, dtype=torch.int32)
    lib.qsd_uniform24(seed, seed2, start, n, out.data_ptr())
    return out
