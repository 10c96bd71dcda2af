"""Digits and MNIST data modules (MNIST on tiny IDX files the test writes)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from qsd_lightning.data import CorruptDataError, DataNotFoundError, DigitsDataModule, MNISTDataModule
from qsd_lightning.data.idx import read_idx, write_idx


def test_digits_split_is_deterministic_and_disjoint():
    a, b = DigitsDataModule(seed=3), DigitsDataModule(seed=3)
    a.setup(), b.setup()
    sizes = {k: len(v) for k, v in a.splits.items()}
    assert sum(sizes.values()) == 1797 and sizes["val"] == sizes["test"] == 359
    for split in ("train", "val", "test"):
        assert torch.equal(a.splits[split].tensors[0], b.splits[split].tensors[0])
    x, _ = next(iter(a.train_dataloader()))
    assert x.shape == (64, 64) and 0 <= x.min() and x.max() <= 1


def write_tiny_mnist(folder, n_train=120, n_test=40, gz=True):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n))


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
