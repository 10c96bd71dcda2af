"""Weights & Biases tracking that never prompts and never hangs.

:class:`WandbLogger` is Lightning's logger with two additions. Before the run starts it decides
whether W&B can be reached: ``WANDB_MODE`` (online/offline/disabled) always wins; otherwise,
with no API key or no HTTP answer from the server (``WANDB_BASE_URL``, probed on its own port
within ``QSD_WANDB_PROBE_TIMEOUT`` seconds), the run goes offline and says in one line how to
sync it later. And when the run fails to start all the same (``wandb.init`` gives up after
``QSD_WANDB_INIT_TIMEOUT`` seconds, or raises), it starts again offline (disabled if offline
fails too) with one line on stderr: training always runs. :class:`LoggerSaveConfigCallback`
writes the resolved CLI config and parameter counts into the run config, and keeps the W&B run
id in every checkpoint so that ``--ckpt_path`` resumes the same run.
"""

from __future__ import annotations

import http.client
import netrc
import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

from . import _lightning_compat as compat
from .errors import ConfigError
from .timeouts import call_within
from .regularisers.backend import describe as describe_backend

__all__ = [
    "WandbLogger",
    "LoggerSaveConfigCallback",
    "wandb_mode",
    "CHECKPOINT_KEY",
    "PROBE_TIMEOUT_ENV",
    "INIT_TIMEOUT_ENV",
]

CHECKPOINT_KEY = "wandb_run_id"

PROBE_TIMEOUT_ENV = "QSD_WANDB_PROBE_TIMEOUT"
"""Environment variable: seconds the W&B server has to answer one HTTP request before the run
goes offline (default 3)."""
INIT_TIMEOUT_ENV = "QSD_WANDB_INIT_TIMEOUT"
"""Environment variable: seconds ``wandb.init`` may wait for the server before the run goes
offline (default 30; wandb may spend up to ~10 s more resolving the account first)."""
DEFAULT_PROBE_TIMEOUT = 3.0
DEFAULT_INIT_TIMEOUT = 30.0
_FALLBACK_BASE_URL = "https://api.wandb.ai"
_DEFAULT_PORTS = {"https": 443, "http": 80}


def _seconds(value: float | str | None, env: str, default: float) -> float:
    """``value``, else ``$env``, else ``default``, as a positive number of seconds."""
    source = f"{env}={os.environ.get(env)!r}" if value is None else repr(value)
    if value is None:
        value = os.environ.get(env, "").strip() or default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"W&B timeout {source} is not a positive number of seconds")
    return seconds


def _base_url() -> str:
    """The W&B server URL: ``$WANDB_BASE_URL``, else wandb's own default."""
    url = os.environ.get("WANDB_BASE_URL", "").strip()
    if url:
        return url
    try:
        import wandb

        return str(wandb.Settings().base_url or _FALLBACK_BASE_URL)
    except Exception:  # wandb missing or changed: the historical default
        return _FALLBACK_BASE_URL


def _endpoint(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a W&B server URL; the port defaults by scheme (443 https,
    80 http). ValueError for a URL that is not http(s) with a host."""
    parts = urlparse(url)
    scheme = (parts.scheme or "").lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL with a host")
    port = parts.port  # ValueError for a port out of range
    return scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS[scheme]


def _has_credentials(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _probe(url: str, timeout: float) -> str | None:
    """None when an HTTP server answers a GET of ``url`` (any status) within ``timeout``
    seconds, else why not. The request runs in a daemon thread joined with ``timeout``, so
    slow name resolution is bounded too; no process-wide socket timeout is touched. A TLS
    certificate error counts as an answer: wandb may trust what urllib does not, and
    ``wandb.init`` is bounded anyway."""

    def attempt() -> str | None:
        request = urllib.request.Request(url, method="GET", headers={"User-Agent": "qsd-lightning-probe"})
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                return None
        except urllib.error.HTTPError as err:  # a status line: the server answered
            err.close()
            return None
        except urllib.error.URLError as err:
            return None if isinstance(err.reason, ssl.SSLError) else str(err.reason)
        except (OSError, http.client.HTTPException, ValueError) as err:
            return str(err) or type(err).__name__

    done, why = call_within(attempt, timeout, "qsd-wandb-probe")
    return why if done else f"no HTTP answer within {timeout:g} s"


def wandb_mode(offline: bool = False, probe_timeout: float | None = None) -> tuple[str, str | None]:
    """(mode, reason): the W&B mode to use and, when forced offline, why.

    ``WANDB_MODE`` wins, then ``offline``; otherwise online when there is an API key and the
    server (``WANDB_BASE_URL`` or wandb's default, on the URL's own port: 443 for https, 80
    for http unless given) answers an HTTP request within ``probe_timeout`` seconds (default
    ``$QSD_WANDB_PROBE_TIMEOUT``, else 3), offline with the reason otherwise.
    """
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        return env, None
    if offline:
        return "offline", None
    timeout = _seconds(probe_timeout, PROBE_TIMEOUT_ENV, DEFAULT_PROBE_TIMEOUT)
    url = _base_url()
    try:
        _, host, port = _endpoint(url)
    except ValueError as err:
        return "offline", f"WANDB_BASE_URL {err}"
    if not _has_credentials(host):
        return "offline", "no W&B API key found (run `wandb login` to log online)"
    problem = _probe(url, timeout)
    if problem is not None:
        return "offline", f"no answer from {host}:{port} ({problem})"
    return "online", None


def _with_init_timeout(settings: Any, seconds: float) -> Any:
    """``wandb.init``'s ``settings`` (None, dict or ``wandb.Settings``) with ``init_timeout``
    set to ``seconds`` unless the caller set it."""
    if settings is None:
        return {"init_timeout": seconds}
    if isinstance(settings, dict):
        return {"init_timeout": seconds, **settings}
    if "init_timeout" in getattr(settings, "model_fields_set", {"init_timeout"}):
        return settings
    return settings.model_copy(update={"init_timeout": seconds})


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that goes offline by itself when W&B is out of reach.

    Args:
        project: W&B project.
        save_dir: where the run directory (``wandb/``) goes.
        offline: force offline mode.
        init_timeout: seconds ``wandb.init`` waits for the server before the run goes offline
            (default ``$QSD_WANDB_INIT_TIMEOUT``, else 30); wandb may first spend up to
            ~10 s more resolving the account. A ``settings`` argument that sets
            ``init_timeout`` itself wins.
        probe_timeout: seconds the server has to answer the HTTP probe made here, before the
            run starts (default ``$QSD_WANDB_PROBE_TIMEOUT``, else 3).
        kwargs: everything else Lightning's WandbLogger and ``wandb.init`` take.

    Whatever goes wrong when the run starts (a timeout, ``CommError``, any exception from
    ``wandb.init``), it starts again offline, then disabled if offline fails too, with one
    line on stderr each time: W&B never stops training.
    """

    def __init__(
        self,
        project: str = "qsd-lightning",
        save_dir: Optional[str] = None,
        offline: bool = False,
        init_timeout: Optional[float] = None,
        probe_timeout: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        init_timeout = _seconds(init_timeout, INIT_TIMEOUT_ENV, DEFAULT_INIT_TIMEOUT)
        mode, reason = wandb_mode(offline, probe_timeout=probe_timeout)
        save_dir = str(Path(save_dir if save_dir is not None else os.getcwd()).resolve())  # None: the CLI fills in trainer.default_root_dir; wandb caches its first working directory
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        if reason:
            _say(f"W&B: {reason}; {self._offline_note(save_dir)}")
        kwargs["settings"] = _with_init_timeout(kwargs.get("settings"), init_timeout)
        super().__init__(project=project, save_dir=save_dir, offline=mode == "offline", mode=mode, **kwargs)
        init = compat.wandb_init_kwargs(self)
        if init.get("anonymous") is None:  # deprecated in wandb; avoid its warning
            init.pop("anonymous", None)

    @staticmethod
    def _offline_note(save_dir: str) -> str:
        run_dir = Path(save_dir) / "wandb"
        return f"logging offline to {run_dir}. Sync later with: wandb sync {run_dir}/offline-run-*"

    @property
    def experiment(self) -> Any:
        """The W&B run (Lightning's property), started offline, or disabled, when it cannot
        start as asked."""
        while True:
            try:
                return super().experiment
            except Exception as err:
                init = compat.wandb_init_kwargs(self)
                mode = str(init.get("mode") or "online").lower()
                if compat.wandb_experiment_if_started(self) is not None or mode == "disabled":
                    raise
                if mode == "offline":
                    _say(f"W&B: could not start the offline run ({_first_line(err)}); W&B logging is disabled for this run")
                    init["mode"] = "disabled"
                else:
                    _say(f"W&B: could not start the run ({_first_line(err)}); {self._offline_note(self.save_dir or '.')}")
                    init["mode"] = "offline"

    def continue_run(self, run_id: str) -> None:
        """Resume W&B run ``run_id`` (call before the run starts)."""
        if compat.wandb_experiment_if_started(self) is not None:
            return
        compat.set_wandb_run_id(self, run_id)
        compat.wandb_init_kwargs(self).update(id=run_id, resume="allow")


@rank_zero_only
def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Saves config.yaml in the log dir (Lightning's behaviour) and, on rank zero, sends the
    resolved config, the seed and parameter counts to every W&B logger's run config."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, _LightningWandbLogger)]
        if not wandb_loggers:
            return
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_check=True))
        params = {
            "params/total": sum(p.numel() for p in pl_module.parameters()),
            "params/trainable": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
        }
        for lg in wandb_loggers:
            lg.log_hyperparams({**config, **params, "qsd_backend": describe_backend()})

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        for lg in trainer.loggers:
            if isinstance(lg, _LightningWandbLogger) and lg.version:
                checkpoint[CHECKPOINT_KEY] = lg.version


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` whose ``save_dir`` defaults to the Trainer's
    ``default_root_dir`` (filled in by the CLI), so ``--trainer.default_root_dir`` moves it."""

    def __init__(self, save_dir: Optional[str] = None, name: str = "csv", **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir if save_dir is not None else os.getcwd(), name=name, **kwargs)
