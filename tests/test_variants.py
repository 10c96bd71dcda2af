"""Gaussian, spatial, locked, embedding dropout and weight drop (DropConnect); QSD at those sites."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from qsd_lightning import regularisers as R
from qsd_lightning.regularisers import (
    QSD,
    EmbeddingDropout,
    GaussianDropout,
    LockedDropout,
    SpatialDropout,
    WeightDrop,
    apply_weight_drop,
    embedded,
    remove_weight_drop,
)

VARIANTS = {
    "gaussian_dropout": GaussianDropout,
    "spatial_dropout": SpatialDropout,
    "locked_dropout": LockedDropout,
    "embedding_dropout": EmbeddingDropout,
    "weight_drop": WeightDrop,
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def multiplier(module: nn.Module, shape, dtype=torch.float32) -> torch.Tensor:
    """The multiplier module(x) / x on an all-ones input."""
    return module(torch.ones(shape, dtype=dtype)).float()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_registered_identity_in_eval_and_at_rate_zero(name):
    cls = VARIANTS[name]
    assert R.get(name) is cls
    x = torch.randn(8, 5, 6)
    module = R.build(name, rate=0.5)
    assert repr(module).startswith(f"{cls.__name__}(rate=0.5")
    y = module(x)
    assert y.shape == x.shape and not torch.equal(y, x)
    assert module.eval()(x) is x
    assert R.build(name, rate=0.0)(x) is x
    clone = module.clone(rate=0.2)
    assert type(clone) is cls and clone.rate == 0.2 and clone.training


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("rate", [1.0, -0.1, float("nan"), "0.5", True])
def test_bad_rate(name, rate):
    with pytest.raises(ValueError):
        R.build(name, rate=rate)


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_kept(name, dtype):
    x = torch.randn(8, 5, 6, dtype=dtype)
    assert R.build(name, rate=0.5)(x).dtype == dtype


# ---------------------------------------------------------------- gaussian


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.7])
def test_gaussian_moments(rate):
    m = multiplier(GaussianDropout(rate), (400, 1000))
    k = 1 - rate
    assert m.mean().item() == pytest.approx(1.0, abs=0.01)
    assert m.var().item() == pytest.approx(rate / k, rel=0.02)
    assert (m != 0).all()  # noise, not a mask


def test_gaussian_locked_over_time():
    m = multiplier(GaussianDropout(0.5, locked_dims=(1,)), (16, 7, 9))
    assert torch.equal(m, m[:, :1].expand_as(m))
    assert not torch.equal(m[0], m[1])
    assert repr(GaussianDropout(0.5, locked_dims=(1,))) == "GaussianDropout(rate=0.5, locked_dims=(1,))"


def test_gaussian_grad_is_noise():
    x = torch.randn(4, 6, requires_grad=True)
    y = GaussianDropout(0.5)(x)
    y.sum().backward()
    assert torch.allclose(x.grad, (y / x).detach(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- spatial


@pytest.mark.parametrize("shape", [(64, 12, 10), (64, 12, 5, 4), (32, 6, 3, 4, 5)])
def test_spatial_whole_channels(shape):
    rate = 0.4
    m = multiplier(SpatialDropout(rate), shape)
    flat = m.flatten(2)
    assert torch.equal(flat, flat[:, :, :1].expand_as(flat))  # constant within each channel
    kept = flat[:, :, 0][flat[:, :, 0] != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - rate)))
    n = flat.shape[0] * flat.shape[1]  # channels, each dropped or kept as a whole
    assert (flat[:, :, 0] == 0).float().mean().item() == pytest.approx(rate, abs=4 * (rate * (1 - rate) / n) ** 0.5)


def test_spatial_on_features_is_elementwise():
    torch.manual_seed(0)
    y = SpatialDropout(0.5)(torch.ones(400, 50))
    assert 0.4 < (y == 0).float().mean().item() < 0.6
    assert not torch.equal(y[:, :1].expand_as(y), y)  # not one mask per sample
    with pytest.raises(ValueError, match=r"\[B, C, ...\]"):
        SpatialDropout(0.5)(torch.ones(4))


# ---------------------------------------------------------------- locked


def test_locked_dropout_one_mask_per_sequence():
    rate = 0.3
    m = multiplier(LockedDropout(rate), (200, 11, 20))
    assert torch.equal(m, m[:, :1].expand_as(m))  # same at every time step
    first = m[:, 0]
    assert torch.allclose(first[first != 0], torch.full_like(first[first != 0], 1 / (1 - rate)))
    assert (first == 0).float().mean().item() == pytest.approx(rate, abs=0.02)
    assert m.mean().item() == pytest.approx(1.0, abs=0.03)


def test_locked_dropout_time_dim():
    m = multiplier(LockedDropout(0.5, time_dim=2), (8, 6, 10))
    assert torch.equal(m, m[:, :, :1].expand_as(m))
    assert repr(LockedDropout(0.5, time_dim=2)) == "LockedDropout(rate=0.5, time_dim=2)"
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="time_dim"):
            LockedDropout(0.5, time_dim=bad)


def test_qsd_is_the_locked_analogue():
    module = QSD(0.5, gamma=4.0, locked_dims=(1,), unit_dims=(-1,))
    m = multiplier(module, (50, 9, 30))
    assert torch.equal(m, m[:, :1].expand_as(m))


# ---------------------------------------------------------------- embedding


def test_embedding_dropout_drops_whole_rows():
    rate = 0.25
    w = torch.randn(2000, 16)
    y = EmbeddingDropout(rate)(w)
    ratio = y / w
    dropped = (y == 0).all(dim=1)
    kept = ~dropped
    assert torch.equal((y == 0).any(dim=1), dropped)  # rows dropped as wholes
    assert torch.allclose(ratio[kept], torch.full_like(ratio[kept], 1 / (1 - rate)))
    assert dropped.float().mean().item() == pytest.approx(rate, abs=0.03)


def test_embedded_helper_masks_word_types():
    torch.manual_seed(1)
    emb = nn.Embedding(50, 8)
    tokens = torch.randint(0, 50, (6, 20))
    reg = EmbeddingDropout(0.5)
    out = reg.embed(emb, tokens)
    zero_rows = (out == 0).all(dim=-1)
    for word in tokens.unique():  # every occurrence of a word shares its fate
        assert zero_rows[tokens == word].unique().numel() == 1
    assert zero_rows.any() and not zero_rows.all()
    out.sum().backward()
    assert emb.weight.grad is not None
    reg.eval()
    assert torch.equal(reg.embed(emb, tokens), emb(tokens))
    assert torch.equal(embedded(emb, tokens, None), emb(tokens))


def test_qsd_on_embedding_weight():
    emb = nn.Embedding(100, 8)
    out = embedded(emb, torch.arange(100).view(4, 25), QSD(0.5, locked_dims=(1,)))
    zero_rows = (out == 0).all(dim=-1)
    assert torch.equal((out == 0).any(dim=-1), zero_rows)  # still whole word types
    assert zero_rows.any() and not zero_rows.all()


# ---------------------------------------------------------------- weight drop


def test_weight_drop_on_plain_tensor():
    rate = 0.3
    w = torch.ones(300, 300)
    y = WeightDrop(rate)(w)
    assert (y == 0).float().mean().item() == pytest.approx(rate, abs=0.01)
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - rate)))


def test_weight_drop_parametrizes_lstm():
    lstm = nn.LSTM(5, 7, num_layers=2, batch_first=True)
    plain = copy.deepcopy(lstm)
    n_params = sum(p.numel() for p in lstm.parameters())
    originals = {n: p.detach().clone() for n, p in lstm.named_parameters()}
    assert apply_weight_drop(lstm, 0.5) == ["weight_hh_l0", "weight_hh_l1"]
    assert sum(p.numel() for p in lstm.parameters()) == n_params
    keys = set(lstm.state_dict())
    for name in ("weight_hh_l0", "weight_hh_l1"):
        assert f"parametrizations.{name}.original" in keys and name not in keys
        assert torch.equal(lstm.parametrizations[name].original, originals[name])
        assert isinstance(lstm.parametrizations[name][0], WeightDrop)
    assert {"weight_ih_l0", "bias_hh_l1"} <= keys

    x = torch.randn(3, 4, 5)
    with parametrize.cached():
        a = lstm(x)[0]
    with parametrize.cached():
        b = lstm(x)[0]
    assert not torch.allclose(a, b)  # a fresh mask every pass
    a.sum().backward()
    assert lstm.parametrizations.weight_hh_l0.original.grad is not None

    lstm.eval()
    plain.eval()
    assert torch.allclose(lstm(x)[0], plain(x)[0])  # identity in eval
    remove_weight_drop(lstm)
    assert set(lstm.state_dict()) == set(plain.state_dict())


def test_weight_drop_names_and_errors():
    lin = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="no recurrent weights"):
        apply_weight_drop(lin, 0.5)
    with pytest.raises(ValueError, match="no weight 'nope'"):
        apply_weight_drop(lin, 0.5, names=["nope"])
    assert apply_weight_drop(lin, WeightDrop(0.5), names=["weight"]) == ["weight"]
    assert lin.parametrizations.weight[0] is not None


def test_qsd_as_weight_drop():
    lstm = nn.LSTM(4, 6, batch_first=True)
    q = QSD(0.5, gamma=4.0)
    apply_weight_drop(lstm, q)
    inner = lstm.parametrizations.weight_hh_l0[0]
    assert isinstance(inner, QSD) and inner is not q and inner.steps_taken == 0
    x = torch.randn(2, 3, 4)
    with parametrize.cached():
        lstm(x)
    assert inner.steps_taken == 1  # one draw per pass
    assert "parametrizations.weight_hh_l0.original" in lstm.state_dict()
