"""Digits and MNIST data modules (MNIST on tiny IDX files the test writes)."""

from __future__ import annotations

import gzip
import io
import socket
import tarfile

import numpy as np
import pytest
import torch

from qsd_lightning.data import CorruptDataError, DataNotFoundError, DigitsDataModule, MNISTDataModule
from qsd_lightning.data.archive import archive_errors, extract, find_archives, tar_files
from qsd_lightning.data.idx import read_idx
from qsd_lightning.data.network import download, hf_offline, host_of, probe, probe_urls, reachable
from qsd_lightning.data.text import Vocabulary

from .data_builders import write_idx, write_tiny_mnist


def test_digits_split_is_deterministic_and_disjoint():
    a, b = DigitsDataModule(seed=3), DigitsDataModule(seed=3)
    a.setup(), b.setup()
    sizes = {k: len(v) for k, v in a.splits.items()}
    assert sum(sizes.values()) == 1797 and sizes["val"] == sizes["test"] == 359
    for split in ("train", "val", "test"):
        assert torch.equal(a.splits[split].tensors[0], b.splits[split].tensors[0])
    x, _ = next(iter(a.train_dataloader()))
    assert x.shape == (64, 64) and 0 <= x.min() and x.max() <= 1


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, arr)
    assert np.array_equal(read_idx(path), arr)


def test_mnist_from_idx_files(tmp_path):
    write_tiny_mnist(tmp_path / "MNIST" / "raw", gz=False)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=20, download=False, batch_size=8)
    dm.prepare_data()
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [100, 20, 40]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 784) and y.dtype == torch.long


def test_mnist_missing_offline_names_directory_and_files(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path / "empty"), download=False)
    with pytest.raises(DataNotFoundError) as info:
        dm.prepare_data()
    msg = str(info.value)
    assert str((tmp_path / "empty").resolve()) in msg and "train-images-idx3-ubyte" in msg and "--data.data_dir" in msg


def test_mnist_download_offline_fails_fast_without_a_global_timeout(tmp_path, monkeypatch):
    from qsd_lightning.data import mnist

    monkeypatch.setattr(mnist, "probe_urls", lambda urls: "cannot reach ossci-datasets.s3.amazonaws.com: refused")
    monkeypatch.setattr(mnist, "download", lambda *a, **k: pytest.fail("download attempted"))
    with pytest.raises(DataNotFoundError, match="download failed: cannot reach ossci-datasets") as info:
        MNISTDataModule(data_dir=str(tmp_path / "empty"), download=True).prepare_data()
    assert str((tmp_path / "empty").resolve()) in str(info.value)
    assert socket.getdefaulttimeout() is None


def test_network_probe_is_bounded_and_names_the_host():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    try:
        assert probe("127.0.0.1", port, timeout=2) is None and reachable("127.0.0.1", port, timeout=2)
    finally:
        server.close()
    why = probe("127.0.0.1", port, timeout=2)  # closed: refused at once
    assert why is not None and why.startswith("cannot reach 127.0.0.1:")
    assert probe_urls(["http://127.0.0.1:%d/x" % port, "https://127.0.0.1:%d/" % port], timeout=2).startswith("cannot reach")
    assert host_of("https://www.cs.toronto.edu/~kriz/c.tar.gz") == ("www.cs.toronto.edu", 443)
    assert host_of("http://yann.lecun.com/exdb/mnist/") == ("yann.lecun.com", 80)
    assert socket.getdefaulttimeout() is None


class _Server:
    """A local HTTP server: ``files`` by path; ``/stall`` sends its headers and part of the body,
    then nothing (a server that stops answering mid-transfer)."""

    def __init__(self, files: dict[str, bytes]):
        import http.server
        import threading

        outer = self
        self.release = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/stall":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"x" * 10)
                    self.wfile.flush()
                    outer.release.wait(30)
                    return
                body = files.get(self.path.rsplit("/", 1)[-1])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_is_checked_bounded_and_never_partial(tmp_path):
    import hashlib
    import time

    body = b"real bytes" * 1000
    server = _Server({"f.bin": body})
    try:
        download(server.url + "f.bin", tmp_path / "f.bin", hashlib.md5(body).hexdigest())
        assert (tmp_path / "f.bin").read_bytes() == body
        with pytest.raises(OSError, match="checksum mismatch"):
            download(server.url + "f.bin", tmp_path / "g.bin", "0" * 32)
        with pytest.raises(OSError):
            download(server.url + "missing.bin", tmp_path / "h.bin")
        start = time.monotonic()
        with pytest.raises(OSError):  # a stalled transfer ends after the read timeout
            download(server.url + "stall", tmp_path / "s.bin", timeout=1)
        assert time.monotonic() - start < 10
    finally:
        server.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # nothing partial left
    assert socket.getdefaulttimeout() is None


def test_mnist_download_through_a_mirror(tmp_path, monkeypatch):
    """The real download path: torchvision's file list and checksums, our bounded download, a
    dead first mirror, then files our reader accepts."""
    import hashlib

    from qsd_lightning.data import mnist

    src = tmp_path / "src"
    write_tiny_mnist(src)
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    resources = [(name, hashlib.md5(data).hexdigest()) for name, data in sorted(files.items())]
    server = _Server(files)
    try:
        dead = socket.create_server(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}/"
        dead.close()

        class Mirrors:
            mirrors = [dead_url, server.url]

        Mirrors.resources = resources
        monkeypatch.setattr(mnist, "MNIST", Mirrors)
        monkeypatch.setattr(mnist, "probe_urls", lambda urls: None)
        dm = MNISTDataModule(data_dir=str(tmp_path / "data"), download=True, val_size=5)
        dm.prepare_data()
        dm.setup("fit")
        assert len(dm.splits["train"]) > 0
    finally:
        server.close()


def test_hf_offline_switches(monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert hf_offline() is None
    monkeypatch.setenv("HF_HUB_OFFLINE", " On ")
    assert hf_offline() == "HF_HUB_OFFLINE= On "


def test_archive_helper_streams_files_and_names_a_damaged_archive(tmp_path):
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("d/ok.txt", b"hello"), ("../outside.txt", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("d/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)  # not a regular file: skipped
    assert find_archives(tmp_path) == [path] and find_archives(tmp_path / "none") == []
    with archive_errors(path):
        read = {member.name: f.read() for member, f in tar_files(path)}
    assert read == {"d/ok.txt": b"hello", "../outside.txt": b"x"}
    assert not (tmp_path.parent / "outside.txt").exists()  # nothing is extracted
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(CorruptDataError, match=f"cannot read archive {path}"):
        with archive_errors(path):
            [f.read() for _, f in tar_files(path)]
    with pytest.raises(DataNotFoundError):  # the caller's own errors pass unchanged
        with archive_errors(path):
            raise DataNotFoundError("gone")


@pytest.mark.parametrize("filter_available", [True, False])
def test_extract_refuses_members_outside_the_folder(tmp_path, monkeypatch, filter_available):
    if not filter_available:  # Python < 3.10.12 / 3.11.4: the helper checks members itself
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    good, bad = tmp_path / "good.tar.gz", tmp_path / "bad.tar.gz"
    for path, names in ((good, ["f/a.txt"]), (bad, ["f/a.txt", "../escaped.txt"])):
        with tarfile.open(path, "w:gz") as tar:
            for name in names:
                info = tarfile.TarInfo(name)
                info.size = 2
                tar.addfile(info, io.BytesIO(b"ok"))
    extract(good, tmp_path / "out")
    assert (tmp_path / "out" / "f" / "a.txt").read_bytes() == b"ok"
    with pytest.raises(CorruptDataError, match=f"{bad}: refused to extract"):
        extract(bad, tmp_path / "out2")
    assert not (tmp_path / "escaped.txt").exists()


def test_one_vocabulary_class_with_or_without_specials(tmp_path):
    words = Vocabulary.build([["b", "a", "b"]], specials=(), always=("<eos>",))
    assert words.tokens == ["b", "a", "<eos>"] and words.unk_index is None and words == ["b", "a", "<eos>"]
    with pytest.raises(CorruptDataError, match="valid.txt: word 'z'"):
        words.encode(["a", "z"], "valid.txt")
    words.save(tmp_path / "w.json")
    assert Vocabulary.load(tmp_path / "w.json").specials == ()
    assert words.text() == "b\na\n<eos>\n"
    padded = Vocabulary.build([["b", "a", "b"]], max_size=3)
    assert padded.tokens == ["<pad>", "<unk>", "b"] and padded.encode(["a", "b"]) == [1, 2]
    with pytest.raises(ValueError, match="max_vocab must be >= 3"):
        Vocabulary.build([["a"]], max_size=2)


def test_mnist_truncated_file_is_named(tmp_path):
    write_tiny_mnist(tmp_path)
    target = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(target.read_bytes())
    target.write_bytes(gzip.compress(raw[:-100]))
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=20, download=False)
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte.gz.*truncated"):
        dm.setup()
    target.write_bytes(b"not a gzip file at all")
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte.gz"):
        dm.setup()


def test_mnist_config_trains_on_tiny_files(run_cli, tmp_path):
    from .conftest import CONFIGS

    write_tiny_mnist(tmp_path / "mnist")
    cli = run_cli(
        "fit", "--config", str(CONFIGS / "mlp_mnist.yaml"), "--trainer.fast_dev_run=true", "--trainer.logger=false",
        f"--data.data_dir={tmp_path / 'mnist'}", "--data.val_size=20", "--data.download=false",
    )
    assert cli.trainer.state.finished
