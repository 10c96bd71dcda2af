"""Turn the analysis callbacks off without touching the rest of a config's callback list."""

from __future__ import annotations

import lightning.pytorch as L

from .quantal import QuantalStatistics
from .sparsity import ActivationSparsity
from .weights import WeightDistributions

#: the callbacks that only log analysis (``configs/defaults``); removed by :class:`AnalysisOff`
ANALYSIS_CALLBACKS = (QuantalStatistics, ActivationSparsity, WeightDistributions)


class AnalysisOff(L.Callback):
    """Removes the analysis callbacks (:data:`ANALYSIS_CALLBACKS`) from the trainer when the run
    is set up, before any of them has hooked the model or logged; every other callback (the
    config's checkpoint and what it monitors, a ``RegulariserSwitch``, the prediction writer) stays.
    ``callbacks/minimal.yaml`` adds it, for timing runs and large sweeps."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, ANALYSIS_CALLBACKS)]
