"""Refresh docs/results.md from the grids' reports: ``python -m qsd_lightning.compare update-doc``."""
from qsd_lightning.compare.results_doc import main

raise SystemExit(main(prog="python scripts/update_results_doc.py"))
