"""Two "nodes" on this machine: two ``torchrun --nnodes 2 --node_rank {0,1}`` launchers (one CPU
process each, gloo over 127.0.0.1) run ``python -m qsd_lightning fit ... --trainer.num_nodes 2``
as one would on two machines (docs/cluster.md). Each node has its own working directory; the
run's ``--trainer.default_root_dir`` is shared, as on a cluster's shared filesystem.

Checked: both launchers exit 0 and the run trains (a checkpoint at the expected step, val/loss
falls); Lightning sees 2 nodes x 1 process (node ranks 0 and 1); the ranks start from the same
weights and end with the same weights (gradients are all-reduced across the nodes) but draw
different regulariser masks; ``validate`` of the checkpoint on the two nodes gives the same
val/loss and val/acc as a one-process ``validate`` (and as the fit's own last validation).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from qsd_lightning.compare import metrics_csv

from .conftest import CONFIGS, REPO

pytestmark = pytest.mark.slow  # subprocesses and process groups

DIGITS = str(CONFIGS / "mlp_digits.yaml")
# val_fraction 0.1 -> 180 validation images: an even split over 2 ranks, so Lightning's
# DistributedSampler pads nothing and the 2-rank validation sees exactly the 1-process set.
RUN = ["--config", DIGITS, "--model.regulariser=qsd", "--data.val_fraction=0.1"]
NODES = ["--trainer.num_nodes=2", "--trainer.devices=1", "--trainer.accelerator=cpu", "--trainer.strategy=ddp",
         "--trainer.enable_progress_bar=false", "--ddp_timeout=240"]
REPORT = "--trainer.callbacks+=tests._multinode_callbacks.RankReport"
EPOCHS, BATCHES = 2, 4  # 8 optimizer steps; in each, each rank trains on one batch of its half of the data
TIMEOUT = 360  # seconds for a two-node command (15 s on 2 idle CPU cores, about a minute on busy ones)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_nodes(args: list[str], tmp_path, name: str, extra_env: dict | None = None) -> None:
    """Run ``python -m qsd_lightning <args>`` under two torchrun launchers, node ranks 0 and 1,
    at once; each in its own folder ``tmp_path/name/node<R>`` with its output in files there.
    Both are killed (whole process groups: launcher and worker) if either fails or time runs out.
    Tried again on another port if the free port was taken before node 0 could listen on it."""
    for attempt in range(2):
        folders = [tmp_path / name / (f"node{rank}" + (f".retry{attempt}" if attempt else "")) for rank in (0, 1)]
        codes = _launch(args, folders, free_port(), extra_env)
        errors = [(folder / "stderr.txt").read_text() for folder in folders]
        if codes != [0, 0] and attempt == 0 and "EADDRINUSE" in errors[0]:
            continue
        assert codes == [0, 0], "\n".join(f"node {rank} exited {code}:\n{err[-2500:]}"
                                           for rank, (code, err) in enumerate(zip(codes, errors)) if code != 0)
        return


def _launch(args: list[str], folders, port: int, extra_env: dict | None) -> list[int]:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           **(extra_env or {})}
    procs = []
    try:
        for rank, folder in enumerate(folders):
            folder.mkdir(parents=True)
            cmd = [sys.executable, "-m", "torch.distributed.run",  # = the torchrun command
                   "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}",
                   "--master_addr=127.0.0.1", f"--master_port={port}",
                   "-m", "qsd_lightning", *args]
            with open(folder / "stdout.txt", "w") as out, open(folder / "stderr.txt", "w") as err:
                procs.append(subprocess.Popen(cmd, cwd=folder, env=env, stdout=out, stderr=err,
                                              start_new_session=True))
        deadline = time.monotonic() + TIMEOUT
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break  # one failed: do not wait for the other to time out
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return [proc.returncode for proc in procs]


def last(root, key: str) -> float:
    return metrics_csv.values(metrics_csv.newest(root), key)[-1]


def test_two_nodes_train_with_different_masks_and_validate_like_one_process(run_cli, tmp_path):
    run_root, ranks = tmp_path / "run", tmp_path / "ranks"
    two_nodes(["fit", *RUN, *NODES, REPORT, f"--trainer.default_root_dir={run_root}",
               f"--trainer.max_epochs={EPOCHS}", f"--trainer.limit_train_batches={BATCHES}"],
              tmp_path, "fit", {"QSD_TEST_RANK_DIR": str(ranks)})

    # it trained: the checkpoint is at the last step, validation loss fell, train loss logged
    (ckpt,) = run_root.rglob("last.ckpt")
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == EPOCHS * BATCHES
    log = metrics_csv.newest(run_root)
    val_loss = metrics_csv.values(log, "val/loss")
    assert len(val_loss) == EPOCHS and val_loss[-1] < val_loss[0]
    assert len(metrics_csv.values(log, "train/loss_epoch")) == EPOCHS

    # two nodes of one process each, one model, different masks
    reports = [json.loads((ranks / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, report in enumerate(reports):
        assert report["world_size"] == 2 and report["num_nodes"] == 2
        assert (report["global_rank"], report["node_rank"], report["local_rank"]) == (rank, rank, 0)
        assert report["environment"] == "TorchElasticEnvironment"  # torchrun's variables were read
        assert report["probe_matches"], report  # the hashed mask is the one the step really drew
        assert report["global_step"] == EPOCHS * BATCHES
    assert reports[0]["weights_at_start"] == reports[1]["weights_at_start"]  # rank 0's weights, broadcast
    assert reports[0]["weights_at_end"] == reports[1]["weights_at_end"]  # gradients all-reduced over nodes
    assert reports[0]["weights_at_start"] != reports[0]["weights_at_end"]
    assert reports[0]["first_mask"] != reports[1]["first_mask"]  # each rank draws its own noise
    assert reports[0]["first_mask_and_scale"] != reports[1]["first_mask_and_scale"]

    # validate of the checkpoint: two nodes == one process (== the fit's last validation)
    two_nodes(["validate", *RUN, *NODES, f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={tmp_path / 'val2'}"],
              tmp_path, "validate")
    single = run_cli("validate", *RUN, "--trainer.logger=false", f"--ckpt_path={ckpt}").trainer.callback_metrics
    for key in ("val/loss", "val/acc"):
        one = single[key].item()
        assert last(tmp_path / "val2", key) == pytest.approx(one, rel=1e-6, abs=1e-6), key
        assert last(run_root, key) == pytest.approx(one, rel=1e-6, abs=1e-6), key


def test_mask_check_sees_ranks_that_share_their_noise(tmp_path):
    """Control for the mask comparison above: with per-rank seeding turned off
    (tests._multinode_callbacks.SameNoise replaces RankNoiseSeed) the two nodes' first masks
    hash alike, so different hashes do come from different noise, not from different data."""
    ranks = tmp_path / "ranks"
    two_nodes(["fit", *RUN, *NODES, REPORT, "--trainer.callbacks+=tests._multinode_callbacks.SameNoise",
               f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.logger=false",
               "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"],
              tmp_path, "fit", {"QSD_TEST_RANK_DIR": str(ranks)})
    reports = [json.loads((ranks / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["probe_matches"] for r in reports)
    assert reports[0]["first_mask_and_scale"] == reports[1]["first_mask_and_scale"]
