"""Registry-wide contract tests and seeded statistical tests of QSD (docs/method.md)."""

from __future__ import annotations

import copy
import inspect
import math
import pickle

import pytest
from jsonargparse import lazy_instance
import torch
from torch import nn

from qsd_lightning import regularisers as R
from qsd_lightning.regularisers import QSD, Dropout, build
from qsd_lightning.regularisers.functional import draw_quanta, release, unit_and_mask_shapes
from qsd_lightning.regularisers.variance import main as variance_main
from qsd_lightning.regularisers.variance import matched_dropout_rate, multiplier_variance

NAMES = R.available()
MODES = R.MODES


# --------------------------------------------------------------------------- registry contract
def test_registry_lists_core_names():
    assert {"none", "dropout", "qsd"} <= set(NAMES)
    assert NAMES == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_build_returns_fresh_module(name):
    a, b = build(name, rate=0.5), build(name, rate=0.5)
    assert isinstance(a, nn.Module) and a is not b
    assert R.name_of(a) == name
    assert not list(a.parameters()), "regularisers must have nothing trainable"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_shape_and_dtype_kept(name, dtype):
    torch.manual_seed(0)
    m = build(name, rate=0.5).train()
    x = torch.randn(8, 5, 6).to(dtype)
    y = m(x)
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_identity_bit_for_bit(name):
    m = build(name, rate=0.5).eval()
    x = torch.randn(8, 5, 6)
    assert torch.equal(m(x), x)


@pytest.mark.parametrize("name", NAMES)
def test_rate_zero_is_identity(name):
    m = build(name, rate=0.0).train()
    x = torch.randn(8, 5, 6)
    assert torch.equal(m(x), x)


@pytest.mark.parametrize("name", NAMES)
def test_repr_shows_settings(name):
    module = build(name, rate=0.25)
    text = repr(module)
    assert text.startswith(type(module).__name__ + "(") and text.endswith(")")
    assert "rate=0.25" in text


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rate", [1.0, 1.5, -0.1, float("nan"), "0.5"])
def test_bad_rate_raises(name, rate):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        build(name, rate=rate)


@pytest.mark.parametrize("name", NAMES)
def test_clone_changes_only_overrides(name):
    m = build(name, rate=0.5)
    c = m.clone(rate=0.2)
    assert type(c) is type(m) and c.rate == 0.2
    assert {k: v for k, v in c.config().items() if k != "rate"} == {
        k: v for k, v in m.config().items() if k != "rate"
    }


# every constructor argument of every registered class, each away from its default
NON_DEFAULT = {
    "qsd": dict(rate=0.3, gamma=4.0, mode="size", gamma_step=0.01, unit_dims=(1,), locked_dims=(2,)),
    "dropout": dict(rate=0.3, unit_dims=(1,), locked_dims=(2,)),
    "gaussian_dropout": dict(rate=0.3, unit_dims=(1,), locked_dims=(2,)),
    "none": dict(rate=0.2),
    "spatial_dropout": dict(rate=0.3),
    "locked_dropout": dict(rate=0.3, time_dim=2),
    "embedding_dropout": dict(rate=0.3),
    "weight_drop": dict(rate=0.3),
}


def _non_default(name):
    cls = R.get(name)
    if name not in NON_DEFAULT:
        if not cls.__module__.startswith("qsd_lightning."):
            pytest.skip(f"plugin {name!r}: no non-default arguments known")
        pytest.fail(f"add non-default values of every argument of {name!r} to NON_DEFAULT")
    kwargs = NON_DEFAULT[name]
    params = {n: p for n, p in inspect.signature(cls).parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    assert set(kwargs) == set(params), f"NON_DEFAULT[{name!r}] must set every argument: {sorted(params)}"
    assert all(kwargs[n] != p.default for n, p in params.items()), "each value must differ from its default"
    return cls, kwargs


def _same_settings(a, b, kwargs, **overrides):
    assert type(a) is type(b) and a is not b
    assert b.init_arguments() == {**a.init_arguments(), **overrides}
    for arg in kwargs:  # the attribute a constructor argument sets, where it keeps one
        if arg in overrides:
            continue
        if hasattr(a, arg):
            assert getattr(b, arg) == getattr(a, arg), arg
    if not overrides:
        assert repr(b) == repr(a)


@pytest.mark.parametrize("name", NAMES)
def test_clone_keeps_every_constructor_argument(name):
    cls, kwargs = _non_default(name)
    m = cls(**kwargs)
    assert m.init_arguments() == kwargs
    _same_settings(m, m.clone(), kwargs)
    clone = m.clone(rate=0.1)
    _same_settings(m, clone, kwargs, rate=0.1)
    assert clone.rate == 0.1
    # the registry alias (what the CLI builds from --model.regulariser NAME) clones alike
    alias = getattr(R.names, name, cls)(**kwargs)
    _same_settings(alias, alias.clone(), kwargs)
    assert repr(alias) == repr(m)
    # positional arguments are recorded by name
    first = next(iter(inspect.signature(cls).parameters))
    assert cls(kwargs[first]).init_arguments() == {first: kwargs[first]}
    # every site a task builds: Sites, lazy_instance defaults, deep copies
    _same_settings(m, R.Sites(m)(0.2), kwargs, rate=0.2)
    _same_settings(m, R.resolve(lazy_instance(cls, **kwargs)), kwargs)
    _same_settings(m, copy.deepcopy(m).clone(), kwargs)
    _same_settings(m, pickle.loads(pickle.dumps(m)).clone(), kwargs)


def test_clone_keeps_user_arguments_config_does_not_list():
    @R.register("test_extra_args")
    class Extra(R.Regulariser):
        def __init__(self, rate: float = 0.5, scale: float = 1.0, *extra, tag: str = "", **options) -> None:
            super().__init__(rate)
            self.scale, self.extra, self.tag, self.options = scale, extra, tag, options

        def config(self):  # an override that forgets arguments: clone must not depend on it
            return {"rate": self.rate}

        def forward(self, x):
            return x * self.scale

    try:
        m = R.build("test_extra_args", rate=0.2, scale=5.0, tag="t", colour="red")
        c = m.clone(rate=0.4, colour="blue", size=3)
        assert (type(c), c.rate, c.scale, c.tag, c.options) == (Extra, 0.4, 5.0, "t", {"colour": "blue", "size": 3})
        p = Extra(0.1, 2.0, "a", "b")
        assert p.clone(scale=3.0).extra == ("a", "b") and p.clone(scale=3.0).scale == 3.0
        with pytest.raises(TypeError):
            R.QSD().clone(no_such_argument=1)
    finally:
        R.registry._unregister("test_extra_args")


def test_default_repr_shows_user_arguments():
    class Plain(R.Regulariser):
        def __init__(self, rate: float = 0.5, scale: float = 1.0) -> None:
            super().__init__(rate)
            self.scale = scale

    assert repr(Plain(0.25, scale=5)) == "Plain(rate=0.25, scale=5)"
    assert repr(Plain()) == "Plain(rate=0.5)"


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="valid choices: .*dropout.*qsd"):
        build("qsdd")
    with pytest.raises(ValueError, match="Did you mean 'qsd'"):
        build("qsdd")


@pytest.mark.parametrize("gamma", [0, -1.0, float("nan")])
def test_bad_gamma_raises(gamma):
    with pytest.raises(ValueError, match="gamma"):
        QSD(rate=0.5, gamma=gamma)


def test_bad_mode_lists_choices():
    with pytest.raises(ValueError, match="release, size, independent, coupled"):
        QSD(rate=0.5, mode="sizes")


def test_bad_gamma_step_raises():
    with pytest.raises(ValueError, match="gamma_step"):
        QSD(gamma_step=-1)


def test_register_user_regulariser():
    @R.register("test_scaled_identity")
    class ScaledIdentity(R.Regulariser):
        def forward(self, x):
            return x

    try:
        assert "test_scaled_identity" in R.available()
        assert isinstance(build("test_scaled_identity", rate=0.1), ScaledIdentity)
        with pytest.raises(ValueError, match="already registered"):
            R.register("test_scaled_identity")(Dropout)
    finally:
        R.registry._unregister("test_scaled_identity")


def test_qsd_gamma_none_is_dropout_distribution():
    torch.manual_seed(0)
    y = QSD(rate=0.4, gamma=None)(torch.ones(1, 100_000))
    assert torch.unique(y).tolist() == pytest.approx([0.0, 1 / 0.6])


def test_nothing_trainable_and_no_grad_to_draws():
    torch.manual_seed(0)
    x = (torch.rand(4, 10) + 0.5).requires_grad_()
    y = QSD(rate=0.5)(x)
    y.sum().backward()
    # d y / d x is the multiplier m*c itself: the draws are constants for autograd
    assert torch.allclose(x.grad, y.detach() / x.detach())


# --------------------------------------------------------------------------- shapes / locking
def test_unit_and_mask_shapes():
    assert unit_and_mask_shapes((4, 3, 5, 5), None, ()) == ((1, 3, 5, 5), (4, 3, 5, 5))
    assert unit_and_mask_shapes((4, 3, 5, 5), None, (2, 3)) == ((1, 3, 1, 1), (4, 3, 1, 1))
    assert unit_and_mask_shapes((4, 7, 6), (-1,), (1,)) == ((1, 1, 6), (4, 1, 6))
    assert unit_and_mask_shapes((4, 7, 6), (-1,), ()) == ((1, 1, 6), (4, 7, 6))
    with pytest.raises(ValueError, match="batch"):
        unit_and_mask_shapes((4, 3), None, (0,))
    with pytest.raises(ValueError, match="overlap"):
        unit_and_mask_shapes((4, 3, 2), (1,), (1,))


@pytest.mark.parametrize("cls", [QSD, Dropout])
def test_channel_masks_are_constant_over_space(cls):
    torch.manual_seed(0)
    y = cls(rate=0.5, locked_dims=(2, 3))(torch.ones(6, 4, 5, 5))
    released = y != 0
    assert torch.equal(released, released[:, :, :1, :1].expand_as(released))
    assert 0 < released.float().mean() < 1


@pytest.mark.parametrize("cls", [QSD, Dropout])
def test_time_locked_masks(cls):
    torch.manual_seed(0)
    y = cls(rate=0.5, locked_dims=(1,), unit_dims=(-1,))(torch.ones(6, 9, 8))
    released = y != 0
    assert torch.equal(released, released[:, :1].expand_as(released))


def test_p_and_c_shared_across_batch():
    torch.manual_seed(0)
    draw = draw_quanta((1, 50), 0.5, 2.0, "coupled")
    assert draw.p.shape == (1, 50) and draw.c.shape == (1, 50)
    y, mask = release(torch.ones(3, 50), draw, (3, 50))
    # where released, every sample of the batch has the same scale c_j
    assert torch.allclose(y, mask * draw.c)


# --------------------------------------------------------------------------- statistics
expected_variance = multiplier_variance  # the library's formula, checked against samples below


def test_coupled_variance_formula_reference_values():
    # the values quoted in the method document for r = 0.5
    assert [round(expected_variance("coupled", 0.5, g), 2) for g in (1, 4, 16)] == [3.5, 1.53, 1.13]


@pytest.mark.parametrize("mode", [*MODES, None])
@pytest.mark.parametrize("rate,gamma", [(0.3, 4.0), (0.5, 16.0), (0.2, 1.0)])
def test_matched_dropout_rate_has_the_same_variance(mode, rate, gamma):
    matched = matched_dropout_rate(mode, rate, gamma)
    assert multiplier_variance(None, matched, None) == pytest.approx(multiplier_variance(mode, rate, gamma))
    assert (matched == pytest.approx(rate)) == (mode in (None, "release"))  # only release adds no variance


@pytest.mark.parametrize("args,message", [(("coupled", 1.0, 4.0), "rate"), (("sometimes", 0.5, 4.0), "mode"), (("coupled", 0.5, 0.0), "gamma")])
def test_multiplier_variance_rejects_bad_settings(args, message):
    with pytest.raises(ValueError, match=message):
        multiplier_variance(*args)


def test_variance_command_rejects_a_bad_rate_in_one_line(capsys):
    with pytest.raises(SystemExit) as err:
        variance_main(["--rate", "1", "--gamma", "4"])
    assert err.value.code == 2 and "rate must be in [0, 1)" in capsys.readouterr().err


def test_variance_command_prints_the_matched_rates(capsys):
    assert variance_main(["--rate", "0.5", "--gamma", "4", "16"]) == 0
    out = capsys.readouterr().out
    assert "| coupled | 0.5 | 4 | 1.531 | 1.000 | 0.605 |" in out and "| coupled | 0.5 | 16 | 1.127 | 1.000 | 0.530 |" in out


def multiplier_samples(rate, gamma, mode, n=200_000, seed=0):
    """n i.i.d. multiplier samples: one element per unit, each unit its own draw."""
    torch.manual_seed(seed)
    m = QSD(rate=rate, gamma=gamma, mode=mode).train()
    return m(torch.ones(1, n, dtype=torch.float64)).double().flatten()


CASES = [(mode, r, g) for mode in MODES for r in (0.2, 0.5) for g in (1.0, 4.0, 16.0)] + [(None, 0.5, None), (None, 0.3, None)]


@pytest.mark.parametrize("mode,rate,gamma", CASES)
def test_multiplier_mean_release_fraction_and_variance(mode, rate, gamma):
    s = multiplier_samples(rate, gamma, mode or "coupled")
    n = s.numel()
    k = 1 - rate
    mean, var = s.mean().item(), s.var().item()
    # mean 1: 5 standard errors
    assert abs(mean - 1) < 5 * math.sqrt(var / n)
    # release fraction k
    frac = (s != 0).double().mean().item()
    assert abs(frac - k) < 5 * math.sqrt(k * (1 - k) / n)
    # variance: standard error from 200 independent batches of the sample
    batch_vars = s.view(200, -1).var(dim=1)
    se = batch_vars.std().item() / math.sqrt(200)
    assert abs(var - expected_variance(mode, rate, gamma)) < 6 * se, (var, expected_variance(mode, rate, gamma), se)


@pytest.mark.parametrize("mode", ["release", "independent", "coupled"])
@pytest.mark.parametrize("gamma", [1.0, 8.0])
def test_release_fraction_varies_across_units(mode, gamma):
    """Per-unit release fractions spread as Var(p_j) + E[p(1-p)]/B, Var(p_j) = k r^2/(g + r)."""
    torch.manual_seed(1)
    r, k, batch, units = 0.5, 0.5, 2000, 400
    y = QSD(rate=r, gamma=gamma, mode=mode)(torch.ones(batch, units))
    per_unit = (y != 0).double().mean(0)
    var_p = k * r**2 / (gamma + r)
    expected = var_p + (k * r - var_p) / batch
    se = expected * math.sqrt(2 / (units - 1))
    assert abs(per_unit.var().item() - expected) < 5 * se


@pytest.mark.parametrize("mode,gamma", [("size", 4.0), (None, None)])
def test_release_fraction_homogeneous_without_release_heterogeneity(mode, gamma):
    torch.manual_seed(1)
    r, k, batch, units = 0.5, 0.5, 2000, 400
    y = QSD(rate=r, gamma=gamma, mode=mode or "coupled")(torch.ones(batch, units))
    per_unit = (y != 0).double().mean(0)
    expected = k * r / batch
    assert abs(per_unit.var().item() - expected) < 5 * expected * math.sqrt(2 / (units - 1))


def test_coupled_scales_anticorrelate_with_p_independent_do_not():
    torch.manual_seed(2)
    coupled = draw_quanta((20_000,), 0.5, 2.0, "coupled")
    independent = draw_quanta((20_000,), 0.5, 2.0, "independent")
    corr = lambda d: torch.corrcoef(torch.stack([d.p, d.c]))[0, 1].item()  # noqa: E731
    assert corr(coupled) < -0.3
    assert abs(corr(independent)) < 5 / math.sqrt(20_000)


# --------------------------------------------------------------------------- annealing
def test_annealing_schedule_and_counter():
    m = QSD(rate=0.5, gamma=2.0, gamma_step=0.5).train()
    assert m.current_gamma() == 2.0
    x = torch.ones(2, 3)
    for _ in range(4):
        m(x)
    assert m.steps_taken == 4 and m.current_gamma() == pytest.approx(2.0 * (1 + 0.5 * 4))
    m.eval()
    m(x)
    assert m.steps_taken == 4, "eval forwards must not advance annealing"


def test_annealing_counter_survives_state_dict_roundtrip():
    m = QSD(rate=0.5, gamma=2.0, gamma_step=0.1).train()
    for _ in range(7):
        m(torch.ones(2, 3))
    fresh = QSD(rate=0.5, gamma=2.0, gamma_step=0.1)
    fresh.load_state_dict(m.state_dict())
    assert fresh.steps_taken == 7
    net = nn.Sequential(nn.Linear(3, 3), m)
    state = net.state_dict()
    net2 = nn.Sequential(nn.Linear(3, 3), QSD(rate=0.5, gamma=2.0, gamma_step=0.1))
    net2.load_state_dict(state)
    assert net2[1].steps_taken == 7


def test_annealing_moves_towards_dropout():
    """After annealing, the multiplier variance is the dropout value r/k, not the QSD one."""
    torch.manual_seed(3)
    r = 0.5
    m = QSD(rate=r, gamma=1.0, mode="coupled", gamma_step=1000.0).train()
    m.steps_taken = 1000  # gamma_t = 1e6
    s = m(torch.ones(1, 200_000, dtype=torch.float64)).flatten()
    var = s.var().item()
    assert abs(var - r / (1 - r)) < 0.02
    assert abs(var - expected_variance("coupled", r, 1.0)) > 1.0


# --------------------------------------------------------------------------- dtype / autocast
def test_bf16_autocast_draws_in_float32():
    torch.manual_seed(0)
    lin = nn.Linear(16, 16)
    reg = QSD(rate=0.5, gamma=4.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = lin(torch.randn(32, 16))
        y = reg(h)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    reg.collect_statistics = True
    reg(torch.randn(4, 16, dtype=torch.bfloat16))
    assert reg.last_statistics.p.dtype == torch.float32


def test_release_statistics_recorded_only_when_asked():
    torch.manual_seed(0)
    m = QSD(rate=0.5, gamma=4.0).train()
    m(torch.ones(10, 1000))
    assert m.last_statistics is None
    m.collect_statistics = True
    m(torch.ones(10, 1000))
    st = m.last_statistics
    assert st.gamma == 4.0 and st.p.numel() == 1000 and st.c.numel() == 1000
    assert abs(st.release_fraction - 0.5) < 0.02
    assert abs(st.multiplier_mean - 1) < 0.05
