"""ConvNet / WideResNet, their LightningModules and the CIFAR configs (CPU, offline, tiny data)."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
from torch import nn

from .data_builders import tiny_arrays, write_cifar_pickles, write_image_folder
from qsd_lightning.models.cnn import ConvNet, WideResNet
from qsd_lightning.regularisers import QSD, Dropout, NoRegulariser, Regulariser
from qsd_lightning.tasks.vision import CNNClassifier, WRNClassifier

from .conftest import CONFIGS


@pytest.fixture
def cifar10_pickles(tmp_path):
    root = tmp_path / "cifar10"
    write_cifar_pickles(root, "cifar10", tiny_arrays(40, 10, 0), tiny_arrays(10, 10, 1))
    return root


@pytest.fixture
def cifar100_pickles(tmp_path):
    root = tmp_path / "cifar100"
    write_cifar_pickles(root, "cifar100", tiny_arrays(40, 100, 0), tiny_arrays(10, 100, 1))
    return root


@pytest.fixture
def cifar10_archive(tmp_path):
    folder = write_image_folder(tmp_path / "src", tiny_arrays(30, 10, 0), tiny_arrays(10, 10, 1), fmt="jpg")
    root = tmp_path / "archive"
    root.mkdir()
    with tarfile.open(root / "cifar10_jpeg_subset.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar10_jpeg")
    return root


TINY_DATA = ["--data.val_size=8", "--data.batch_size=8", "--data.download=false"]


def _sites(net: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in net.named_modules() if isinstance(m, Regulariser)}


# ----------------------------------------------------------------------------- models

def test_convnet_placement_and_shapes():
    net = ConvNet(
        channels=(8, 16, 32), hidden_sizes=(20,), regulariser=lambda r: Dropout(r), conv_rate=0.2, classifier_rate=0.5
    )
    assert net(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    sites = _sites(net)
    assert sorted(sites) == ["classifier.reg", "classifier.reg1", "features.1.reg", "features.2.reg"]
    assert sites["features.1.reg"].rate == 0.2 and sites["classifier.reg1"].rate == 0.5
    assert isinstance(net.features[0].reg, nn.Identity)  # no mask on raw pixels
    block = list(dict(net.features[1].named_children()))
    assert block == ["reg", "conv1", "norm1", "act1", "pool"]  # reg -> weights -> norm -> activation
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 4
    none = ConvNet(channels=(8, 16), regulariser=lambda r: Dropout(r))  # rate 0 everywhere
    assert not _sites(none)


def test_wrn_depth_and_size():
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=27)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=4)
    with torch.device("meta"):
        wrn = WideResNet(depth=28, widen_factor=10)
    assert abs(sum(p.numel() for p in wrn.parameters()) / 1e6 - 36.5) < 0.1
    assert len(wrn.groups[0]) == 4


def test_wrn_regulariser_between_the_convs():
    wrn = WideResNet(depth=10, widen_factor=1, regulariser=lambda r: Dropout(r), block_rate=0.3)
    assert wrn(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    sites = _sites(wrn)
    assert len(sites) == 3 and all(name.endswith(".reg") for name in sites)
    names = list(dict(wrn.groups[0][0].named_children()))
    assert names.index("conv1") < names.index("reg") < names.index("conv2")
    relus = [m for m in wrn.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 2 * 3 + 1
    plain = WideResNet(depth=10, widen_factor=1, regulariser=lambda r: Dropout(r))
    assert not _sites(plain)


# ----------------------------------------------------------------------------- masks

@pytest.mark.parametrize("template", [Dropout(rate=0.5), QSD(rate=0.5, gamma=2.0)], ids=["dropout", "qsd"])
def test_channel_vs_element_masks(template):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    for mask in ("element", "channel"):
        model = CNNClassifier(channels=[8, 16], hidden_sizes=[12], regulariser=template, mask=mask)
        site = dict(model.named_modules())["net.features.1.reg"]
        assert tuple(getattr(site, "locked_dims", ())) == ((2, 3) if mask == "channel" else ())
        # the dense classifier site always masks per element
        assert dict(model.named_modules())["net.classifier.reg1"].locked_dims == ()
        model.train()
        assert model(x).shape == (4, 10)
        ratio = site(torch.ones(4, 8, 16, 16))  # the multiplier m * c
        per_channel_const = torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio))
        assert per_channel_const == (mask == "channel")
        assert (ratio == 0).any()


def test_channel_mask_needs_locked_dims():
    class Scale(Regulariser):  # a regulariser without locked_dims
        def forward(self, x):
            return x * (1 - self.rate)

    with pytest.raises(ValueError, match="locked_dims"):
        CNNClassifier(channels=[8, 16], regulariser=Scale(rate=0.3), mask="channel")
    with pytest.raises(ValueError, match="locked_dims"):
        WRNClassifier(depth=10, widen_factor=1, regulariser=Scale(rate=0.3), mask="channel")
    CNNClassifier(channels=[8, 16], regulariser=Scale(rate=0.3), mask="element")
    CNNClassifier(channels=[8, 16], regulariser=NoRegulariser(), mask="channel")


def test_per_site_rates_override_the_template():
    model = CNNClassifier(channels=[8, 16, 16], regulariser=QSD(rate=0.3, gamma=4.0), conv_rate=0.1, classifier_rate=0.0)
    sites = _sites(model)
    assert sorted(sites) == ["net.features.1.reg", "net.features.2.reg"]
    assert all(isinstance(s, QSD) and s.rate == 0.1 and s.gamma == 4.0 for s in sites.values())
    wrn = WRNClassifier(depth=10, widen_factor=1, regulariser=QSD(rate=0.3, mode="size"), block_rate=0.2, mask="channel")
    assert all(s.rate == 0.2 and s.mode == "size" and s.locked_dims == (2, 3) for s in _sites(wrn).values())


# ----------------------------------------------------------------------------- configs

def test_cnn_cifar10_config_fits(run_cli, cifar10_pickles):
    cli = run_cli("fit", "--config", str(CONFIGS / "cnn_cifar10.yaml"), "--trainer.fast_dev_run=true",
                  f"--data.data_dir={cifar10_pickles}", *TINY_DATA)
    assert isinstance(cli.model, CNNClassifier)
    assert isinstance(cli.model.net.features[1].reg, Dropout)
    assert cli.model.net.classifier.reg.rate == 0.5
    assert cli.datamodule.augment is False
    assert np.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    assert "val/acc" in cli.trainer.callback_metrics


def test_cnn_cifar10_qsd_channel_on_archive(run_cli, cifar10_archive):
    cli = run_cli("fit", "--config", str(CONFIGS / "cnn_cifar10.yaml"), "--trainer.fast_dev_run=true",
                  f"--data.data_dir={cifar10_archive}", *TINY_DATA,
                  "--model.regulariser", "qsd", "--model.regulariser.gamma", "8", "--model.mask", "channel")
    site = cli.model.net.features[1].reg
    assert isinstance(site, QSD) and site.gamma == 8.0 and site.locked_dims == (2, 3) and site.rate == 0.25
    assert site.steps_taken == 1
    assert cli.datamodule.source.startswith("archive")


def test_wrn_cifar10_config_fits_tiny(run_cli, cifar10_pickles):
    cli = run_cli("fit", "--config", str(CONFIGS / "wrn_cifar10.yaml"), "--trainer.fast_dev_run=true",
                  f"--data.data_dir={cifar10_pickles}", *TINY_DATA,
                  "--model.depth=10", "--model.widen_factor=1")
    model = cli.model
    assert isinstance(model, WRNClassifier) and model.net.depth == 10
    assert all(s.rate == 0.3 for s in _sites(model).values()) and len(_sites(model)) == 3
    assert cli.datamodule.augment is True
    optimizer = cli.trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.9 and group["weight_decay"] == 5e-4
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR)
    assert dict(scheduler.milestones) == {60: 1, 120: 1, 160: 1} and scheduler.gamma == 0.2
    assert cli.config["fit"]["trainer"]["max_epochs"] == 200


def test_cnn_cifar100_config_fits(run_cli, cifar100_pickles):
    cli = run_cli("fit", "--config", str(CONFIGS / "cnn_cifar100.yaml"), "--trainer.fast_dev_run=true",
                  f"--data.data_dir={cifar100_pickles}", *TINY_DATA)
    assert cli.model.num_classes == 100 and cli.datamodule.num_classes == 100
    assert cli.model.net.classifier.out.out_features == 100


def test_bad_mask_rejected_at_parse_time(run_cli, cifar10_pickles):
    with pytest.raises(SystemExit):
        run_cli("fit", "--config", str(CONFIGS / "cnn_cifar10.yaml"), "--trainer.fast_dev_run=true",
                f"--data.data_dir={cifar10_pickles}", *TINY_DATA, "--model.mask", "pixel")
