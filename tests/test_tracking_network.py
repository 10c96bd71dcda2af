"""W&B never hangs training: the reachability probe uses the server URL's own port and needs an
HTTP answer within a bounded time, and a run that cannot start online starts offline (then
disabled) with one line on stderr. Servers are local (127.0.0.1) threads with a bounded life."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qsd_lightning import tracking
from qsd_lightning.errors import UserError

LIFETIME = 60.0  # seconds any test server may live
API_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 characters, never checked
PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (a dead proxy or server)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.connected = threading.Event()  # set on the first accepted connection
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        timer = threading.Timer(LIFETIME, self.stop.set)
        timer.daemon = True
        timer.start()
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self.connected.set()
            self.conns.append(conn)  # held open, never read from or written to
        for conn in self.conns:
            conn.close()
        self.sock.close()
        timer.cancel()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


class HangingGraphQLServer:
    """A self-hosted W&B look-alike on a non-443 port: answers GET (the probe) and the account
    query, and never answers anything else (so ``wandb.init`` times out creating the run)."""

    VIEWER = json.dumps(
        {"data": {"viewer": {"id": "VXNlcjox", "entity": "e", "username": "u", "email": "u@example.com", "flags": "{}", "teams": {"edges": []}}}}
    ).encode()

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(("GET", self.path))
                self._reply(b"ok", "text/plain")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests.append(("POST", self.path))
                if b"Viewer" in body:
                    self._reply(server.VIEWER, "application/json")
                else:
                    server.stop.wait(LIFETIME)

            def _reply(self, data: bytes, kind: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(LIFETIME, self.close)
        self.timer.daemon = True
        self.timer.start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.timer.cancel()


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()


@pytest.fixture
def http_server():
    server = HangingGraphQLServer()
    yield server
    server.close()


@pytest.fixture
def w_env(monkeypatch, tmp_path):
    """W&B pointed at 127.0.0.1 with a dummy key, no WANDB_MODE, no proxies; returns a
    function setting the server port."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)

    def point_to(port: int) -> None:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")

    return point_to


def test_endpoint_port_follows_the_url():
    assert tracking._endpoint("http://127.0.0.1:8080") == ("http", "127.0.0.1", 8080)
    assert tracking._endpoint("http://wandb.local") == ("http", "wandb.local", 80)
    assert tracking._endpoint("https://api.wandb.ai") == ("https", "api.wandb.ai", 443)
    with pytest.raises(ValueError):
        tracking._endpoint("api.wandb.ai")


def test_self_hosted_server_on_its_own_port_is_online(w_env, http_server):
    w_env(http_server.port)
    assert tracking.wandb_mode() == ("online", None)
    assert ("GET", "/") in http_server.requests  # an HTTP request to the URL's port answered


def test_silent_server_goes_offline_after_the_probe_timeout(w_env, silent_server, monkeypatch):
    w_env(silent_server.port)
    monkeypatch.setenv(tracking.PROBE_TIMEOUT_ENV, "0.5")
    mode, reason = tracking.wandb_mode()
    assert mode == "offline"
    assert f"127.0.0.1:{silent_server.port}" in reason and "no HTTP answer within 0.5 s" in reason
    assert silent_server.connected.wait(10)  # the TCP connection opened: only the HTTP answer was missing


def test_timeouts_reach_wandb_init_and_bad_values_are_user_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = tracking.WandbLogger(save_dir=str(tmp_path), init_timeout=7)
    assert logger._wandb_init["settings"]["init_timeout"] == 7.0
    monkeypatch.setenv(tracking.INIT_TIMEOUT_ENV, "4.5")
    logger = tracking.WandbLogger(save_dir=str(tmp_path), settings={"console": "off"})
    assert logger._wandb_init["settings"] == {"init_timeout": 4.5, "console": "off"}
    monkeypatch.setenv(tracking.INIT_TIMEOUT_ENV, "soon")
    with pytest.raises(UserError, match=tracking.INIT_TIMEOUT_ENV):
        tracking.WandbLogger(save_dir=str(tmp_path))


def test_failed_init_falls_back_offline_then_disabled(monkeypatch, tmp_path, capsys):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "online")  # no probe: the failure comes from wandb.init
    modes = []
    started = object()

    def init(**kwargs):
        modes.append(kwargs.get("mode"))
        if kwargs.get("mode") != "disabled":
            raise wandb.errors.CommError("Timed out initializing run\nsecond line")
        return started

    monkeypatch.setattr(wandb, "init", init)
    logger = tracking.WandbLogger(save_dir=str(tmp_path))
    assert logger.experiment is started
    assert modes == ["online", "offline", "disabled"]
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("W&B: could not start the run (CommError: Timed out initializing run)")
    assert "logging offline" in lines[0]
    assert "W&B logging is disabled" in lines[1]


CHILD = textwrap.dedent(
    """
    import json, sys
    import lightning as L
    import torch
    from qsd_lightning.tracking import WandbLogger

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=2)
    logger = WandbLogger(save_dir=sys.argv[1])
    trainer = L.Trainer(max_steps=2, logger=logger, accelerator="cpu", enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(Tiny(), data)
    run = logger.experiment
    print("RESULT " + json.dumps({"offline": bool(run.offline), "disabled": bool(run.disabled), "steps": trainer.global_step}))
    run.finish()
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["silent", "hanging_graphql"])
def test_unanswering_server_still_trains_offline(kind, request, tmp_path):
    server = request.getfixturevalue("silent_server" if kind == "silent" else "http_server")
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS and k != "WANDB_MODE"}
    env.update(
        WANDB_BASE_URL=f"http://127.0.0.1:{server.port}",
        WANDB_API_KEY=API_KEY,
        WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
        WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
        WANDB_DATA_DIR=str(tmp_path / "wandb-data"),
        WANDB_SILENT="true",
        WANDB_ERROR_REPORTING="false",  # else wandb's exit flushes its telemetry to the dead server (~25 s)
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        QSD_WANDB_PROBE_TIMEOUT="1",
        QSD_WANDB_INIT_TIMEOUT="2",
    )
    # the bound: without it wandb.init retries for minutes, then raises CommError
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "runs")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result == {"offline": True, "disabled": False, "steps": 2}
    notices = [line for line in proc.stderr.splitlines() if line.startswith("W&B:")]
    assert len(notices) == 1, proc.stderr[-3000:]
    if kind == "silent":
        assert f"no answer from 127.0.0.1:{server.port}" in notices[0]
        assert server.connected.wait(10)
    else:
        assert notices[0].startswith("W&B: could not start the run (CommError"), notices
        assert ("GET", "/") in server.requests
    assert "logging offline to" in notices[0] and "wandb sync" in notices[0]
