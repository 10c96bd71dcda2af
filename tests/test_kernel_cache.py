"""The compiled-kernel cache loads only what this user built.

A library planted in the cache (the right name, a constructor that writes a marker file) must
never be loaded: not from a directory others can write or another user owns, not when its
owner is someone else, not when its bytes differ from what was built. The normal path still
builds once, caches, and reuses. Each scenario runs in a fresh Python process
(``QSD_KERNEL_CACHE`` pointing into ``tmp_path``): the kernel is loaded once per process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qsd_lightning.regularisers import _ckernel

CC = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
pytestmark = [
    pytest.mark.skipif(CC is None, reason="no C compiler"),
    pytest.mark.skipif(sys.platform == "win32", reason="the compiled kernel is off on Windows"),
]
OTHER_UID = 65534  # nobody

PLANTED = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *path = getenv("QSD_TEST_MARKER");
    FILE *f = path ? fopen(path, "w") : NULL;
    if (f) { fputs("planted code ran\n", f); fclose(f); }
}
"""

CHILD = textwrap.dedent(
    """
    import json, warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from qsd_lightning.regularisers import _ckernel
        ok = _ckernel.available()
        if ok:
            _ckernel.uniform24(1, 2, 0, 8)  # the library loaded is the kernel
    messages = [str(w.message) for w in caught if "qsd_lightning" in str(w.message)]
    print("RESULT " + json.dumps({"available": ok, "warnings": messages}))
    """
)


def run_child(cache: Path, tmp: Path) -> dict:
    """Loads the kernel in a new process; returns availability, warnings and whether the
    planted constructor ran."""
    marker = tmp / "marker"
    marker.unlink(missing_ok=True)
    private_tmp = tmp / "private-tmp"
    private_tmp.mkdir(mode=0o700, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "QSD_CKERNEL"}
    env.update(QSD_KERNEL_CACHE=str(cache), QSD_TEST_MARKER=str(marker), TMPDIR=str(private_tmp), PYTHONWARNINGS="default")
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    result["planted_ran"] = marker.exists()
    result["tmp_left"] = sorted(p.name for p in private_tmp.iterdir())
    return result


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def planted_lib(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("planted")
    (d / "planted.c").write_text(PLANTED)
    proc = subprocess.run([CC, "-shared", "-fPIC", "planted.c", "-o", "planted.so"], cwd=d, capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot compile a shared library: {proc.stderr[-300:]}")
    return d / "planted.so"


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> tuple[Path, dict]:
    """A cache where a first process built the kernel (copied by the scenarios)."""
    tmp = tmp_path_factory.mktemp("seed")
    result = run_child(tmp / "cache", tmp)
    if not result["available"]:
        pytest.skip(f"the kernel does not build here: {result['warnings']}")
    return tmp / "cache", result


def copy_cache(seed: tuple[Path, dict], dest: Path) -> Path:
    shutil.copytree(seed[0], dest, symlinks=True)  # keeps the modes; the owner is this user
    return dest


def plant(cache: Path, planted: Path, *, record: bool) -> None:
    """Overwrites every cached library with the planted one; ``record``: also rewrites the
    hash records to match it (what someone who can write the directory can do)."""
    libraries = list(cache.glob("qsd_kernels_*.so"))
    assert libraries
    for lib in libraries:
        shutil.copyfile(planted, lib)
    if record:  # and the library under the name the record gives it
        digest = sha256(planted)
        for rec in cache.glob("qsd_kernels_*.sha256"):
            rec.write_text(digest + "\n")
            shutil.copyfile(planted, cache / f"{rec.stem}_{digest[:16]}.so")


def test_normal_path_builds_once_then_reuses(seed, tmp_path):
    cache, first = seed
    assert first["available"] and not first["warnings"] and not first["planted_ran"]
    assert (cache.stat().st_mode & 0o777) == 0o700
    records = list(cache.glob("qsd_kernels_*.sha256"))
    libraries = list(cache.glob("qsd_kernels_*.so"))
    assert len(records) == 1 and len(libraries) == 1
    assert records[0].read_text().strip() == sha256(libraries[0])
    assert all(not (p.stat().st_mode & 0o022) for p in records + libraries)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.iterdir()}

    second = run_child(cache, tmp_path)
    assert second["available"] and not second["warnings"] and not second["planted_ran"]
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.iterdir()}
    assert after == before  # loaded as cached: nothing compiled, replaced or added


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_cache_writable_by_others_is_not_used(seed, planted_lib, tmp_path, mode):
    cache = copy_cache(seed, tmp_path / "cache")
    plant(cache, planted_lib, record=True)
    cache.chmod(mode)
    before = sorted(p.name for p in cache.iterdir())
    result = run_child(cache, tmp_path)
    assert not result["planted_ran"]
    assert result["available"]  # compiled privately instead
    assert len(result["warnings"]) == 1, result
    assert "writable by group/others" in result["warnings"][0]
    assert "private temporary directory" in result["warnings"][0]
    assert sorted(p.name for p in cache.iterdir()) == before  # the unsafe cache is left alone
    assert result["tmp_left"] == []  # the private build directory is removed


def test_cache_in_a_parent_writable_by_others_is_not_used(seed, planted_lib, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    cache = copy_cache(seed, shared / "cache")
    plant(cache, planted_lib, record=True)
    shared.chmod(0o777)  # no sticky bit: anyone may rename the cache and put theirs instead
    result = run_child(cache, tmp_path)
    assert not result["planted_ran"] and result["available"]
    assert len(result["warnings"]) == 1 and "its parent" in result["warnings"][0], result


def test_library_differing_from_what_was_built_is_rebuilt(seed, planted_lib, tmp_path):
    cache = copy_cache(seed, tmp_path / "cache")
    plant(cache, planted_lib, record=False)  # same owner and mode, other bytes
    result = run_child(cache, tmp_path)
    assert not result["planted_ran"] and result["available"]
    assert len(result["warnings"]) == 1 and "does not match the SHA-256" in result["warnings"][0], result
    (record,) = cache.glob("qsd_kernels_*.sha256")
    digest = record.read_text().strip()
    (library,) = [p for p in cache.glob("qsd_kernels_*.so") if sha256(p) == digest]
    assert sha256(library) != sha256(planted_lib)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown to another user")
@pytest.mark.parametrize("what", ["library", "record", "directory"])
def test_files_or_directory_of_another_user_are_not_loaded(seed, planted_lib, tmp_path, what):
    cache = copy_cache(seed, tmp_path / "cache")
    plant(cache, planted_lib, record=True)
    if what == "library":
        for lib in cache.glob("qsd_kernels_*.so"):
            os.chown(lib, OTHER_UID, OTHER_UID)
    elif what == "record":
        for rec in cache.glob("qsd_kernels_*.sha256"):
            os.chown(rec, OTHER_UID, OTHER_UID)
    else:
        os.chown(cache, OTHER_UID, OTHER_UID)
    result = run_child(cache, tmp_path)
    assert not result["planted_ran"] and result["available"]
    assert len(result["warnings"]) == 1 and f"owned by uid {OTHER_UID}" in result["warnings"][0], result


def test_cache_key_tracks_source_cpu_and_python(monkeypatch):
    key = _ckernel._cache_key()
    assert key == _ckernel._cache_key()
    assert key == _ckernel._cache_key(_ckernel.SOURCE_PATH.read_bytes())  # the shipped .c file
    with monkeypatch.context() as m:
        m.setattr(_ckernel, "source", lambda: _ckernel.SOURCE_PATH.read_bytes() + b"\n/* changed */\n")
        assert _ckernel._cache_key() != key
    with monkeypatch.context() as m:
        m.setattr(_ckernel, "_FLAGS", _ckernel._FLAGS + ["-O2"])
        assert _ckernel._cache_key() != key
    with monkeypatch.context() as m:
        m.setattr(_ckernel, "_cpu_signature", lambda: "another cpu")
        assert _ckernel._cache_key() != key
    with monkeypatch.context() as m:
        m.setattr(sys, "version", sys.version + " (another build)")
        assert _ckernel._cache_key() != key


def test_source_is_a_real_file_shipped_as_package_data():
    assert _ckernel.SOURCE_PATH.name == "qsd_kernels.c" and _ckernel.SOURCE_PATH.is_file()
    assert b"qsd_fwd_##SUF" in _ckernel.source()
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert "qsd_kernels.c" in pyproject  # [tool.setuptools.package-data]


def test_missing_compiler_warns_once_and_is_recorded(tmp_path):
    """No compiler: one warning naming the reason, the eager backend, and describe() says so."""
    code = textwrap.dedent(
        """
        import json, warnings
        import torch
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from qsd_lightning.regularisers import QSD, Dropout, backend
            x = torch.randn(64, 32, requires_grad=True)
            for _ in range(3):
                QSD(rate=0.5)(x).sum().backward()
                Dropout(rate=0.5)(x).sum().backward()
            record = backend.describe()
        messages = [str(w.message) for w in caught if "qsd_lightning" in str(w.message)]
        print("RESULT " + json.dumps({"warnings": messages, "record": record}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "QSD_CKERNEL"}
    env.update(QSD_KERNEL_CACHE=str(tmp_path / "cache"), CC=str(tmp_path / "no-such-cc"), PYTHONWARNINGS="default")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert len(result["warnings"]) == 1, result
    assert "fused CPU kernel unavailable" in result["warnings"][0] and "no-such-cc" in result["warnings"][0]
    record = result["record"]
    assert record["cpu"] == "torch" and record["compiler"] is None
    assert "no-such-cc" in record["cpu_fallback"]
