"""``MNISTDataModule(train_size=N)``: a fixed subset of the training images (the limited-data
regime of docs/results.md), nested across sizes, the validation split untouched."""

from __future__ import annotations

import pytest
import torch

from qsd_lightning.data import MNISTDataModule
from qsd_lightning.errors import ConfigError
from tests.data_builders import write_tiny_mnist


def _splits(folder, **kwargs):
    dm = MNISTDataModule(data_dir=str(folder), val_size=20, download=False, **kwargs)
    dm.setup("fit")
    return {name: ds.tensors for name, ds in dm.splits.items()}


def test_train_size_takes_a_nested_subset_and_keeps_validation(tmp_path):
    write_tiny_mnist(tmp_path, n_train=120, n_test=10)
    full, small, smaller = _splits(tmp_path), _splits(tmp_path, train_size=50), _splits(tmp_path, train_size=30)
    assert len(full["train"][1]) == 100 and len(small["train"][1]) == 50 and len(smaller["train"][1]) == 30
    assert torch.equal(small["train"][0][:30], smaller["train"][0])  # 30 are the first 30 of the 50
    assert torch.equal(full["train"][0][:50], small["train"][0])
    for split in ("val", "test"):
        assert torch.equal(full[split][0], small[split][0]) and torch.equal(full[split][1], small[split][1])


def test_train_size_larger_than_the_split_is_one_line(tmp_path):
    write_tiny_mnist(tmp_path, n_train=120, n_test=10)
    with pytest.raises(ConfigError, match=r"--data.train_size 101: only 100 training images are left"):
        _splits(tmp_path, train_size=101)
    with pytest.raises(ConfigError, match="train_size"):
        MNISTDataModule(data_dir=str(tmp_path), train_size=0)
