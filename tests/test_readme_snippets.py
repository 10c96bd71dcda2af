"""Every ```python block of README.md runs as written.

Each block runs in a fresh interpreter (a block may register a regulariser name: the test
process's registry stays as it is), in a temporary directory, offline (W&B disabled, Hugging
Face offline). A block that needs a download may opt out only visibly, with a line
``# doctest: skip`` in the block itself; the skip then shows in the test report.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from .conftest import REPO

README = REPO / "README.md"
SKIP_MARKER = "# doctest: skip"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


def python_blocks() -> list[tuple[int, str]]:
    """``(line, code)`` of each ```python block of the README (line: the fence's, 1-based)."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 1, textwrap.dedent(m.group("body"))) for m in _FENCE.finditer(text)]


BLOCKS = python_blocks()


def test_readme_has_python_blocks():
    assert BLOCKS, "README.md has no ```python block: the extraction pattern no longer matches"


@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_snippet_runs(code, tmp_path):
    if SKIP_MARKER in code:
        pytest.skip(f"marked {SKIP_MARKER!r} in README.md")
    script = tmp_path / "snippet.py"
    script.write_text(code)
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    env.pop("QSD_LIGHTNING_PLUGINS", None)
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, f"README snippet failed:\n{code}\n--- stderr ---\n{out.stderr[-4000:]}"
