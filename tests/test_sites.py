"""One mechanism from a configured regulariser to one module per site (regularisers/sites.py),
used by every task and by replace_dropout (the tasks themselves: tests/test_tasks_construct.py)."""

from __future__ import annotations

import pytest
from jsonargparse import lazy_instance
from torch import nn

from qsd_lightning.errors import ConfigError
from qsd_lightning.regularisers import QSD, Dropout, LockedDropout, NoRegulariser, replace_dropout
from qsd_lightning.regularisers.sites import Sites, is_lazy, resolve


def test_resolve_every_kind_of_spec():
    lazy = lazy_instance(QSD, rate=0.2, gamma=4.0)
    assert is_lazy(lazy) and not is_lazy(QSD(rate=0.2)) and not is_lazy("qsd")
    made = [
        resolve("qsd", rate=0.2, gamma=4.0),
        resolve("qsd_lightning.regularisers.QSD", rate=0.2, gamma=4.0),
        resolve({"class_path": "qsd", "init_args": {"rate": 0.2, "gamma": 4.0}}),
        resolve(QSD, rate=0.2, gamma=4.0),
        resolve(lazy),
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
