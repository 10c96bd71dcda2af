"""replace_dropout: QSD wherever torch dropout was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qsd_lightning.regularisers import QSD, Dropout, replace_dropout


def make_net():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Dropout2d(0.2), nn.ReLU(),
        nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * 6 * 6, 5)),
        nn.Dropout(0.0),
    )


def test_replaces_all_keeping_rates_and_channel_masks():
    net = make_net()
    assert replace_dropout(net, "qsd", gamma=2.0).count == 3
    assert isinstance(net[1], QSD) and net[1].rate == 0.2 and net[1].locked_dims == (2, 3)
    assert isinstance(net[3][1], QSD) and net[3][1].rate == 0.3 and net[3][1].gamma == 2.0
    assert not any(isinstance(m, nn.Dropout) for m in net.modules())
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_rate_override_and_training_flag_kept():
    net = make_net().eval()
    replace_dropout(net, "dropout", rate=0.1)
    assert all(m.rate == 0.1 for m in net.modules() if isinstance(m, Dropout))
    assert not net[1].training


def test_torchvision_model():
    from torchvision.models import alexnet

    model = alexnet(weights=None)
    assert int(replace_dropout(model, "qsd", mode="release")) == 2
    assert sum(isinstance(m, QSD) for m in model.modules()) == 2


def test_unknown_name_fails_before_touching_model():
    net = make_net()
    with pytest.raises(ValueError, match="valid choices"):
        replace_dropout(net, "nope")
    assert isinstance(net[1], nn.Dropout2d)
