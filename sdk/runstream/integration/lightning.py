"""``RunstreamLogger``: a Lightning (``lightning.pytorch``) logger writing to a runstream run.

    from lightning.pytorch import Trainer
    from runstream.integration.lightning import RunstreamLogger

    logger = RunstreamLogger(project="mnist", log_model="all")
    Trainer(logger=logger, max_epochs=2).fit(model, data)

It takes the arguments of Lightning's ``WandbLogger`` and logs what it logs (docs/integrations.md):
hyperparameters into the config, each ``log_metrics`` call as a row with
``trainer/global_step``, checkpoints as run files.  For ``pytorch_lightning`` use
``runstream.integration.pytorch_lightning.RunstreamLogger``.  Importing this module imports
``lightning``.
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.logger import (
    _add_prefix,
    _convert_json_serializable,
    _convert_params,
    _sanitize_callable_params,
)
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.loggers.utilities import _scan_checkpoints
from lightning.pytorch.utilities import rank_zero_only

from runstream.integration._lightning_logger import LightningParts, LoggerBody

__all__ = ["RunstreamLogger"]


class RunstreamLogger(LoggerBody, Logger):
    """A Lightning logger that writes to a runstream run (Lightning's ``WandbLogger``, for runstream).

    Args:
        name: The run's display name.
        save_dir: The directory the run directory goes under (``<save_dir>/runstream/``), and
            Lightning's checkpoints under ``<save_dir>/<project>/<run id>/checkpoints``.
        version: The run's id (same as ``id``); an existing run with that id is resumed.
        offline: Start the run offline (``mode="offline"``); ``runstream sync`` uploads it later.
        dir: Same as ``save_dir``, used when ``save_dir`` is ``None``.
        id: The run's id.
        anonymous: Accepted for ``WandbLogger``'s signature; ignored.
        project: The project; else ``RUNSTREAM_PROJECT``, ``WANDB_PROJECT``, ``"lightning_logs"``.
        log_model: ``False`` keeps no checkpoint; ``True`` keeps the best and last checkpoints
            when fitting ends; ``"all"`` keeps each checkpoint when it is written.  Kept as run
            files under ``files/<checkpoint directory name>/`` (W&B logs model artifacts).
        experiment: A run to log to instead of starting one.
        prefix: Put before each metric name, joined by ``-``.
        checkpoint_name: Accepted for ``WandbLogger``'s signature (its artifact name); unused.
        **kwargs: Passed on to ``runstream.init`` (``config``, ``tags``, ``group``, ``mode``...).

    Raises:
        ValueError: ``log_model`` is not ``True``, ``False`` or ``"all"``.

    The run starts at the first use of :attr:`experiment` (the trainer's first log call), or is
    the run already active.  Logging never waits for the sidecar or the network.
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
