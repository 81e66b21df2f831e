"""``RunstreamLogger``: a ``pytorch_lightning`` logger writing to a runstream run.

    from pytorch_lightning import Trainer
    from runstream.integration.pytorch_lightning import RunstreamLogger

    logger = RunstreamLogger(project="mnist", log_model="all")
    Trainer(logger=logger, max_epochs=2).fit(model, data)

It takes the arguments of Lightning's ``WandbLogger`` and logs what it logs (docs/integrations.md):
hyperparameters into the config, each ``log_metrics`` call as a row with
``trainer/global_step``, checkpoints as run files.  It is
``runstream.integration.lightning.RunstreamLogger`` on the ``pytorch_lightning`` distribution's
base class (its ``Trainer`` accepts no other).  Importing this module imports ``pytorch_lightning``.
"""

from __future__ import annotations

from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment
from lightning_fabric.utilities.logger import (
    _add_prefix,
    _convert_json_serializable,
    _convert_params,
    _sanitize_callable_params,
)
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.loggers.utilities import _scan_checkpoints
from pytorch_lightning.utilities import rank_zero_only

from runstream.integration._lightning_logger import LightningParts, LoggerBody

__all__ = ["RunstreamLogger"]


class RunstreamLogger(LoggerBody, Logger):
    """A ``pytorch_lightning`` logger that writes to a runstream run; the arguments are those of
    ``runstream.integration.lightning.RunstreamLogger``.
    """

    _parts = LightningParts(
        rank_zero_only=rank_zero_only,
        scan_checkpoints=_scan_checkpoints,
        convert_params=_convert_params,
        sanitize_callable_params=_sanitize_callable_params,
        convert_json_serializable=_convert_json_serializable,
        add_prefix=_add_prefix,
    )

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The runstream run (started at first use; on ranks other than 0 a no-op stand-in)."""
        return self._get_experiment()
