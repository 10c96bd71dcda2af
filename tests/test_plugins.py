"""The user's own regulariser, end to end: registered in the user's module, declared by an
installed package (entry-point group ``qsd_lightning.regularisers``) or named in
``QSD_LIGHTNING_PLUGINS``, and selected by name from YAML, the command line and the comparison
runner, with its extra arguments reaching every site.

The plugins are real: a package plus its ``*.dist-info`` (METADATA, entry_points.txt) written
to a temporary directory on ``sys.path`` / ``PYTHONPATH``, found by importlib.metadata.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from qsd_lightning import regularisers as R
from qsd_lightning.errors import UserError
from qsd_lightning.regularisers import registry

from .conftest import CONFIGS

PLUGIN_SOURCE = '''
import os

import torch
from qsd_lightning import regularisers as R


@R.register("{name}")
class {cls}(R.Regulariser):
    """Multiplicative Gaussian noise of standard deviation ``scale * rate``."""

    def __init__(self, rate: float = 0.5, scale: float = 1.0) -> None:
        super().__init__(rate)
        self.scale = scale
        log = os.environ.get("MYPLUG_LOG")
        if log:  # one line per module built: what every site received
            with open(log, "a") as f:
                f.write(f"{{type(self).__mro__[0].__name__}} rate={{self.rate}} scale={{self.scale}}\\n")

    def forward(self, x):
        if not self.training or self.rate == 0.0:
            return x
        return x * (1 + self.scale * self.rate * torch.randn_like(x))
'''

TINY = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
]


def make_distribution(root: Path, package: str, entry_points: dict[str, str], source: str) -> Path:
    """``root/package/__init__.py`` and ``root/package-0.1.dist-info`` declaring ``entry_points``."""
    (root / package).mkdir(parents=True, exist_ok=True)
    (root / package / "__init__.py").write_text(source)
    info = root / f"{package}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{lines}")
    return root


def scales_logged(log: Path) -> list[str]:
    return log.read_text().split("\n")[:-1]


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A site directory on ``sys.path`` (in process); everything registered from it is removed after."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    before_modules = set(sys.modules)
    before_names = set(registry._REGISTRY)
    yield site
    for name in set(registry._REGISTRY) - before_names:
        registry._unregister(name)
    for module in set(sys.modules) - before_modules:
        if module.startswith("tp_"):
            del sys.modules[module]
    registry._IMPORTED_LOCAL.clear()
    importlib.invalidate_caches()


def _env(site: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run(args: list[str], site: Path, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=_env(site, **env), capture_output=True, text=True, timeout=timeout
    )


# --------------------------------------------------------------------------- in process
def test_entry_point_loaded_lazily_by_name(plugin_path):
    make_distribution(plugin_path, "tp_lazy", {"tp_lazy_noise": "tp_lazy:LazyNoise"},
                      PLUGIN_SOURCE.format(name="tp_lazy_noise", cls="LazyNoise"))
    importlib.invalidate_caches()
    R.get("qsd"), R.build("dropout", rate=0.1), R.name_of(R.QSD())
    assert "tp_lazy" not in sys.modules, "looking up a built-in name must not import plugins"
    module = R.build("tp_lazy_noise", rate=0.2, scale=5)
    assert "tp_lazy" in sys.modules and type(module).__name__ == "LazyNoise"
    assert module.scale == 5 and R.name_of(module) == "tp_lazy_noise"
    assert "tp_lazy_noise" in R.available()
    # the alias path a saved config names resolves in a fresh lookup too
    from qsd_lightning.regularisers import names

    assert names.tp_lazy_noise.__mro__[1] is type(module)


def test_available_loads_every_plugin(plugin_path):
    make_distribution(plugin_path, "tp_all", {"tp_all_noise": "tp_all:AllNoise"},
                      PLUGIN_SOURCE.format(name="tp_all_noise", cls="AllNoise"))
    importlib.invalidate_caches()
    assert "tp_all_noise" in R.available()
    with pytest.raises(ValueError, match=r"valid choices: .*tp_all_noise.*Did you mean 'tp_all_noise'"):
        R.get("tp_all_nois")


def test_entry_point_to_an_undecorated_class_registers_it(plugin_path):
    source = PLUGIN_SOURCE.format(name="unused", cls="Plain").replace('@R.register("unused")\n', "")
    make_distribution(plugin_path, "tp_plain", {"tp_plain_noise": "tp_plain:Plain"}, source)
    importlib.invalidate_caches()
    cls = R.get("tp_plain_noise")
    assert cls.__name__ == "Plain" and R.name_of(cls(scale=2)) == "tp_plain_noise"


def test_same_class_by_decorator_and_entry_point_is_not_an_error(plugin_path):
    make_distribution(plugin_path, "tp_twice", {"tp_twice_noise": "tp_twice:TwiceNoise"},
                      PLUGIN_SOURCE.format(name="tp_twice_noise", cls="TwiceNoise"))
    importlib.invalidate_caches()
    import tp_twice  # the decorator registers it first ...

    assert R.get("tp_twice_noise") is tp_twice.TwiceNoise  # ... then the entry point, the same class
    R.register("tp_twice_noise")(tp_twice.TwiceNoise)  # and once more by hand


def test_two_classes_under_one_name_is_an_error(plugin_path):
    make_distribution(plugin_path, "tp_clash", {"qsd": "tp_clash:Clash"}, PLUGIN_SOURCE.format(name="tp_clash_noise", cls="Clash"))
    importlib.invalidate_caches()
    with pytest.raises(R.PluginError) as info:
        R.available()
    message = str(info.value)
    assert "'qsd = tp_clash:Clash'" in message and "already registered to qsd_lightning" in message
    assert "\n" not in message and isinstance(info.value, UserError)
    with pytest.raises(ValueError, match="already registered"):
        R.register("dropout")(R.QSD)


def test_broken_plugin_is_one_line_naming_the_entry_point(plugin_path):
    make_distribution(plugin_path, "tp_broken", {"tp_broken_noise": "tp_broken:Missing"},
                      "import torch\nraise RuntimeError('plugin needs\\na GPU driver')\n")
    importlib.invalidate_caches()
    assert R.get("qsd") is R.QSD  # a broken plugin does not stop built-in names
    with pytest.raises(R.PluginError) as info:
        R.get("tp_broken_noise")
    message = str(info.value)
    assert message == (
        "regulariser plugin 'tp_broken_noise = tp_broken:Missing' (entry point group qsd_lightning.regularisers "
        "of tp_broken 0.1) failed to import: RuntimeError: plugin needs a GPU driver"
    )


def test_local_module_from_environment(plugin_path, monkeypatch):
    (plugin_path / "tp_local.py").write_text(PLUGIN_SOURCE.format(name="tp_local_noise", cls="LocalNoise"))
    importlib.invalidate_caches()
    monkeypatch.setenv(registry.PLUGINS_ENV, " tp_local , ")
    assert R.build("tp_local_noise", scale=3).scale == 3
    monkeypatch.setenv(registry.PLUGINS_ENV, "tp_local,tp_no_such_module")
    with pytest.raises(R.PluginError, match=r"^QSD_LIGHTNING_PLUGINS: module 'tp_no_such_module' failed to import: "
                                            r"ModuleNotFoundError: .*PYTHONPATH"):
        R.available()


def test_user_class_arguments_reach_every_site_in_process():
    @R.register("tp_inline_noise")
    class InlineNoise(R.Regulariser):
        def __init__(self, rate: float = 0.5, scale: float = 1.0, *, tag: str = "") -> None:
            super().__init__(rate)
            self.scale, self.tag = scale, tag

        def forward(self, x):
            return x

    try:
        from qsd_lightning.tasks import MLPClassifier

        model = MLPClassifier(in_features=4, num_classes=3, hidden_sizes=[5, 5],
                              regulariser=R.build("tp_inline_noise", rate=0.3, scale=5.0, tag="x"))
        sites = [m for m in model.modules() if isinstance(m, InlineNoise)]
        assert sites and all(m.scale == 5.0 and m.tag == "x" for m in sites)
        assert repr(sites[0]) == "InlineNoise(rate=0.3, scale=5.0, tag='x')"
    finally:
        registry._unregister("tp_inline_noise")


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def myplug(tmp_path_factory) -> Path:
    """The ``myplug`` distribution: ``myplug_noise = myplug:MyNoise`` (decorated as well)."""
    site = tmp_path_factory.mktemp("myplug_site")
    return make_distribution(site, "myplug", {"myplug_noise": "myplug:MyNoise"},
                             PLUGIN_SOURCE.format(name="myplug_noise", cls="MyNoise"))


def _checkpoint_regulariser(root: Path) -> dict:
    (ckpt,) = root.rglob("last.ckpt")
    return torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]["regulariser"]


def test_cli_entry_point_by_name_with_arguments(myplug, tmp_path):
    log = tmp_path / "sites.log"
    out = run(["-m", "qsd_lightning", "fit", "--config", str(CONFIGS / "mlp_digits.yaml"),
               "--model.regulariser", "myplug_noise", "--model.regulariser.scale", "5", *TINY,
               f"--trainer.default_root_dir={tmp_path / 'run'}"], myplug, cwd=tmp_path, MYPLUG_LOG=str(log))
    assert out.returncode == 0, out.stderr[-3000:]
    built = scales_logged(log)
    # the configured template and one module per site (2 hidden layers + input: the MLP's sites)
    assert len(built) >= 3 and set(built) == {"myplug_noise rate=0.3 scale=5.0"}, built
    assert _checkpoint_regulariser(tmp_path / "run") == {
        "class_path": "qsd_lightning.regularisers.names.myplug_noise", "init_args": {"rate": 0.3, "scale": 5.0}}
    # the saved config names the alias by its path: it resolves in a fresh process (lazily)
    check = run(["-c", "from jsonargparse._util import import_object; import sys; "
                       "print(import_object('qsd_lightning.regularisers.names.myplug_noise').__mro__[1].__name__, "
                       "'myplug' in sys.modules)"], myplug, cwd=tmp_path)
    assert check.stdout.split() == ["MyNoise", "True"], check.stderr[-2000:]


def test_yaml_class_path_by_name_from_a_local_module(myplug, tmp_path):
    # the same module, this time named by QSD_LIGHTNING_PLUGINS (no distribution on the path)
    local = tmp_path / "local"
    local.mkdir()
    (local / "my_local_noise.py").write_text(PLUGIN_SOURCE.format(name="my_noise", cls="MyLocalNoise"))
    config = tmp_path / "noise.yaml"
    config.write_text(textwrap.dedent("""\
        model:
          init_args:
            regulariser:
              class_path: my_noise
              init_args:
                rate: 0.25
                scale: 5
        """))
    log = tmp_path / "sites.log"
    out = run(["-m", "qsd_lightning", "fit", "--config", str(CONFIGS / "mlp_digits.yaml"), "--config", str(config),
               *TINY, f"--trainer.default_root_dir={tmp_path / 'run'}"], local, cwd=tmp_path,
              MYPLUG_LOG=str(log), QSD_LIGHTNING_PLUGINS="my_local_noise")
    assert out.returncode == 0, out.stderr[-3000:]
    built = scales_logged(log)
    assert len(built) >= 3 and set(built) == {"my_noise rate=0.25 scale=5.0"}, built
    assert _checkpoint_regulariser(tmp_path / "run")["init_args"] == {"rate": 0.25, "scale": 5.0}


def test_compare_runner_with_plugin_spec(myplug, tmp_path):
    log = tmp_path / "sites.log"
    out = run(["-m", "qsd_lightning.compare", "--config", str(CONFIGS / "mlp_digits.yaml"),
               "--regulariser", "myplug_noise:scale=5", "--seeds", "0",
               "--override", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
               "trainer.limit_test_batches=1", "--out", str(tmp_path / "cmp")], myplug, cwd=tmp_path,
              MYPLUG_LOG=str(log))
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    built = scales_logged(log)
    # the runner checks the spec by building it once (scale=5), then the run builds every site
    runs = [line for line in built if line.startswith("myplug_noise ")]
    assert len(runs) >= 3 and all(line.endswith("scale=5.0") for line in runs), built
    assert all(line.endswith("scale=5") or line.endswith("scale=5.0") for line in built), built
    assert "myplug_noise:scale=5" in (tmp_path / "cmp" / "results.csv").read_text()


def test_cli_broken_plugin_is_one_line(tmp_path):
    site = make_distribution(tmp_path / "site", "tp_cli_broken", {"tp_cli_broken_noise": "tp_cli_broken:Nope"},
                             "import no_such_dependency_xyz\n")
    base = ["-m", "qsd_lightning", "fit", "--config", str(CONFIGS / "mlp_digits.yaml"), *TINY,
            f"--trainer.default_root_dir={tmp_path / 'run'}"]
    out = run([*base, "--model.regulariser", "tp_cli_broken_noise"], site, cwd=tmp_path, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "error: regulariser plugin 'tp_cli_broken_noise = tp_cli_broken:Nope' (entry point group "
        "qsd_lightning.regularisers of tp_cli_broken 0.1) failed to import: ModuleNotFoundError: "
        "No module named 'no_such_dependency_xyz'"
    ), out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_cli_unknown_name_lists_plugin_names(myplug, tmp_path):
    out = run(["-m", "qsd_lightning", "fit", "--config", str(CONFIGS / "mlp_digits.yaml"), *TINY,
               "--model.regulariser", "myplug_nois", f"--trainer.default_root_dir={tmp_path / 'run'}"],
              myplug, cwd=tmp_path, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert "unknown regulariser 'myplug_nois'" in line and "myplug_noise" in line, out.stderr[-2000:]
