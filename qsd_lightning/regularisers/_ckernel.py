"""Compiled CPU kernels of the fast release path (float32 / float64, elementwise masks).

The C source is ``qsd_kernels.c`` next to this module (package data), read when the kernel is
built and compiled on first use with the system C compiler (``$CC``, else ``cc``) into
a per-user cache (``$QSD_KERNEL_CACHE`` or ``~/.cache/qsd_lightning``, created mode 0o700)
and loaded with ctypes; no build step at install time. Only a library this user built is
loaded: a cache directory that is not the user's own, or that others can write, is not used
(a warning; the kernel is compiled in a private temporary directory), and a cached library
is loaded only if it is the user's, writable by no one else, and has the SHA-256 recorded
when it was built (else a warning, and it is rebuilt). Where no compiler works (or with
``QSD_CKERNEL=0``) the dispatcher (:mod:`.fast`) uses the eager torch backend
(:mod:`._eager`), with the same results bit for bit (same streams, :mod:`._stream`); a
compiler that is missing or fails is named in one :class:`._env.BackendWarning` per process
and in :func:`.backend.describe`.

* ``qsd_fwd``: one pass that draws the mask and scales: for element i with unit j = i mod U,
  K_i < T_j decides release (T_j = ceil(p_j 2^24), as :func:`._layout.thresholds`) and
  y_i = x_i * (m_i ? c_j : 0) is written (with the mask byte m_i when asked). The 16 top bits
  of K_i come from a counter-based SplitMix64 stream (four per 64-bit word), its 8 low bits
  only on a tie (2^-16), from a second stream; seeds come from torch's generator, so results
  do not depend on the number of threads (OpenMP over chunks of 64Ki elements). Backward is
  the same call on the gradient without the mask: the mask is drawn again from the seeds,
  never kept (:class:`._layout.Release`).
* ``qsd_scale``: out_i = g_i * (m_i ? c_j : 0): scaling by a mask the caller gives.
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

from ._env import flags, warn_fallback
from ._layout import Release, unit_arrays

__all__ = ["available", "usable", "usable_release", "scale", "release", "thresholds", "uniform24",
           "failure", "compiler", "source"]

SOURCE_PATH = Path(__file__).with_name("qsd_kernels.c")
_FLAGS = ["-O3", "-std=c11", "-fPIC", "-shared", "-fno-math-errno", "-ffp-contract=off"]
_EXTRA = (["-march=native", "-fopenmp"], ["-march=native"], ["-fopenmp"], [])


_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_CTYPE = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_failure: str | None = None  # why the kernel is unavailable (None: loaded, or not tried)
_compiler_id: str | None = None
ENABLED = flags().ckernel


def source() -> bytes:
    """The kernel's C source (``qsd_kernels.c``, shipped with the package)."""
    return SOURCE_PATH.read_bytes()


def _find_compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _compiler_version(cc: str) -> str:
    """``cc`` and the first line of ``cc --version`` (once per process)."""
    global _compiler_id
    if _compiler_id is None:
        try:
            proc = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
            line = (proc.stdout or proc.stderr).strip().splitlines()[0] if proc.returncode == 0 else "version unknown"
        except (OSError, subprocess.SubprocessError, IndexError):
            line = "version unknown"
        _compiler_id = f"{cc}: {line}"
    return _compiler_id


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


def _cache_key(src: bytes | None = None) -> str:
    """Names the kernel: changes with the C source (its SHA-256), the compiler flags, the CPU
    (model and flags) and the Python."""
    src = source() if src is None else src
    text = hashlib.sha256(src).hexdigest() + " ".join(_FLAGS) + repr(_EXTRA) + _cpu_signature() + sys.version
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _compile(workdir: Path, src: bytes) -> Path:
    """Compiles ``src`` in ``workdir`` (a private directory); returns the library's path.
    Relative names, so the same compiler builds the same bytes in any directory."""
    cc = _find_compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    (workdir / "qsd_kernels.c").write_bytes(src)  # the very bytes the cache key hashed
    base = [cc, *_FLAGS, "qsd_kernels.c", "-lm", "-o", "qsd_kernels.so"]
    errors = []
    for extra in _EXTRA:
        try:
            proc = subprocess.run(base + extra, cwd=workdir, capture_output=True, text=True)
        except OSError as err:
            raise RuntimeError(f"cannot run the C compiler {cc} ({err.strerror or err})") from None
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


def _build(cache: Path, key: str, src: bytes) -> ctypes.CDLL:
    """Compiles the kernel into ``cache`` (safe), records its SHA-256, and loads it verified.
    The library's name carries its hash and the record is replaced atomically, so processes
    building at once never pair a record with another build's library."""
    workdir = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        built = _compile(workdir, src)
        digest = hashlib.sha256(built.read_bytes()).hexdigest()
        library = _library_path(cache, key, digest)
        os.replace(built, library)
        _write_atomic(_record_path(cache, key), digest + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return _dlopen_verified(library, digest)


def _build_private(key: str, src: bytes) -> ctypes.CDLL:
    """Compiles and loads the kernel in a fresh private temporary directory, then removes it."""
    tmp = Path(os.path.realpath(tempfile.mkdtemp(prefix="qsd_kernels_")))
    try:
        problem = _dir_problem(tmp)
        if problem is not None:
            raise RuntimeError(f"no private directory to compile in ({problem})")
        return _build(tmp, key, src)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open_library() -> ctypes.CDLL:
    src = source()  # read once: hashed into the key and compiled
    key = _cache_key(src)
    cache, note = _cache_dir()
    if cache is None:
        _warn(f"{note}; compiling the kernel in a private temporary directory instead "
              "(set QSD_KERNEL_CACHE to a directory only you can write)")
        return _build_private(key, src)
    try:
        lib = _load_cached(cache, key)
    except _Untrusted as err:
        _warn(f"not loading the cached kernel: {err}; rebuilding it")
        lib = None
    return lib if lib is not None else _build(cache, key, src)


def _load() -> ctypes.CDLL | None:
    global _lib, _tried, _failure
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
            lib.qsd_thresholds.argtypes = [ptr, i64, ptr]
            lib.qsd_thresholds.restype = None
            lib.qsd_draw.argtypes = [ptr, ptr, i64, ctypes.c_double, ctypes.c_double, ctypes.c_float, ctypes.c_float, u64, u64,
                                     cint]
            lib.qsd_draw.restype = None
            lib.qsd_gamma.argtypes = [ptr, i64, ctypes.c_double, u64]
            lib.qsd_gamma.restype = None
            lib.qsd_uniform24.argtypes = [u64, u64, i64, i64, ptr]
            lib.qsd_uniform24.restype = None
            _lib = lib
        except Exception as err:  # no compiler, no private directory, ...: eager fallback
            _failure = "not built on Windows" if str(err) == "disabled" else str(err)
            if str(err) != "disabled":
                warn_fallback("fused CPU kernel", _failure, "the eager torch backend (same results, slower)")
            _lib = None
        _tried = True
        return _lib


def available() -> bool:
    """Whether the compiled kernel is enabled and loaded (compiling it on first call)."""
    return ENABLED and _load() is not None


def failure() -> str | None:
    """Why the kernel could not be loaded (None if it was, or was never tried)."""
    return _failure


def compiler() -> str | None:
    """The C compiler the kernel is built with and its version (None without one)."""
    cc = _find_compiler()
    return _compiler_version(cc) if cc else None


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


def thresholds(p: Tensor) -> Tensor:
    """:func:`._layout.thresholds` of a CPU tensor in one C call: T = ceil(p 2^24), int32."""
    pf = p.float().contiguous()
    thr = torch.empty(pf.shape, dtype=torch.int32)
    _load().qsd_thresholds(pf.data_ptr(), pf.numel(), thr.data_ptr())
    return thr


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


def scale(x: Tensor, mask: Tensor, c: Tensor) -> Tensor:
    """``x * (mask * c).to(x.dtype)`` (``c`` already in x's dtype), one pass."""
    shape = tuple(x.shape)
    arrays = unit_arrays(shape, c)
    if arrays is None:
        raise ValueError("scale: c does not broadcast to x as a per-unit value")
    (cf,), units = arrays
    return _scaler(units, x.dtype)(x, mask.contiguous(), cf)


def release(x: Tensor, draw, mask_shape, bits, want_mask: bool = True) -> tuple[Tensor, Tensor | None] | None:
    """Fused sample-and-scale forward of :func:`.fast.fast_release` (same contract; the mask
    is returned only if ``want_mask``); None (nothing drawn) for a layout it does not handle.
    Keeps c and T per unit for backward, which draws the mask again (``qsd_fwd`` on the
    gradient, from the same seeds)."""
    shape = tuple(x.shape)
    c = draw.c if draw.c.dtype == x.dtype else draw.c.to(x.dtype)
    arrays = unit_arrays(shape, draw.p, c)
    if arrays is None:  # exotic broadcast: the dispatcher uses the eager backend
        return None
    (pf, cf), units = arrays
    thr = thresholds(pf)
    seed, seed2 = bits.seeds(2)
    fwd = getattr(_load(), f"qsd_fwd_{_SUFFIX[x.dtype]}")

    def apply(t: Tensor, cf: Tensor, thr: Tensor, want: bool) -> tuple[Tensor, Tensor | None]:
        kunits, (tk, ck) = _tiled(units, thr, cf)
        t = t.contiguous()
        n = t.numel()
        out = torch.empty_like(t, memory_format=torch.contiguous_format)
        mask = torch.empty(shape, dtype=torch.bool) if want else None
        status = fwd(
            t.data_ptr(), out.data_ptr(), mask.data_ptr() if want else None, n, kunits or n,
            tk.data_ptr(), int(tk.dim() > 0), ck.data_ptr(), int(ck.dim() > 0), seed, seed2, _threads(n),
        )
        if status:
            raise MemoryError("qsd_fwd: out of memory")
        return out, mask

    holder: list | None = [] if want_mask else None
    y = Release.apply(x, cf, thr, apply, holder)
    return y, (holder[0] if holder else None)


def standard_gamma(shape: float, size, seed: int) -> Tensor:
    """``size`` Gamma(shape, 1) draws in float32 from the C sampler (Marsaglia-Tsang)."""
    out = torch.empty(tuple(size), dtype=torch.float32)
    _load().qsd_gamma(out.data_ptr(), out.numel(), float(shape), seed)
    return out


def draw(size, rate: float, gamma: float, coupled: bool, seeds) -> tuple[Tensor, Tensor]:
    """(p, y) or, ``coupled``, (p, c = y (gamma + r) / gamma) of :func:`.fast.draw_quanta_fast`
    (:func:`._stream.draw` computes the same in torch ops)."""
    k = 1.0 - rate
    p = torch.empty(tuple(size), dtype=torch.float32)
    c = torch.empty(tuple(size), dtype=torch.float32)
    factor = (gamma + rate) / gamma if coupled else 1.0
    _load().qsd_draw(p.data_ptr(), c.data_ptr(), p.numel(), gamma * k / rate, gamma, gamma * k, factor, *seeds,
                     torch.get_num_threads())
    return p, c


def uniform24(seed: int, seed2: int, start: int, n: int) -> Tensor:
    """The 24-bit uniforms K_i = top16 2^8 + low8 the forward kernel compares with T (for tests)."""
    lib = _load()
    out = torch.empty(n, dtype=torch.int32)
    lib.qsd_uniform24(seed, seed2, start, n, out.data_ptr())
    return out
