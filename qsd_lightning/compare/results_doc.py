"""Refresh the generated parts of docs/results.md from the comparison runner's output.

docs/results.md prints each grid as a fenced ``bash`` block holding the ``python -m
qsd_lightning.compare ... --out results/<name>`` command, directly followed by

    <!-- BEGIN results/<name> -->
    ... (generated: do not edit by hand) ...
    <!-- END results/<name> -->

This replaces the command with the one recorded under "Made by" in
``results/<name>/results.md`` (the command that writes that report: run again, it skips the
finished runs, runs any missing ones and writes the same tables), replaces the block with
that report's body (title and "Made by" dropped; headings moved down two levels), and copies the
grid's PNGs to ``docs/figures/results_<name>_<plot>.png``, linking them. So the command printed
above a table is always the one that made it; after re-running the commands,
``python -m qsd_lightning.compare update-doc`` puts the new numbers in the doc, and ``--check`` says
whether a re-run reproduced the published ones, command included (exit 1 if not). The check
leaves out the wall-clock ``s / run`` column, which depends on the machine and its load.

    python -m qsd_lightning.compare update-doc            # rewrite docs/results.md in place
    python -m qsd_lightning.compare update-doc --check    # compare only; exit 1 on a difference
    python -m qsd_lightning.compare update-doc --check --root ../clone --only results/digits
                                                           # one grid re-run elsewhere, e.g. a fresh clone

``python scripts/update_results_doc.py [...]`` runs the same.
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["DocError", "render", "without_timings", "main"]

BLOCK = re.compile(r"(<!-- BEGIN (?P<name>[^\s>]+) -->\n)(?P<body>.*?)(<!-- END (?P=name) -->)", re.S)
COMMAND = re.compile(r"```bash\n(?P<command>[^\n]*)\n```\n\n$")
MADE_BY = re.compile(r"^Made by:\n\n```bash\n(?P<command>[^\n]*)\n```$", re.M)
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


def made_by(results_md: str, name: str) -> str:
    """The grid command recorded in a runner report."""
    match = MADE_BY.search(results_md)
    if match is None:
        raise DocError(f"{name}/results.md has no 'Made by' command: re-run the grid to rewrite it")
    return match["command"]


def render(doc: str, root: Path, figures: Path, write_figures: bool, only: Sequence[str] | None = None) -> str:
    """``doc`` with every block (or those named in ``only``), and the command printed above it,
    refreshed from ``root/<name>/results.md``."""
    figures_rel = "figures"
    pieces: list[str] = []
    done = 0
    for match in BLOCK.finditer(doc):
        if only is not None and match["name"] not in only:
            continue
        before = doc[done:match.start()]
        command = COMMAND.search(before)
        if command is None:
            raise DocError(f"block {match['name']}: put its command, on one line, in a ```bash block right above it")
        source = root / match["name"] / "results.md"
        if not source.is_file():
            raise DocError(f"{source} not found: run the command printed above the block first")
        report = source.read_text()
        pieces.append(before[:command.start("command")] + made_by(report, match["name"]) + before[command.end("command"):])
        pieces.append(render_block(match, report, source.parent, figures, figures_rel, write_figures))
        done = match.end()
    pieces.append(doc[done:])
    return "".join(pieces)


def render_block(match: re.Match, report: str, grid: Path, figures: Path, figures_rel: str, write_figures: bool) -> str:
    """One ``BEGIN``/``END`` block refreshed from its grid's report (``report``, the text of
    ``grid/results.md``)."""
    name = match["name"]

    def copy_figure(file: str, target: str) -> None:
        if write_figures and (grid / file).is_file():
            figures.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(grid / file, figures / target)

    body = grid_body(report, name, figures_rel, copy_figure)
    return match.group(1) + body + match.group(4)


def without_timings(doc: str) -> str:
    """``doc`` with the cells of every table's last column headed ``s / run`` blanked."""
    out, timed = [], False
    for line in doc.splitlines(True):
        if not line.startswith("|"):
            timed = False
        elif line.rstrip().endswith("| s / run |"):
            timed = True
        elif timed and not line.startswith("|---"):
            line = line[: line.rstrip().rstrip("|").rstrip().rfind("|")] + "| · |\n"
        out.append(line)
    return "".join(out)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    p.add_argument("--root", type=Path, default=Path("."), help="folder the block names are relative to")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 if the doc would change")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these blocks (e.g. results/digits); the rest are left as they are")
    args = p.parse_args(None if argv is None else list(argv))
    doc = args.doc.read_text()
    names = [m["name"] for m in BLOCK.finditer(doc)]
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        print(f"error: no block named {', '.join(unknown)} in {args.doc}; blocks: {', '.join(names)}", file=sys.stderr)
        return 2
    try:
        new = render(doc, args.root, args.doc.parent / "figures", write_figures=not args.check, only=args.only)
    except DocError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    blocks = len(set(args.only)) if args.only else len(names)
    if args.check:
        published, regenerated = without_timings(doc), without_timings(new)
        if published == regenerated:
            print(f"{args.doc}: {blocks} blocks match their results (s / run not compared)")
            return 0
        sys.stdout.writelines(difflib.unified_diff(published.splitlines(True), regenerated.splitlines(True), str(args.doc), "regenerated"))
        return 1
    args.doc.write_text(new)
    print(f"{args.doc}: {blocks} blocks refreshed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
