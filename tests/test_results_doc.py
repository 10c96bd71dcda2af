"""``python -m qsd_lightning.compare update-doc`` (:mod:`qsd_lightning.compare.results_doc`; also
``scripts/update_results_doc.py``): docs/results.md blocks refreshed from the runner's results.md."""

import subprocess
import sys
from pathlib import Path

import pytest

from qsd_lightning import compare as C
from qsd_lightning.compare import results_doc

REPO = Path(__file__).resolve().parents[1]

RESULTS = """# mlp_digits: regulariser comparison

Made by:

```bash
python -m qsd_lightning.compare --out results/grid
```

## test error (%)

| regulariser | n | test error (%) |
|---|---|---|
| `dropout` | 5/5 | {value} |

## Figures

![test_error.png](test_error.png)
"""

DOC = """# Results

```bash
python -m qsd_lightning.compare --out results/grid
```

<!-- BEGIN results/grid -->
stale
<!-- END results/grid -->

Reading: kept as written.
"""


@pytest.fixture
def layout(tmp_path):
    grid = tmp_path / "results" / "grid"
    grid.mkdir(parents=True)
    (grid / "results.md").write_text(RESULTS.format(value="1.504 ± 0.153"))
    (grid / "test_error.png").write_bytes(b"\x89PNG fake")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results.md").write_text(DOC)
    return tmp_path, grid, docs / "results.md"


def run(root, doc, *extra):
    return results_doc.main(["--doc", str(doc), "--root", str(root), *extra])


def test_block_refreshed_figures_copied_prose_kept(layout):
    root, grid, doc = layout
    assert run(root, doc, "--check") == 1  # the stale block differs
    assert run(root, doc) == 0
    text = doc.read_text()
    assert "stale" not in text and "Made by" not in text and "# mlp_digits" not in text
    assert "#### test error (%)" in text and "| `dropout` | 5/5 | 1.504 ± 0.153 |" in text
    assert "![grid: test error](figures/results_grid_test_error.png)" in text
    assert (doc.parent / "figures" / "results_grid_test_error.png").read_bytes() == b"\x89PNG fake"
    assert text.startswith("# Results") and text.rstrip().endswith("Reading: kept as written.")
    assert run(root, doc, "--check") == 0  # idempotent
    (grid / "results.md").write_text(RESULTS.format(value="1.600 ± 0.100"))
    assert run(root, doc, "--check") == 1  # a re-run with other numbers is caught


def test_missing_results_is_an_error(layout, capsys):
    root, grid, doc = layout
    (grid / "results.md").unlink()
    assert run(root, doc) == 2
    assert "run the command printed above the block" in capsys.readouterr().err


def test_printed_command_is_the_one_that_made_the_numbers(layout):
    root, grid, doc = layout
    assert run(root, doc) == 0
    report = RESULTS.format(value="1.504 ± 0.153").replace("--out results/grid", "--seeds 0 1 2 3 4 --out results/grid")
    (grid / "results.md").write_text(report)
    assert run(root, doc, "--check") == 1  # same numbers, other command: caught
    assert run(root, doc) == 0
    text = doc.read_text()
    assert "```bash\npython -m qsd_lightning.compare --seeds 0 1 2 3 4 --out results/grid\n```\n\n<!-- BEGIN results/grid -->" in text
    assert run(root, doc, "--check") == 0


def test_block_without_a_command_above_is_an_error(layout, capsys):
    root, grid, doc = layout
    doc.write_text(DOC.replace("```bash\npython -m qsd_lightning.compare --out results/grid\n```\n", ""))
    assert run(root, doc) == 2
    assert "in a ```bash block right above it" in capsys.readouterr().err


def test_report_without_made_by_is_an_error(layout, capsys):
    root, grid, doc = layout
    (grid / "results.md").write_text(RESULTS.format(value="1").replace("Made by:", "Made somehow:"))
    assert run(root, doc) == 2
    assert "no 'Made by' command" in capsys.readouterr().err


def test_check_ignores_only_the_timing_column(layout):
    root, grid, doc = layout
    timed = RESULTS.replace("| regulariser | n | test error (%) |\n|---|---|---|\n| `dropout` | 5/5 | {value} |",
                            "| regulariser | n | test error (%) | s / run |\n|---|---|---|---|\n| `dropout` | 5/5 | {value} | {seconds} |")
    (grid / "results.md").write_text(timed.format(value="1.504 ± 0.153", seconds="12"))
    assert run(root, doc) == 0
    (grid / "results.md").write_text(timed.format(value="1.504 ± 0.153", seconds="27"))
    assert run(root, doc, "--check") == 0  # another machine's timings
    (grid / "results.md").write_text(timed.format(value="1.505 ± 0.153", seconds="12"))
    assert run(root, doc, "--check") == 1  # another number


def test_only_named_blocks_are_checked(layout, tmp_path, capsys):
    root, grid, doc = layout
    assert run(root, doc) == 0
    doc.write_text(doc.read_text() + "\n```bash\npython -m qsd_lightning.compare --out results/other\n```\n\n"
                   "<!-- BEGIN results/other -->\nnot re-run here\n<!-- END results/other -->\n")
    assert run(root, doc, "--check") == 2  # results/other has no results under this root
    assert run(root, doc, "--check", "--only", "results/grid") == 0
    before = doc.read_text()
    (grid / "results.md").write_text(RESULTS.format(value="1.600 ± 0.100"))
    assert run(root, doc, "--only", "results/grid") == 0
    after = doc.read_text()
    assert "1.600 ± 0.100" in after and "1.504" not in after
    tail = "```bash\npython -m qsd_lightning.compare --out results/other\n```\n\n<!-- BEGIN results/other -->\nnot re-run here\n"
    assert before.endswith(tail + "<!-- END results/other -->\n") and after.endswith(tail + "<!-- END results/other -->\n")
    assert run(root, doc, "--check", "--only", "results/nothing") == 2
    assert "no block named results/nothing" in capsys.readouterr().err


def test_update_doc_subcommand_and_script(layout, capsys):
    root, grid, doc = layout
    assert C.main(["update-doc", "--doc", str(doc), "--root", str(root)]) == 0  # python -m qsd_lightning.compare update-doc
    assert "1 blocks refreshed" in capsys.readouterr().out
    assert C.main(["update-doc", "--doc", str(doc), "--root", str(root), "--check"]) == 0
    script = subprocess.run([sys.executable, str(REPO / "scripts" / "update_results_doc.py"), "--doc", str(doc), "--root", str(root), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 0 and "1 blocks match their results" in script.stdout, script.stderr
