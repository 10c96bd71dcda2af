"""Bounding a blocking call in time without touching the process-wide socket timeout."""

from __future__ import annotations

import threading
from typing import Any, Callable

__all__ = ["call_within"]


def call_within(fn: Callable[[], Any], seconds: float, name: str) -> tuple[bool, Any]:
    """``(True, fn())`` when ``fn`` returns within ``seconds``, else ``(False, None)``. ``fn`` runs
    in a daemon thread (named ``name``) joined with the limit, so a slow name lookup or a
    silent server is bounded too; a call still running is left to finish on its own."""
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(fn()), name=name, daemon=True)
    thread.start()
    thread.join(seconds)
    return (True, outcome[0]) if outcome else (False, None)
