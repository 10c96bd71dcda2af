"""CIFARDataModule on tiny data written in the real on-disk formats (offline, fast)."""

from __future__ import annotations

import io
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from qsd_lightning.data import CorruptDataError, DataNotFoundError
from qsd_lightning.data.cifar import (
    CIFAR10_CLASSES,
    CIFARDataModule,
    random_crop_flip,
    read_cifar,
)
from qsd_lightning.data import cifar

from .data_builders import tiny_arrays, write_cifar_pickles, write_image_folder


def make_pickles(root: Path, dataset: str = "cifar10", n_train: int = 40, n_test: int = 20):
    k = 10 if dataset == "cifar10" else 100
    train, test = tiny_arrays(n_train, k, 0), tiny_arrays(n_test, k, 1)
    write_cifar_pickles(root, dataset, train, test)
    return train, test


def tar_folder(folder: Path, archive: Path, arcname: str) -> Path:
    mode = "w:xz" if archive.name.endswith(".xz") else "w:gz"
    with tarfile.open(archive, mode) as tar:
        tar.add(folder, arcname=arcname)
    return archive


def test_pickle_batches_round_trip(tmp_path):
    train, test = make_pickles(tmp_path)
    names = sorted(p.name for p in (tmp_path / "cifar-10-batches-py").iterdir())
    assert names == ["batches.meta", *[f"data_batch_{i}" for i in range(1, 6)], "test_batch"]
    (x, y), (xt, yt), classes, source = read_cifar(tmp_path, "cifar10")
    np.testing.assert_array_equal(x, train[0])
    np.testing.assert_array_equal(y, train[1])
    np.testing.assert_array_equal(xt, test[0])
    assert classes == CIFAR10_CLASSES and source.startswith("pickle")
    # data_dir may also be the batches folder itself
    (x2, _), _, _, _ = read_cifar(tmp_path / "cifar-10-batches-py", "cifar10")
    np.testing.assert_array_equal(x2, train[0])


def test_cifar100_pickles_use_fine_labels(tmp_path):
    train, _ = make_pickles(tmp_path, "cifar100", n_train=120, n_test=10)
    (x, y), _, classes, _ = read_cifar(tmp_path, "cifar100")
    np.testing.assert_array_equal(y, train[1])
    assert len(classes) == 100 and y.max() == 99


def test_datamodule_split_normalise_deterministic(tmp_path):
    make_pickles(tmp_path)
    dms = []
    for _ in range(2):
        dm = CIFARDataModule(data_dir=str(tmp_path), val_size=8, batch_size=16, download=False, seed=3)
        dm.prepare_data()
        dm.setup("fit")
        dms.append(dm)
    a, b = dms
    assert [len(a.splits[s]) for s in ("train", "val", "test")] == [32, 8, 20]
    assert torch.equal(a.splits["val"].tensors[0], b.splits["val"].tensors[0])
    x, y = next(iter(a.val_dataloader()))
    assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32) and y.dtype == torch.int64
    raw = a.splits["val"].tensors[0][:8].float() / 255
    mean = torch.tensor(a.mean).view(1, 3, 1, 1)
    std = torch.tensor(a.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (raw - mean) / std)
    assert a.num_classes == 10


def test_train_size_is_a_fixed_subset_disjoint_from_validation(tmp_path):
    make_pickles(tmp_path)
    full = CIFARDataModule(data_dir=str(tmp_path), val_size=8, download=False, seed=3)
    full.setup("fit")
    subsets = []
    for _ in range(2):
        dm = CIFARDataModule(data_dir=str(tmp_path), val_size=8, train_size=10, download=False, seed=3)
        dm.setup("fit")
        subsets.append(dm)
    a, b = subsets
    assert [len(a.splits[s]) for s in ("train", "val", "test")] == [10, 8, 20]
    assert torch.equal(a.splits["train"].tensors[0], b.splits["train"].tensors[0])
    # the validation and test sets do not change; the subset comes from the same training split
    assert torch.equal(a.splits["val"].tensors[0], full.splits["val"].tensors[0])
    assert torch.equal(a.splits["train"].tensors[0], full.splits["train"].tensors[0][:10])


@pytest.mark.parametrize("train_size, match", [(0, "train_size must be >= 1"), (33, "more than the 32 training")])
def test_train_size_checked(tmp_path, train_size, match):
    make_pickles(tmp_path)
    with pytest.raises(ValueError, match=match):
        dm = CIFARDataModule(data_dir=str(tmp_path), val_size=8, train_size=train_size, download=False)
        dm.setup("fit")


def test_augment_train_only(tmp_path):
    make_pickles(tmp_path)
    dm = CIFARDataModule(data_dir=str(tmp_path), val_size=8, batch_size=32, augment=True, download=False)
    dm.setup("fit")
    torch.manual_seed(0)
    x_train, _ = next(iter(dm._loader("train", shuffle=False)))
    x_val, _ = next(iter(dm.val_dataloader()))
    raw_train = dm.splits["train"].tensors[0][:32]
    raw_val = dm.splits["val"].tensors[0][:8]
    norm = lambda r: (r.float() / 255 - torch.tensor(dm.mean).view(1, 3, 1, 1)) / torch.tensor(dm.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x_val, norm(raw_val))
    assert not torch.allclose(x_train, norm(raw_train))


def test_random_crop_flip_is_a_shifted_window():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32) + 1
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, padding=4, generator=g)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):
        windows = [padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(random_crop_flip(x, generator=g1), random_crop_flip(x, generator=g2))


def test_image_folder_and_archives_agree(tmp_path):
    train, test = tiny_arrays(30, 10, 0), tiny_arrays(10, 10, 1)
    folder = write_image_folder(tmp_path / "src" / "cifar10_jpeg", train, test, fmt="png")
    (x, y), (xt, yt), classes, source = read_cifar(tmp_path / "src", "cifar10")  # found one level down
    assert source.startswith("images") and classes == CIFAR10_CLASSES
    # sorted by class then file name: PNG is lossless, so the pixels come back exactly
    order = np.argsort(train[1], kind="stable")
    np.testing.assert_array_equal(x, train[0][order])
    np.testing.assert_array_equal(y, train[1][order])
    for name in ("subset.tar.gz", "subset.tar.xz"):
        archive_dir = tmp_path / name.replace(".", "_")
        archive_dir.mkdir()
        tar_folder(folder, archive_dir / name, "cifar10_jpeg")
        (xa, ya), (xta, yta), _, source = read_cifar(archive_dir, "cifar10")
        assert source.startswith("archive")
        np.testing.assert_array_equal(xa, x)
        np.testing.assert_array_equal(yta, yt)


def test_archive_of_pickle_batches(tmp_path):
    train, _ = make_pickles(tmp_path / "src")
    (tmp_path / "dl").mkdir()
    tar_folder(tmp_path / "src" / "cifar-10-batches-py", tmp_path / "dl" / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    (x, _), _, _, source = read_cifar(tmp_path / "dl", "cifar10")
    assert source.startswith("archive")
    np.testing.assert_array_equal(x, train[0])


def test_jpeg_folder_decodes_close(tmp_path):
    train, test = tiny_arrays(10, 10, 0), tiny_arrays(10, 10, 1)
    smooth = lambda a: np.repeat(np.repeat(a[:, :, ::8, ::8], 8, axis=2), 8, axis=3)  # JPEG-friendly
    train, test = (smooth(train[0]), train[1]), (smooth(test[0]), test[1])
    write_image_folder(tmp_path, train, test, fmt="jpg")
    (x, _), _, _, _ = read_cifar(tmp_path, "cifar10")
    assert np.abs(x.astype(int) - train[0].astype(int)).mean() < 12


def test_not_found_message(tmp_path):
    dm = CIFARDataModule(data_dir=str(tmp_path / "empty"), download=False)
    with pytest.raises(DataNotFoundError) as err:
        dm.prepare_data()
    msg = str(err.value)
    for part in (str((tmp_path / "empty").resolve()), "cifar-10-batches-py", "data_batch_1", "train/<class>",
                 ".tar.xz", "--data.download true", "--data.data_dir", "download is off"):
        assert part in msg, part
    with pytest.raises(DataNotFoundError):
        dm.setup("fit")


def test_download_failure_is_data_not_found(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(cifar, "download", offline)
    monkeypatch.setattr(cifar, "probe_urls", lambda urls: None)  # the server answers, the download fails
    dm = CIFARDataModule(data_dir=str(tmp_path), download=True)
    with pytest.raises(DataNotFoundError, match="download failed: network unreachable"):
        dm.prepare_data()
    # unreachable server: the probe stops it in seconds, torchvision is never asked
    monkeypatch.setattr(cifar, "probe_urls", lambda urls: "cannot reach www.cs.toronto.edu: refused")
    monkeypatch.setattr(cifar, "download", lambda *a, **k: pytest.fail("download attempted"))
    with pytest.raises(DataNotFoundError, match="download failed: cannot reach www.cs.toronto.edu"):
        dm.prepare_data()
    assert socket.getdefaulttimeout() is None  # no process-wide timeout is set


def _fake_download(archive_of):
    """A stand-in for ``network.download`` that writes ``archive_of(path)``."""

    def download(url, path, md5=None, timeout=None):
        assert url.endswith(Path(path).name) and len(md5) == 32
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        archive_of(Path(path))

    return download


def test_download_is_extracted_and_read_safely(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_cifar_pickles(src, "cifar10", tiny_arrays(50), tiny_arrays(10, seed=1))

    def archive_of(path):
        with tarfile.open(path, "w:gz") as tar:
            tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")

    monkeypatch.setattr(cifar, "probe_urls", lambda urls: None)
    monkeypatch.setattr(cifar, "download", _fake_download(archive_of))
    dm = CIFARDataModule(data_dir=str(tmp_path / "data"), val_size=10, download=True)
    dm.prepare_data()
    assert (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1").is_file()
    dm.setup("fit")
    assert dm.source.startswith("pickle") and len(dm.splits["train"]) == 40


def test_download_with_a_member_outside_the_folder_is_refused(tmp_path, monkeypatch):
    def archive_of(path):
        with tarfile.open(path, "w:gz") as tar:
            info = tarfile.TarInfo("../escaped.txt")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))

    monkeypatch.setattr(cifar, "probe_urls", lambda urls: None)
    monkeypatch.setattr(cifar, "download", _fake_download(archive_of))
    with pytest.raises(CorruptDataError, match="refused to extract"):
        CIFARDataModule(data_dir=str(tmp_path / "data"), download=True).prepare_data()
    assert not (tmp_path / "escaped.txt").exists()


def test_incomplete_batches_named(tmp_path):
    make_pickles(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match="missing data_batch_3"):
        read_cifar(tmp_path, "cifar10")


def test_truncated_pickle_is_corrupt(tmp_path):
    make_pickles(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CorruptDataError, match="data_batch_2"):
        read_cifar(tmp_path, "cifar10")


def test_pickle_with_foreign_objects_is_refused(tmp_path):
    import pickle

    make_pickles(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({"data": io.BytesIO(b"x")}, protocol=2))
    with pytest.raises(CorruptDataError, match="test_batch.*unexpected object"):
        read_cifar(tmp_path, "cifar10")


def test_broken_archive_is_corrupt(tmp_path):
    train, test = tiny_arrays(20, 10, 0), tiny_arrays(10, 10, 1)
    folder = write_image_folder(tmp_path / "src", train, test)
    archive = tar_folder(folder, tmp_path / "cifar10.tar.gz", "cifar10")
    (tmp_path / "broken").mkdir()
    truncated = tmp_path / "broken" / "cifar10.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(CorruptDataError, match="cifar10.tar.gz"):
        read_cifar(tmp_path / "broken", "cifar10")
    truncated.write_bytes(b"not an archive at all" * 10)
    with pytest.raises(CorruptDataError, match="cifar10.tar.gz"):
        read_cifar(tmp_path / "broken", "cifar10")


def test_broken_image_is_corrupt(tmp_path):
    train, test = tiny_arrays(20, 10, 0), tiny_arrays(10, 10, 1)
    write_image_folder(tmp_path, train, test)
    bad = tmp_path / "train" / "cat" / "0000.png"
    bad.write_bytes(bad.read_bytes()[:50])
    with pytest.raises(CorruptDataError, match="0000.png"):
        read_cifar(tmp_path, "cifar10")


def test_wrong_class_count(tmp_path):
    train, test = tiny_arrays(10, 5, 0), tiny_arrays(5, 5, 1)
    write_image_folder(tmp_path, train, test)
    with pytest.raises(CorruptDataError, match="5 class folders"):
        read_cifar(tmp_path, "cifar10")
