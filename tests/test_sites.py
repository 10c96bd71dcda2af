"""One mechanism from a configured regulariser to one module per site (regularisers/sites.py),
used by every task and by replace_dropout; the bugs of issue 14 section 1."""

from __future__ import annotations

import inspect

import pytest
import torch
from jsonargparse import lazy_instance
from torch import nn

import qsd_lightning.tasks as tasks
from qsd_lightning.errors import ConfigError
from qsd_lightning.regularisers import QSD, Dropout, LockedDropout, NoRegulariser, Regulariser, materialise, replace_dropout
from qsd_lightning.regularisers.sites import Sites, is_lazy, resolve

#: every LightningModule in qsd_lightning.tasks that a config names (the abstract base takes a net)
TASKS = sorted(
    name for name in tasks.__all__
    if inspect.isclass(getattr(tasks, name)) and name != "ClassificationTask"
)

#: small settings for a forward pass, and a tiny input of the right kind, per task
TINY = {
    "MLPClassifier": (dict(in_features=12, hidden_sizes=[8]), lambda: (torch.randn(4, 12),)),
    "CNNClassifier": (dict(channels=[4, 8], image_size=8), lambda: (torch.randn(2, 3, 8, 8),)),
    "WRNClassifier": (dict(depth=10, widen_factor=1), lambda: (torch.randn(2, 3, 8, 8),)),
    "LanguageModel": (dict(vocab_size=20, embedding_size=8, hidden_size=8), lambda: (torch.randint(0, 20, (2, 5)),)),
    "TransformerLM": (dict(vocab_size=20, d_model=8, num_heads=2, num_layers=1, context_length=8),
                      lambda: (torch.randint(0, 20, (2, 5)),)),
    "SentimentClassifier": (dict(vocab_size=20, embedding_dim=8, hidden_size=8),
                            lambda: (torch.randint(1, 20, (2, 5)), torch.tensor([5, 3]))),
}

SPECS = {"default": {}, "name": {"regulariser": "qsd"}, "instance": {"regulariser": QSD(rate=0.3)}}


def test_every_task_is_covered():
    assert set(TASKS) == set(TINY)


@pytest.mark.parametrize("spec", list(SPECS))
@pytest.mark.parametrize("task", TASKS)
def test_task_builds_in_plain_python_and_runs(task, spec):
    cls = getattr(tasks, task)
    kwargs = SPECS[spec]
    if task != "WRNClassifier":  # WRN-28-10 by default: built once below, not three times
        cls(**kwargs)
    elif spec == "default":
        cls()
    tiny, inputs = TINY[task]
    model = cls(**tiny, **kwargs).train()
    out = model(*inputs())
    out = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(out).all()
    regs = [m for m in model.modules() if isinstance(m, Regulariser)]
    assert regs, "no regulariser site built"
    if spec == "name":
        assert all(isinstance(m, QSD) for m in regs if not isinstance(m, NoRegulariser))
    if spec == "instance":
        assert any(isinstance(m, QSD) and m.rate == 0.3 for m in regs)


def test_cnn_classifier_without_arguments():  # bug: AttributeError on the lazy default
    model = tasks.CNNClassifier()
    assert [type(m) for m in model.modules() if isinstance(m, Regulariser)] == [Dropout] * 3
    assert all(m.rate == 0.25 for m in model.modules() if isinstance(m, Regulariser))


def test_wrn_channel_mask_with_default_regulariser():  # bug: false "does not accept locked_dims"
    model = tasks.WRNClassifier(depth=10, widen_factor=1, mask="channel")
    regs = [m for m in model.modules() if isinstance(m, Regulariser)]
    assert regs and all(isinstance(m, Dropout) and tuple(m.locked_dims) == (2, 3) and m.rate == 0.3 for m in regs)


def test_wrn_channel_mask_refuses_a_regulariser_without_locked_dims():
    with pytest.raises(ConfigError, match="mask='channel' needs a regulariser that takes locked_dims.*'weight_drop' does not"):
        tasks.WRNClassifier(depth=10, widen_factor=1, mask="channel", regulariser="weight_drop")


def test_mlp_classifier_with_a_registry_name():  # bug: raised although documented
    model = tasks.MLPClassifier(regulariser="qsd", hidden_rate=0.2)
    regs = [m for m in model.modules() if isinstance(m, QSD)]
    assert [m.rate for m in regs] == [0.2, 0.5]  # input site off; hidden rate given; output: qsd's own rate


def test_resolve_every_kind_of_spec():
    lazy = lazy_instance(QSD, rate=0.2, gamma=4.0)
    assert is_lazy(lazy) and not is_lazy(QSD(rate=0.2)) and not is_lazy("qsd")
    made = [
        resolve("qsd", rate=0.2, gamma=4.0),
        resolve("qsd_lightning.regularisers.QSD", rate=0.2, gamma=4.0),
        resolve({"class_path": "qsd", "init_args": {"rate": 0.2, "gamma": 4.0}}),
        resolve(QSD, rate=0.2, gamma=4.0),
        resolve(lazy),
        materialise(lazy),
    ]
    for module in made:
        assert type(module) is QSD and module.rate == 0.2 and module.gamma == 4.0
    instance = QSD(rate=0.2)
    assert resolve(instance) is instance
    with pytest.raises(ValueError, match="qsd"):
        resolve("qds")


def test_sites_build_fresh_modules_with_the_layout():
    sites = Sites(lazy_instance(QSD, rate=0.4, gamma=2.0), unit_dims=(-1,), locked_dims=(1,), lock_required="--model.locked=true")
    a, b = sites(0.1), sites(0.2)
    assert a is not b and sites.rate == 0.4 and sites.rate_or_default(None) == 0.4 and sites.rate_or_default(0.0) == 0.0
    assert (a.rate, b.rate, a.gamma, tuple(a.locked_dims), tuple(a.unit_dims)) == (0.1, 0.2, 2.0, (1,), (-1,))
    # locked already the same way, masks nothing, or best effort: accepted
    assert Sites(LockedDropout(0.3), locked_dims=(1,), lock_required="x")(0.2).time_dim == 1
    assert isinstance(Sites("none", locked_dims=(2, 3), lock_required="x")(0.2), NoRegulariser)
    assert Sites("weight_drop", locked_dims=(2, 3))(0.2).rate == 0.2
    with pytest.raises(ConfigError, match="--model.locked=true needs a regulariser that takes locked_dims"):
        Sites(LockedDropout(0.3, time_dim=2), locked_dims=(1,), lock_required="--model.locked=true")
    # unlocking: clone with no locked dims, or plain dropout for one locked by construction
    assert tuple(Sites(QSD(rate=0.3, locked_dims=(1,)), locked_dims=())(0.2).locked_dims) == ()
    unlocked = Sites(LockedDropout(0.3), locked_dims=())(0.2)
    assert type(unlocked) is Dropout and unlocked.rate == 0.2


def test_sites_of_a_plain_module_keep_their_arguments():
    class Plain(nn.Module):
        def __init__(self, rate: float = 0.5, scale: float = 1.0) -> None:
            super().__init__()
            self.rate, self.scale = rate, scale

    sites = Sites(Plain, init_args={"scale": 3.0})
    module = sites(0.2)
    assert (module.rate, module.scale) == (0.2, 3.0)


def test_replace_dropout_builds_through_sites():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Dropout2d(0.2))
    replace_dropout(model, "qsd", gamma=2.0)
    assert isinstance(model[1], QSD) and model[1].rate == 0.1 and model[1].gamma == 2.0
    assert model[2].rate == 0.2 and tuple(model[2].locked_dims) != ()
    replace_dropout(model, "dropout", rate=0.3)
    assert type(model[1]) is Dropout and model[1].rate == model[2].rate == 0.3


@pytest.mark.parametrize("task", ["MLPClassifier", "CNNClassifier", "SentimentClassifier", "LanguageModel"])
def test_saved_regulariser_is_a_plain_instance(task):
    # the hyper-parameters (and so the checkpoints) hold the regulariser the CLI would pass:
    # a plain instance, whether the task got the lazy default or a registry name
    tiny, _ = TINY[task]
    default = getattr(tasks, task)(**tiny).hparams["regulariser"]
    assert type(default) is Dropout and not is_lazy(default)
    named = getattr(tasks, task)(**tiny, regulariser="qsd").hparams["regulariser"]
    assert type(named) is QSD
