"""Every task is a LightningModule constructible in plain Python, with no arguments, with a
regulariser's registry name or with an instance, and gets its network one way: its
``build_network()``, called only by the ``configure_model()`` hook (at the end of the
constructor, or by Lightning once a size is known). The bugs of issue 14 section 1."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import lightning
import pytest
import torch
from lightning.pytorch import LightningModule
from torch import nn

import qsd_lightning.tasks as tasks
from qsd_lightning.errors import ConfigError
from qsd_lightning.regularisers import QSD, Dropout, NoRegulariser, Regulariser
from qsd_lightning.regularisers.sites import is_lazy

#: every LightningModule in qsd_lightning.tasks that a config names (the base ClassificationTask
#: takes a ready network instead: test_classification_task_takes_a_ready_network)
TASKS = sorted(
    name for name in tasks.__all__
    if inspect.isclass(getattr(tasks, name)) and issubclass(getattr(tasks, name), LightningModule)
    and name != "ClassificationTask"
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

#: the regulariser argument, and the (class, rate) every site built from it must have
SPECS = {
    "default": ({}, Dropout, None),  # each task's lazy_instance(Dropout, rate=...) default
    "name": ({"regulariser": "qsd"}, QSD, 0.5),  # a registry name: QSD with its own rate
    "instance": ({"regulariser": QSD(rate=0.3, gamma=2.0)}, QSD, 0.3),
}


def _sites(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, Regulariser)]


def _run(model: nn.Module, inputs) -> torch.Tensor:
    out = model(*inputs())
    out = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(out).all()
    return out


def test_every_task_is_covered():
    assert TASKS and set(TASKS) == set(TINY)


@pytest.mark.parametrize("spec", list(SPECS))
@pytest.mark.parametrize("task", TASKS)
def test_task_builds_in_plain_python_and_runs(task, spec):
    cls = getattr(tasks, task)
    kwargs, kind, rate = SPECS[spec]
    if task != "WRNClassifier":  # WRN-28-10 by default: built once below, not three times
        assert cls(**kwargs).net is not None or task == "SentimentClassifier"  # no vocab_size: built at setup
    elif spec == "default":
        assert cls().net is not None
    tiny, inputs = TINY[task]
    model = cls(**tiny, **kwargs).train()
    _run(model, inputs)
    sites = _sites(model)
    assert sites, "no regulariser site built"
    assert not [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)], "a torch dropout left"
    assert all(type(m) is kind for m in sites if not isinstance(m, NoRegulariser)), [type(m) for m in sites]
    if rate is not None:  # no site rate given: every site has the regulariser's own rate
        assert {m.rate for m in sites} == {rate}
    if spec == "instance":
        template = kwargs["regulariser"]
        assert all(m is not template and m.gamma == 2.0 for m in sites)  # a fresh copy per site
    _run(model.eval(), inputs)


@pytest.mark.parametrize("task", TASKS)
def test_network_is_built_once_by_configure_model(task):
    cls = getattr(tasks, task)
    tiny, _ = TINY[task]
    torch.manual_seed(0)
    model = cls(**tiny)
    net = model.net
    assert isinstance(net, nn.Module) and model._modules["net"] is net
    model.configure_model()  # Lightning calls the hook at every stage: nothing happens again
    assert model.net is net
    torch.manual_seed(0)  # built by the hook it defines: the same initial weights for a seed
    fresh = model.build_network()
    assert type(fresh) is type(net) and fresh is not net
    for (name, a), (_, b) in zip(net.state_dict().items(), fresh.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("task", TASKS)
def test_load_from_checkpoint_rebuilds_the_network(task, tmp_path):
    cls = getattr(tasks, task)
    tiny, inputs = TINY[task]
    model = cls(**tiny, regulariser="qsd").eval()
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    loaded = cls.load_from_checkpoint(path, weights_only=False).eval()
    assert loaded.net is not model.net and all(type(m) is QSD for m in _sites(loaded))
    torch.manual_seed(1)
    x = inputs()
    torch.testing.assert_close(_run(loaded, lambda: x), _run(model, lambda: x))


def _attach(model: LightningModule, **datamodule) -> None:
    """Just what ``setup`` reads of a Trainer: its data module."""
    model._trainer = SimpleNamespace(datamodule=SimpleNamespace(**datamodule))


def test_sentiment_network_waits_for_the_vocabulary():
    tiny, inputs = TINY["SentimentClassifier"]
    kwargs = {k: v for k, v in tiny.items() if k != "vocab_size"}
    torch.manual_seed(0)
    given = tasks.SentimentClassifier(vocab_size=20, **kwargs)
    model = tasks.SentimentClassifier(**kwargs)
    assert model.net is None and model.build_network() is None and "net" not in dict(model.named_children())
    with pytest.raises(RuntimeError, match="no network yet"):
        model(*inputs())
    _attach(model, vocab_size=20, num_classes=2)
    model.setup("fit")
    assert model.vocab_size == model.hparams["vocab_size"] == 20 and model.net is None
    # the Trainer calls the hook on its device, in its precision's dtype: the network is still
    # made on the CPU in float32, with the weights the same seed gives a network built at once
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        with torch.device("meta"):
            model.configure_model()
    finally:
        torch.set_default_dtype(dtype)
    params = dict(model.net.named_parameters())
    assert {(p.device.type, p.dtype) for p in params.values()} == {("cpu", torch.float32)}
    for name, p in given.net.named_parameters():
        torch.testing.assert_close(params[name], p, msg=name)
    _run(model, inputs)


def test_sentiment_without_a_vocabulary_anywhere_names_the_option():
    model = tasks.SentimentClassifier(embedding_dim=8, hidden_size=8)
    _attach(model, num_classes=2)
    with pytest.raises(ConfigError, match="--model.vocab_size"):
        model.setup("fit")


def test_classification_task_takes_a_ready_network():
    net = nn.Linear(3, 4)
    task = tasks.ClassificationTask(net, num_classes=4)
    task.configure_model()
    assert task.net is net and task(torch.randn(2, 3)).shape == (2, 4)
    with pytest.raises(NotImplementedError, match="build_network"):
        tasks.ClassificationTask(None, num_classes=4).configure_model()


# -- the bugs of issue 14 section 1


def test_cnn_classifier_without_arguments():  # bug: AttributeError on the lazy default
    model = tasks.CNNClassifier()
    assert [type(m) for m in _sites(model)] == [Dropout] * 3
    assert all(m.rate == 0.25 for m in _sites(model))
    _run(model, lambda: (torch.randn(2, 3, 32, 32),))


def test_wrn_channel_mask_with_default_regulariser():  # bug: false "does not accept locked_dims"
    model = tasks.WRNClassifier(depth=10, widen_factor=1, mask="channel")
    regs = _sites(model)
    assert regs and all(isinstance(m, Dropout) and tuple(m.locked_dims) == (2, 3) and m.rate == 0.3 for m in regs)
    _run(model, lambda: (torch.randn(2, 3, 8, 8),))


def test_wrn_channel_mask_refuses_a_regulariser_without_locked_dims():
    with pytest.raises(ConfigError, match="mask='channel' needs a regulariser that takes locked_dims.*'weight_drop' does not"):
        tasks.WRNClassifier(depth=10, widen_factor=1, mask="channel", regulariser="weight_drop")


def test_mlp_classifier_with_a_registry_name():  # bug: raised although documented
    model = tasks.MLPClassifier(regulariser="qsd", hidden_rate=0.2)
    regs = [m for m in model.modules() if isinstance(m, QSD)]
    assert [m.rate for m in regs] == [0.2, 0.5]  # input site off; hidden rate given; output: qsd's own rate
    _run(model, lambda: (torch.randn(4, 64),))


@pytest.mark.parametrize("task", ["MLPClassifier", "CNNClassifier", "SentimentClassifier", "LanguageModel"])
def test_saved_regulariser_is_a_plain_instance(task):
    # the hyper-parameters (and so the checkpoints) hold the regulariser the CLI would pass:
    # a plain instance, whether the task got the lazy default or a registry name
    tiny, _ = TINY[task]
    default = getattr(tasks, task)(**tiny).hparams["regulariser"]
    assert type(default) is Dropout and not is_lazy(default)
    named = getattr(tasks, task)(**tiny, regulariser="qsd").hparams["regulariser"]
    assert type(named) is QSD
