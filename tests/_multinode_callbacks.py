"""Test-only callback for tests/test_multinode.py, loaded by the training subprocesses by class
path (``--trainer.callbacks+=tests._multinode_callbacks.RankReport``, ``PYTHONPATH`` = repo).

Each rank writes ``rank<global_rank>.json`` into ``$QSD_TEST_RANK_DIR`` with its place in the
run (world size, global / node / local rank), a hash of the first mask its first regulariser
site draws in training, and hashes of the weights when training starts and ends.

The mask: the regulariser returns ``x * mask * c``, not the mask, so a forward pre-hook on the
first training call replays that call on ``ones_like(x)`` from a copy of the same random state
(``torch.random.fork_rng``): the result is ``mask * c`` exactly as the real call draws it (the
draw depends on the shape and the generator, not on x's values). The forward hook then checks
the replay against the real output where x != 0 (``probe_matches``), so the hash is the real
mask, not a look-alike. The random state is restored after the replay, so training is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L
import torch

from qsd_lightning.callbacks import RankNoiseSeed
from qsd_lightning.regularisers.base import Regulariser


def _sha(tensors) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class RankReport(L.Callback):
    def __init__(self) -> None:
        self.report: dict = {}
        self._handles: list = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.report.update(
            world_size=trainer.world_size, num_nodes=trainer.num_nodes, global_rank=trainer.global_rank,
            node_rank=trainer.node_rank, local_rank=trainer.local_rank,
            environment=type(trainer.strategy.cluster_environment).__name__,
            weights_at_start=_sha(p for p in pl_module.parameters()),
        )
        site = next((m for m in pl_module.modules() if isinstance(m, Regulariser) and m.rate > 0), None)
        if site is None:
            raise RuntimeError("RankReport: the model has no regulariser site with rate > 0")
        probe: dict = {}

        def before(module, args):
            x = args[0]
            saved = {k: module.__dict__[k] for k in ("steps_taken", "last_statistics") if k in module.__dict__}
            with torch.random.fork_rng(devices=[]):
                probe["y"] = module.forward(torch.ones_like(x)).detach().clone()
            module.__dict__.update(saved)

        def after(module, args, output):
            x = args[0]
            real, replay = output.detach(), probe["y"]
            nonzero = x.detach() != 0
            self.report["probe_matches"] = bool(torch.allclose(real[nonzero], (x.detach() * replay)[nonzero]))
            self.report["mask_shape"] = list(replay.shape)
            self.report["first_mask"] = _sha([(replay != 0).to(torch.uint8)])
            self.report["first_mask_and_scale"] = _sha([replay.float()])
            for handle in self._handles:
                handle.remove()
            self._handles.clear()

        self._handles = [site.register_forward_pre_hook(before), site.register_forward_hook(after)]

    def on_train_end(self, trainer, pl_module) -> None:
        self.report["weights_at_end"] = _sha(p for p in pl_module.parameters())
        self.report["global_step"] = trainer.global_step
        folder = Path(os.environ["QSD_TEST_RANK_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.report, indent=1))


class SameNoise(RankNoiseSeed):
    """Control: a :class:`RankNoiseSeed` that does nothing. Given as a callback it stands in for
    the one the CLI would add, so every rank keeps the seed ``seed_everything`` gave it."""

    def setup(self, trainer, pl_module, stage) -> None:
        pass
