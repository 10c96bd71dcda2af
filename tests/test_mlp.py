"""The MLP network and its LightningModule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qsd_lightning.models import MLP
from qsd_lightning.regularisers import QSD, Dropout, Sites
from qsd_lightning.tasks import MLPClassifier


def test_sites_follow_the_authors_placement():
    net = MLP(784, 10, [100, 100], regulariser=Sites(QSD(rate=0.9)), input_rate=0.0, hidden_rate=0.3, output_rate=0.5)
    assert isinstance(net.hidden[0].reg, nn.Identity)  # none on raw pixels
    assert isinstance(net.hidden[1].reg, QSD) and net.hidden[1].reg.rate == 0.3
    assert isinstance(net.output_reg, QSD) and net.output_reg.rate == 0.5
    assert net.hidden[1].reg is not net.output_reg
    # regulariser -> weights -> normalisation -> activation
    assert [name for name, _ in net.hidden[1].named_children()] == ["reg", "linear", "norm", "act"]
    assert net(torch.randn(4, 1, 28, 28)).shape == (4, 10)


def test_template_rate_applies_where_site_rate_unset():
    model = MLPClassifier(regulariser=Dropout(rate=0.4), hidden_rate=None, output_rate=0.1)
    assert model.net.hidden[1].reg.rate == 0.4 and model.net.output_reg.rate == 0.1


def test_eval_forward_is_deterministic():
    model = MLPClassifier(regulariser=QSD(rate=0.5)).eval()
    x = torch.randn(8, 64)
    assert torch.equal(model(x), model(x))


def test_training_forward_is_stochastic():
    torch.manual_seed(0)
    model = MLPClassifier(regulariser=QSD(rate=0.5), batch_norm=False).train()
    x = torch.randn(8, 64)
    assert not torch.equal(model(x), model(x))


def test_no_hidden_layers_rejected():
    with pytest.raises(ValueError, match="hidden"):
        MLP(4, 2, [])
