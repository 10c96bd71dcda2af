"""Refresh the generated parts of docs/results.md from the comparison runner's output.

docs/results.md prints, above each table, the ``python -m qsd_lightning.compare ... --out
results/<name>`` command that made it, followed by a block

    <!-- BEGIN results/<name> -->
    ... (generated: do not edit by hand) ...
    <!-- END results/<name> -->

This script replaces every such block with the body of ``results/<name>/results.md`` (title and
"Made by" paragraph dropped, since the doc prints the command; headings moved down two levels)
and copies the grid's PNGs to ``docs/figures/results_<name>_<plot>.png``, linking them. So after
re-running the commands, ``python scripts/update_results_doc.py`` puts the new numbers in the
doc, and ``--check`` says whether a re-run reproduced the published ones (exit 1 if not).

    python scripts/update_results_doc.py                 # rewrite docs/results.md in place
    python scripts/update_results_doc.py --check         # compare only; exit 1 on a difference
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import sys
from pathlib import Path

BLOCK = re.compile(r"(<!-- BEGIN (?P<name>[^\s>]+) -->\n)(?P<body>.*?)(<!-- END (?P=name) -->)", re.S)
IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<file>[^)\s]+\.png)\)")


class DocError(RuntimeError):
    """A block names results that are not there."""


def grid_body(results_md: str, name: str, figures_rel: str, copy_figure) -> str:
    """The doc's version of one grid's ``results.md``: from its first ``##`` section on, headings
    two levels down, images renamed to ``results_<name>_<file>`` under ``figures_rel``."""
    lines = results_md.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("## ")), None)
    if start is None:
        raise DocError(f"{name}/results.md has no '## ' section")
    slug = Path(name).name
    out: list[str] = []
    for line in lines[start:]:
        if line.startswith("## Figures"):
            continue
        if line.startswith("#"):
            line = "##" + line
        match = IMAGE.fullmatch(line.strip())
        if match:
            target = f"results_{slug}_{match['file']}"
            copy_figure(match["file"], target)
            line = f"![{slug}: {Path(match['file']).stem.replace('_', ' ')}]({figures_rel}/{target})"
        out.append(line)
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out) + "\n"


def render(doc: str, root: Path, figures: Path, write_figures: bool) -> str:
    """``doc`` with every block refreshed from ``root/<name>/results.md``."""
    figures_rel = "figures"

    def replace(match: re.Match) -> str:
        name = match["name"]
        grid = root / name
        source = grid / "results.md"
        if not source.is_file():
            raise DocError(f"{source} not found: run the command printed above the block first")

        def copy_figure(file: str, target: str) -> None:
            if write_figures and (grid / file).is_file():
                figures.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(grid / file, figures / target)

        body = grid_body(source.read_text(), name, figures_rel, copy_figure)
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, doc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    p.add_argument("--root", type=Path, default=Path("."), help="folder the block names are relative to")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 if the doc would change")
    args = p.parse_args(argv)
    doc = args.doc.read_text()
    try:
        new = render(doc, args.root, args.doc.parent / "figures", write_figures=not args.check)
    except DocError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    blocks = len(BLOCK.findall(doc))
    if args.check:
        if new == doc:
            print(f"{args.doc}: {blocks} blocks match their results")
            return 0
        sys.stdout.writelines(difflib.unified_diff(doc.splitlines(True), new.splitlines(True), str(args.doc), "regenerated"))
        return 1
    args.doc.write_text(new)
    print(f"{args.doc}: {blocks} blocks refreshed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
