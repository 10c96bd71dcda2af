"""The one network probe of the data modules: can a download start at all?

Every data module asks :func:`probe` before it downloads, so that offline it fails within
seconds, naming the folder it looked in, instead of hanging or retrying. The connection runs
in a daemon thread joined with the timeout, so slow name resolution is bounded too, and no
process-wide socket timeout (``socket.setdefaulttimeout``) is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from ..timeouts import call_within

__all__ = ["DEFAULT_TIMEOUT", "READ_TIMEOUT", "HF_HOST", "download", "hf_offline", "host_of", "probe", "probe_urls", "reachable"]

#: seconds a probe waits for a TCP connection (name resolution included)
DEFAULT_TIMEOUT = 3.0
#: seconds a download waits for the server to send more (a stalled server ends the download)
READ_TIMEOUT = 30.0
HF_HOST = "huggingface.co"
_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}


def probe(host: str, port: int = 443, timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """None when a TCP connection to ``host:port`` opens within ``timeout`` seconds, else why
    not (``"cannot reach <host>: <reason>"``)."""

    def attempt() -> str | None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return None
        except (OSError, ValueError) as err:
            return f"cannot reach {host}: {err}"

    done, why = call_within(attempt, timeout + 1.0, "qsd-data-probe")
    return why if done else f"cannot reach {host}: no answer within {timeout:g} s"


def reachable(host: str, port: int = 443, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds."""
    return probe(host, port, timeout) is None


def host_of(url: str) -> tuple[str, int]:
    """``(host, port)`` of an http(s) URL (port 443 for https, 80 for http unless given)."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)


def probe_urls(urls, timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """None when the host of any of ``urls`` (mirrors, tried in order) answers, else why not."""
    why = "no download address"
    for url in urls:
        why = probe(*host_of(url), timeout=timeout)
        if why is None:
            return None
    return why


def hf_offline() -> str | None:
    """``"VAR=value"`` when a Hugging Face offline switch is set, else None."""
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    return None


def download(url: str, path: str | os.PathLike, md5: str | None = None, timeout: float = READ_TIMEOUT) -> None:
    """Fetch ``url`` into ``path``: every read is bounded by ``timeout`` seconds (torchvision's
    downloader sets none, so a server that stalls mid-transfer would hang it), the bytes are
    checked against ``md5``, and ``path`` appears only complete (temporary file beside it, then
    renamed). Raises ``OSError`` on a refusal, an HTTP error, a stall or a wrong checksum."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5(usedforsecurity=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "qsd-lightning"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if md5 is not None and digest.hexdigest() != md5:
            raise OSError(f"{url}: checksum mismatch (md5 {digest.hexdigest()}, expected {md5})")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
