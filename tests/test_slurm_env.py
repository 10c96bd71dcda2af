"""The SLURM recipe of docs/cluster.md (and the README) against Lightning's SLURM detection.

Each test sets, by hand, the variables ``srun`` gives one task of the recipe's job
(``#SBATCH --nodes=2 --ntasks-per-node=4``, ``srun python -m qsd_lightning fit ...
--trainer.num_nodes 2 --trainer.devices 4``) and builds the Trainer through our CLI (CPU
standing in for the GPUs; nothing is fitted, so no process group starts). The variables are the
ones ``lightning.fabric.plugins.environments.SLURMEnvironment`` reads: SLURM_NTASKS (its
presence = launched by srun, unless SLURM_JOB_NAME is ``bash`` or ``interactive``),
SLURM_PROCID / SLURM_LOCALID / SLURM_NODEID (ranks), SLURM_NTASKS_PER_NODE and SLURM_NNODES
(checked against ``devices`` / ``num_nodes`` at launch), SLURM_NODELIST and SLURM_JOB_ID (the
main address and port when MASTER_ADDR / MASTER_PORT are unset).
"""

from __future__ import annotations

import pytest
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.strategies import DDPStrategy

from qsd_lightning.cli import cli_main

from .conftest import CONFIGS


@pytest.fixture(autouse=True)
def _restore_rank_zero():
    """Building a Trainer for task N sets Lightning's process-wide ``rank_zero_only.rank`` to N;
    left at 3, later tests in this process would see their loggers as a non-zero rank's."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero_only
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    saved = (rank_zero_only.rank, fabric_rank_zero_only.rank)
    yield
    rank_zero_only.rank, fabric_rank_zero_only.rank = saved

DIGITS = str(CONFIGS / "mlp_digits.yaml")
NODES, TASKS_PER_NODE = 2, 4  # the recipe: 2 nodes x 4 GPUs, one task per GPU
JOB_ID = "4123456"


def srun_task(monkeypatch, procid: int, *, ntasks_per_node: int | None = TASKS_PER_NODE,
              job_name: str = "qsd") -> None:
    """The environment of task ``procid`` of the recipe's job, as srun sets it (block
    distribution: tasks 0-3 on node 0, 4-7 on node 1)."""
    per_node = ntasks_per_node or TASKS_PER_NODE
    for name in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK",
                 "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS_PER_NODE"):
        # nothing from this machine's own launcher; set first so that the undo also removes what
        # Lightning writes later (SLURMEnvironment.main_address sets MASTER_ADDR)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    values = {
        "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NAME": job_name, "SLURM_NODELIST": "gpu[07-08]",
        "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NNODES": str(NODES), "SLURM_JOB_NUM_NODES": str(NODES),
        "SLURM_NTASKS": str(NODES * per_node), "SLURM_NPROCS": str(NODES * per_node),
        "SLURM_PROCID": str(procid), "SLURM_NODEID": str(procid // per_node), "SLURM_LOCALID": str(procid % per_node),
    }
    if ntasks_per_node is not None:
        values["SLURM_NTASKS_PER_NODE"] = str(ntasks_per_node)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def build(tmp_path, devices: int = TASKS_PER_NODE, num_nodes: int = NODES):
    """The recipe's command line, built but not run (``cli_main(run=False)``)."""
    cli = cli_main(["--config", DIGITS, f"--trainer.num_nodes={num_nodes}", f"--trainer.devices={devices}",
                    "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.logger=false",
                    f"--trainer.default_root_dir={tmp_path}"], run=False)
    return cli.trainer


@pytest.mark.parametrize("procid", [0, 3, 4, 7])
def test_srun_task_is_placed_by_slurm_environment(procid, monkeypatch, tmp_path):
    srun_task(monkeypatch, procid)
    trainer = build(tmp_path)
    env = trainer.strategy.cluster_environment
    assert isinstance(trainer.strategy, DDPStrategy) and isinstance(env, SLURMEnvironment)
    assert env.creates_processes_externally  # Lightning starts no processes of its own: srun did
    assert (env.world_size(), env.global_rank(), env.node_rank(), env.local_rank()) == (
        8, procid, procid // TASKS_PER_NODE, procid % TASKS_PER_NODE)
    assert (trainer.world_size, trainer.global_rank, trainer.node_rank, trainer.local_rank) == (
        8, procid, procid // TASKS_PER_NODE, procid % TASKS_PER_NODE)
    assert (trainer.num_nodes, trainer.num_devices) == (NODES, TASKS_PER_NODE)
    # what the launcher checks before training: --ntasks-per-node == devices, --nodes == num_nodes
    launcher = trainer.strategy.launcher
    env.validate_settings(num_devices=launcher.num_processes, num_nodes=launcher.num_nodes)
    # every task meets at the first node of the allocation, on a port derived from the job id
    assert env.main_address == "gpu07"
    assert env.main_port == 15000 + int(JOB_ID[-4:])


def test_slurm_variables_do_not_leak(monkeypatch, tmp_path):
    """These tests leave the environment as they found it, also MASTER_ADDR, which Lightning
    writes itself."""
    import os

    names = ("MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS", "SLURM_PROCID")
    before = {name: os.environ.get(name) for name in names}
    with monkeypatch.context() as patch:
        srun_task(patch, 0)
        assert build(tmp_path).strategy.cluster_environment.main_address == os.environ["MASTER_ADDR"] == "gpu07"
    assert {name: os.environ.get(name) for name in names} == before


@pytest.mark.parametrize("devices, num_nodes, named", [
    (2, NODES, "--ntasks-per-node=4"),  # 4 tasks per node but --trainer.devices 2
    (TASKS_PER_NODE, 1, "--nodes=2"),  # 2 nodes but --trainer.num_nodes 1
])
def test_devices_and_nodes_must_match_the_job(devices, num_nodes, named, monkeypatch, tmp_path):
    """What Lightning's launcher checks before training (``validate_settings``)."""
    srun_task(monkeypatch, 5)
    trainer = build(tmp_path, devices=devices, num_nodes=num_nodes)
    launcher = trainer.strategy.launcher
    with pytest.raises(ValueError, match=named):
        trainer.strategy.cluster_environment.validate_settings(num_devices=launcher.num_processes,
                                                               num_nodes=launcher.num_nodes)


def test_ntasks_without_ntasks_per_node_is_refused(monkeypatch, tmp_path):
    srun_task(monkeypatch, 0, ntasks_per_node=None)  # #SBATCH --ntasks=8 instead of --ntasks-per-node=4
    with pytest.raises(RuntimeError, match="--ntasks-per-node"):
        build(tmp_path)


@pytest.mark.parametrize("job_name", ["bash", "interactive"])
def test_interactive_allocation_is_not_taken_for_srun(job_name, monkeypatch, tmp_path):
    srun_task(monkeypatch, 0, job_name=job_name)
    trainer = build(tmp_path, devices=1)
    assert isinstance(trainer.strategy.cluster_environment, LightningEnvironment)


def test_torchrun_inside_a_slurm_job_uses_torchrun_ranks(monkeypatch, tmp_path):
    """torchrun launched in an sbatch job (docs/cluster.md, without srun per GPU): torchrun's
    variables win over SLURM's."""
    srun_task(monkeypatch, 0, ntasks_per_node=1)
    for name, value in {"TORCHELASTIC_RUN_ID": "qsd", "WORLD_SIZE": "8", "RANK": "6", "LOCAL_RANK": "2",
                        "GROUP_RANK": "1", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "gpu07",
                        "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    trainer = build(tmp_path)
    env = trainer.strategy.cluster_environment
    assert isinstance(env, TorchElasticEnvironment)
    assert (trainer.world_size, trainer.global_rank, trainer.node_rank, trainer.local_rank) == (8, 6, 1, 2)


@pytest.mark.parametrize("error, expected", [
    (ValueError("You set `devices=2` in Lightning, but the number of tasks per node configured in SLURM "
                "`--ntasks-per-node=4` does not match. HINT: Set `devices=4`."),
     "--trainer.devices 2 does not match the SLURM job's --ntasks-per-node=4: give --trainer.devices 4"),
    (ValueError("You set `num_nodes=1` in Lightning, but the number of nodes configured in SLURM `--nodes=2` "
                "does not match. HINT: Set `num_nodes=2`."),
     "--trainer.num_nodes 1 does not match the SLURM job's --nodes=2: give --trainer.num_nodes 2"),
    (RuntimeError("You set `--ntasks=8` in your SLURM bash script, but this variable is not supported. "
                  "HINT: Use `--ntasks-per-node=8` instead."),
     "the SLURM job sets --ntasks=8"),
])
def test_slurm_mismatches_are_one_line_user_errors(error, expected):
    from qsd_lightning.cli_errors import runtime_user_error

    message = runtime_user_error(error)
    assert message is not None and message.startswith(expected) and "\n" not in message, message


def test_the_slurm_messages_match_what_lightning_raises(monkeypatch):
    """The texts above are Lightning's own: raise them from SLURMEnvironment and map them."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from qsd_lightning.cli_errors import runtime_user_error

    monkeypatch.setenv("SLURM_JOB_NAME", "qsd")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_NNODES", "2")
    with pytest.raises(ValueError) as err:
        SLURMEnvironment().validate_settings(num_devices=2, num_nodes=2)
    assert runtime_user_error(err.value).startswith("--trainer.devices 2 does not match")
    with pytest.raises(ValueError) as err:
        SLURMEnvironment().validate_settings(num_devices=4, num_nodes=1)
    assert runtime_user_error(err.value).startswith("--trainer.num_nodes 1 does not match")
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    with pytest.raises(RuntimeError) as err:
        SLURMEnvironment._validate_srun_variables()
    assert runtime_user_error(err.value).startswith("the SLURM job sets --ntasks=8")
