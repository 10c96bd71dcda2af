"""Compare regularisers over seeds: run a grid, collect the logs, test, plot.

::

    python -m qsd_lightning.compare --config configs/mlp_digits.yaml \\
        --regulariser dropout --regulariser qsd:gamma=4,mode=coupled --regulariser none \\
        --seeds 0 1 2 3 4 --override trainer.max_epochs=10 --out results/digits

``--regulariser NAME[:ARG=VALUE,ARG=VALUE...]`` names a registered regulariser and its
arguments (``qsd:gamma=4,mode=release,rate=0.5``); give it as often as you like, several QSD
settings included. Arguments not given keep the config's values (its ``rate``, for one).
``--override KEY=VALUE`` is any CLI option without its dashes (``trainer.max_epochs=10``,
``data.data_dir=/path/to/mnist``).

Every run is one subprocess (``python -m qsd_lightning.compare _run``) that builds the
LightningCLI exactly as ``python -m qsd_lightning fit`` does, fits, then tests the best
checkpoint. Runs live in ``<out>/runs/<regulariser>/seed<N>/`` with their own CSV log
(``csv/version_0/metrics.csv``), checkpoints, ``command.txt`` and ``log.txt``; a run is
finished when its ``result.json`` exists, and finished runs are skipped, so the grid resumes
where it stopped. A failed run is reported (with the tail of its log) and the grid goes on.

Outputs in ``<out>``: ``results.csv`` (one row per run: test metrics, final validation
sparsity per layer, weight statistics), ``results.md`` (mean +- sd per regulariser, paired
t-test and exact sign-flip test of each regulariser against the baseline on the same seeds,
the validation metric per epoch) and ``test_error.png`` (or ``test_ppl.png``),
``validation.png`` (validation curves, mean +- sd over seeds), ``sparsity.png``, ``weights.png``.
W&B is disabled in the runs unless ``--wandb`` (then ``WANDB_MODE`` decides as usual).

One runner per output folder: the runner holds ``<out>/.grid.lock`` while it runs and reports
(``--report-only`` too), and a second runner on the same ``--out`` stops at once naming the
process that holds it (``--wait`` waits for it instead). Each run's subprocess holds
``<run>/.run.lock`` for its lifetime and dies with the runner (Linux: ``PR_SET_PDEATHSIG``; on
Ctrl-C, SIGTERM or ``--timeout`` the runner kills the run's whole process group), and a run
folder whose lock is still held is never deleted. A run counts as finished only if its
``metrics.csv`` is the one it finished with (``result.json`` records its SHA-256): a truncated
or overwritten log is reported and the run is run again. Checkpoints read for the report are
loaded without running code (``weights_only``); a file that needs code is skipped and named.

The package, one concern a module (each imports only those above it):

- :mod:`.spec`: ``--regulariser``/``--override`` specs and the runner's arguments (:class:`GridArgs`)
- :mod:`.locks`: the grid lock and the run locks (``flock``; never stale)
- :mod:`.metrics_csv`: the one reader of Lightning's ``metrics.csv`` (also used by
  ``scripts/plot_run.py`` and the tests), and its checksum
- :mod:`.plan`: the runs of a grid, each one's command line, CLI arguments and environment
- :mod:`.collect`: each run's state (``ok``, ``incomplete``, ...) and the results frame
- :mod:`.run`: one grid point in its own process (run lock, dies with the runner, ``result.json``)
- :mod:`.runner`: starting the runs (process groups, timeouts, Ctrl-C/SIGTERM) and resuming
- :mod:`.stats`: paired t-test and exact sign-flip test (``scipy.stats``)
- :mod:`.report`: ``results.csv`` and ``results.md`` (tables cut from the results frame)
- :mod:`.plots`: the PNGs
- :mod:`.results_doc`: docs/results.md refreshed from the reports (``update-doc``)
- :mod:`.cli`: the entry point (``python -m qsd_lightning.compare``)
"""

from __future__ import annotations

from .collect import RunState, collect, inspect_run, primary_metric, validation_curves
from .cli import main
from .locks import GRID_LOCK, RUN_LOCK, FolderInUse, FolderLock, OutputFolderError, lock_holder
from .metrics_csv import summarise as read_metrics_csv, validation_curve as read_validation_curve
from .plan import RESULT_FILE, RUNNER_PID_ENV, Run, plan, run_cli_args, run_command, run_env
from .plots import plot
from .report import markdown_table, paired_table, write_report
from .run import run_one
from .runner import execute, run_child, run_grid
from .spec import GridArgs, GridError, RegulariserSpec, build_parser, parse_args, parse_override, parse_regulariser
from .stats import PairedTest, paired_t_test, sign_flip_test, student_t_sf

__all__ = [
    # spec
    "GridError", "RegulariserSpec", "parse_regulariser", "parse_override", "build_parser", "GridArgs", "parse_args",
    # locks
    "GRID_LOCK", "RUN_LOCK", "OutputFolderError", "FolderInUse", "FolderLock", "lock_holder",
    # metrics.csv
    "read_metrics_csv", "read_validation_curve",
    # plan, runs
    "RESULT_FILE", "RUNNER_PID_ENV", "Run", "plan", "run_cli_args", "run_command", "run_env",
    "run_one", "run_child", "execute", "run_grid",
    # collection, statistics, report
    "RunState", "inspect_run", "collect", "primary_metric", "validation_curves",
    "PairedTest", "paired_t_test", "sign_flip_test", "student_t_sf",
    "markdown_table", "paired_table", "write_report", "plot",
    # entry point
    "main",
]
