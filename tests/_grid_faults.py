"""A callback that makes chosen grid runs fail, for the executor tests (imported by the run
processes through ``--override trainer.callbacks+=tests._grid_faults.Fault``).

``QSD_TEST_FAULT="SEED:ACTION[,SEED:ACTION]"``: at the start of training, the run whose
``seed_everything`` is SEED exits with status 3 (``exit``), SIGKILLs itself (``kill``), or hangs
(``hang``); other runs train normally.
"""

import os
import signal
import time

from lightning.pytorch.callbacks import Callback


class Fault(Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        faults = dict(item.split(":") for item in os.environ.get("QSD_TEST_FAULT", "").split(",") if item)
        action = faults.get(os.environ.get("PL_GLOBAL_SEED", ""))
        if action == "exit":
            os._exit(3)
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "hang":
            while True:
                time.sleep(1)
