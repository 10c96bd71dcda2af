"""The grid's runs as SLURM jobs, through submitit (``--executor slurm``; ``submitit-local``
runs the same submission through submitit's local executor, on this machine).

One job per unfinished run, submitted as one job array; each job runs the run exactly as the
local executor does (:func:`.run.run_here`: the run folder prepared and locked by the job, its
output in the run's ``log.txt``, ``result.json`` last). The protocol is the local runner's, on
the shared filesystem: a finished run (``result.json`` with its complete logs) is skipped; a run
whose job is still queued or running (``<out>/slurm/jobs.json``, asked of the scheduler) is
waited for, not submitted again; a job that failed, timed out or was pre-empted without
finishing its run is reported and its run submitted again on the next invocation. The runner
waits for the jobs and writes the report (``--detach``: it submits and exits; the same command,
or ``--report-only``, later). Ctrl-C stops the waiting, not the SLURM jobs.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

from ..errors import UserError
from .collect import inspect_run
from .plan import Run, plan, run_cli_args, run_command
from .run import log_tail as _tail
from .spec import GridArgs

__all__ = ["GridJob", "submitit_parameters", "run_grid_submitit", "ACTIVE_STATES"]

#: scheduler states of a job that has not ended (squeue/sacct), so its run is not submitted again
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
                 "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}
POLL_SECONDS = 2.0


class GridJob:
    """What a job runs: one grid point (pickled by submitit; :func:`.run.run_here` on the node).

    With several tasks per job (``--gpus-per-run N`` on SLURM: one task per GPU, as Lightning's
    SLURM environment requires), task 0 prepares and locks the run folder and the other tasks
    join its DDP group once the folder is ready; each writes its own ``log.rank<N>.txt``.
    """

    def __init__(self, run_dir: Path, command: str, cli_args: list[str], env: dict[str, str], threads: int | None):
        self.run_dir, self.command, self.cli_args = Path(run_dir), command, list(cli_args)
        self.env, self.threads = dict(env), threads

    def __call__(self) -> int:
        from .run import prepare_run_dir, run_here, run_one

        rank = _task_rank()
        env = {**os.environ, **self.env}
        ready = self.run_dir / ".job_ready"
        if rank > 0:  # a further DDP rank of this run: wait for task 0 to prepare the folder
            deadline = time.monotonic() + 600
            while not ready.is_file() or ready.read_text().strip() != os.environ.get("SLURM_JOB_ID", ""):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"task 0 did not prepare {self.run_dir} within 600 s")
                time.sleep(1.0)
            os.environ.update(env)
            with open(self.run_dir / f"log.rank{rank}.txt", "a") as log:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
            run_one(self.run_dir, self.cli_args)
            return 0
        problem = prepare_run_dir(self.run_dir, self.command)
        if problem:
            raise RuntimeError(problem)
        ready.write_text(os.environ.get("SLURM_JOB_ID", "") + "\n")
        log = self.run_dir / "log.txt"
        rc = run_here(self.run_dir, self.cli_args, env, log, self.threads)
        if rc:
            raise RuntimeError(f"the run exited with status {rc}; log {log}")
        return rc

    def __repr__(self) -> str:
        return f"GridJob({self.run_dir})"


def _task_rank() -> int:
    try:
        import submitit

        return submitit.JobEnvironment().global_rank
    except Exception:  # not inside a submitit job (called by hand)
        return 0


def submitit_parameters(grid: GridArgs, cluster: str) -> dict:
    """The executor's parameters for one run per job: time, CPUs, GPUs, memory, partition and
    extra sbatch options (``--slurm-*``, ``--slurm-config``), and the array's parallelism."""
    s = grid.slurm
    gpus = grid.gpus_per_run or 0
    minutes = s.get("time") or (max(1, math.ceil(grid.timeout / 60)) if grid.timeout else 60)
    params: dict = {"timeout_min": int(minutes), "nodes": 1, "cpus_per_task": int(s.get("cpus") or grid.threads or 2)}
    if cluster == "slurm":
        params["tasks_per_node"] = max(1, gpus)  # Lightning on SLURM: one task per device
        if gpus:
            params["gpus_per_node"] = gpus
        if s.get("partition"):
            params["slurm_partition"] = s["partition"]
        if s.get("mem_gb"):
            params["mem_gb"] = s["mem_gb"]
        if s.get("parallelism"):
            params["slurm_array_parallelism"] = int(s["parallelism"])
        if s.get("options"):
            params["slurm_additional_parameters"] = dict(s["options"])
        params["name"] = f"qsd-{grid.config.stem}"
    else:  # submitit's local executor: one process per job on this machine
        params["tasks_per_node"] = 1
        if gpus:
            params["gpus_per_node"] = gpus
    return params


def _executor(grid: GridArgs, cluster: str):
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs submitit: pip install -e '.[cluster]' in the project, or pip install submitit") from None
    folder = grid.out / "slurm"
    try:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    except RuntimeError as err:  # submitit: no srun/sbatch on this machine
        raise UserError(
            f"--executor slurm: no SLURM on this machine ({err}); run the grid from the cluster's login node, "
            "or try it here with --executor submitit-local"
        ) from None
    executor.update_parameters(**submitit_parameters(grid, cluster))
    return executor


def _job_env(grid: GridArgs) -> dict[str, str]:
    """What each job adds to its node's environment (as :func:`.plan.run_env` for local runs)."""
    env = {"WANDB_SILENT": "true"}
    if not grid.wandb:
        env["WANDB_MODE"] = "disabled"
    threads = int(grid.slurm.get("cpus") or grid.threads or 2)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def _key(run: Run) -> str:
    return f"{run.spec.slug}/seed{run.seed}"


def _load_jobs(path: Path) -> dict:
    try:
        loaded = json.loads(path.read_text())
        return loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_jobs(path: Path, jobs: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(jobs, indent=1))
    tmp.replace(path)


def _scheduler_state(grid: GridArgs, record: dict, cluster: str) -> str:
    """A recorded job's state now: the scheduler's for SLURM; a local job of an earlier
    invocation has ended (submitit's local jobs end with the runner that waited for them)."""
    if cluster != "slurm":
        return "ENDED"
    import submitit

    job = submitit.SlurmJob(folder=grid.out / "slurm" / "%j", job_id=str(record["job_id"]))
    try:
        return str(job.state).split()[0].upper()
    except Exception as err:  # sacct unreachable: do not submit twice
        return f"UNKNOWN ({err})"


def _job_problem(run: Run, job) -> str:
    state = inspect_run(run, check_lock=False)
    try:
        job_state = job.state
    except Exception:  # pragma: no cover
        job_state = "UNKNOWN"
    log = run.dir / "log.txt"
    where = f"log {log}:\n{_tail(log)}" if log.is_file() else f"job log {job.paths.stderr}:\n{_tail(job.paths.stderr)}"
    return f"job {job.job_id} ended ({job_state}) but {state.problem or 'the run did not finish'}; {where}"


def run_grid_submitit(grid: GridArgs, cluster: str) -> list[tuple[Run, str]]:
    """Submit the grid's unfinished runs as one job array and wait for them (unless
    ``--detach``); the failures, as :func:`.runner.run_grid` gives them."""
    from tqdm.auto import tqdm

    (grid.out / "slurm").mkdir(parents=True, exist_ok=True)
    jobs_file = grid.out / "slurm" / "jobs.json"
    records = _load_jobs(jobs_file)
    runs = plan(grid)
    states = {r: inspect_run(r) for r in runs}
    failures: list[tuple[Run, str]] = []
    to_submit: list[Run] = []
    waiting: list[tuple[Run, object]] = []
    for run in runs:
        if states[run].status == "ok":
            continue
        record = records.get(_key(run))
        if record and record.get("cluster") == cluster:
            state = _scheduler_state(grid, record, cluster)
            if state in ACTIVE_STATES or state.startswith("UNKNOWN"):
                tqdm.write(f"{run.spec.label} seed {run.seed}: job {record['job_id']} is {state}; not submitted again")
                if cluster == "slurm":
                    import submitit

                    waiting.append((run, submitit.SlurmJob(folder=grid.out / "slurm" / "%j", job_id=str(record["job_id"]))))
                continue
            tqdm.write(f"{run.spec.label} seed {run.seed}: job {record['job_id']} ended ({state}) without finishing "
                       f"the run ({states[run].problem}); submitting it again", file=sys.stderr)
        elif states[run].status == "running":
            tqdm.write(f"{run.spec.label} seed {run.seed}: {states[run].problem}; not submitted", file=sys.stderr)
            failures.append((run, f"not submitted: {states[run].problem}"))
            continue
        to_submit.append(run)
    skipped = sum(states[r].status == "ok" for r in runs)
    if skipped:
        tqdm.write(f"{skipped} finished run(s) skipped (complete result.json and metrics.csv)")
    submitted: list[tuple[Run, object]] = []
    if to_submit:
        executor = _executor(grid, cluster)
        env = _job_env(grid)
        threads = int(env["OMP_NUM_THREADS"])
        calls = [GridJob(r.dir, shlex.join(run_command(grid, r)), run_cli_args(grid, r), env, threads) for r in to_submit]
        with executor.batch():
            pending_jobs = [executor.submit(call) for call in calls]
        submitted = list(zip(to_submit, pending_jobs))
        for run, job in submitted:
            records[_key(run)] = {"job_id": str(job.job_id), "cluster": cluster, "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}
        _save_jobs(jobs_file, records)
        first, last = submitted[0][1].job_id, submitted[-1][1].job_id
        tqdm.write(f"submitted {len(submitted)} run(s) as {cluster} job(s) {first}" + (f" .. {last}" if last != first else "")
                   + f"; job folders in {grid.out / 'slurm'}")
    watch = waiting + submitted
    if grid.detach:
        if watch:
            tqdm.write(f"--detach: {len(watch)} run(s) queued or running; run the same command again to wait for them "
                       "and write the report")
        return failures
    bar = tqdm(total=len(runs), initial=skipped, desc="grid", unit="run", dynamic_ncols=True)
    try:
        while watch:
            still = []
            for run, job in watch:
                if not job.done():
                    still.append((run, job))
                    continue
                bar.update(1)
                name = f"{run.spec.label} seed {run.seed}"
                if inspect_run(run, check_lock=False).status == "ok":
                    tqdm.write(f"{name}: done (job {job.job_id})")
                else:
                    message = _job_problem(run, job)
                    failures.append((run, message))
                    tqdm.write(f"FAILED {name}: {message}", file=sys.stderr)
                bar.set_postfix(failed=len(failures))
            watch = still
            if watch:
                time.sleep(POLL_SECONDS)
    except BaseException:
        if cluster != "slurm":  # submitit's local jobs are this process's children: they stop with it
            for _, job in watch:
                job.cancel(check=False)
        raise
    finally:
        bar.close()
    return failures
