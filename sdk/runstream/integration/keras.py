"""Keras 3 callbacks writing to the active runstream run: W&B's ``WandbMetricsLogger`` and
``WandbModelCheckpoint``, for runstream.

    import runstream
    from runstream.integration.keras import RunstreamMetricsLogger, RunstreamModelCheckpoint

    runstream.init(project="mnist", config={"lr": 1e-3})
    model.fit(x, y, epochs=5, validation_split=0.2,
              callbacks=[RunstreamMetricsLogger(), RunstreamModelCheckpoint("model.keras")])

``RunstreamMetricsLogger`` logs the ``logs`` Keras passes to its callbacks, under ``epoch/`` (each
epoch, with ``epoch/epoch`` and ``epoch/learning_rate``) and, with ``log_freq="batch"`` or a
number, under ``batch/`` (with ``batch/batch_step`` and ``batch/learning_rate``).
``RunstreamModelCheckpoint`` is Keras' ``ModelCheckpoint`` that also keeps each file it writes with
the run (``files/<file name>``; W&B logs a model artifact).  docs/integrations.md has the details.

Importing this module imports ``keras`` (Keras 3; its backend is chosen by ``KERAS_BACKEND``).
"""

from __future__ import annotations

import os
from typing import Any

import keras  # type: ignore[import-untyped, import-not-found, unused-ignore]

from runstream.errors import UsageError
from runstream.integration._common import save_checkpoint, warn

__all__ = ["RunstreamMetricsLogger", "RunstreamModelCheckpoint"]


def _active_run(who: str) -> Any:
    import runstream

    if runstream.run is None:
        raise UsageError(f"call runstream.init() before {who}(): it logs to the active run")
    return runstream.run


def _scalar(value: Any) -> Any:
    """A backend scalar (a 0-d tensor or array) as a Python number; anything else unchanged."""
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    try:
        return keras.ops.convert_to_numpy(value).item()
    except Exception:  # not a scalar: Run.log says what it cannot log
        return value


class RunstreamMetricsLogger(keras.callbacks.Callback):  # type: ignore[misc]
    """Log a Keras model's training metrics to the active run (W&B's ``WandbMetricsLogger``).

    Args:
        log_freq: ``"epoch"`` (default): one row per epoch, the epoch's ``logs`` as
            ``epoch/<name>`` with ``epoch/epoch`` (0-based) and ``epoch/learning_rate``.
            ``"batch"`` or an ``int`` n: also one row every n training batches, as
            ``batch/<name>`` with ``batch/batch_step`` (batches seen, counting across epochs) and
            ``batch/learning_rate``.
        initial_global_step: The optimizer step training resumes from (for the learning rate of
            a schedule when ``fit`` starts at ``initial_epoch``).

    Raises:
        UsageError: No run is active (call ``runstream.init()`` first).
        ValueError: ``log_freq`` is not ``"epoch"``, ``"batch"`` or a positive ``int``.

    Each row is one ``Run.log`` call: non-blocking.  The run's own step counts rows; the
    ``epoch/epoch`` and ``batch/batch_step`` keys are the x-axes, defined with ``define_metric``
    as W&B does.
    """

    def __init__(self, log_freq: str | int = "epoch", initial_global_step: int = 0) -> None:
        super().__init__()
        run = _active_run("RunstreamMetricsLogger")
        if log_freq == "batch":
            log_freq = 1
        if log_freq != "epoch" and (
            not isinstance(log_freq, int) or isinstance(log_freq, bool) or log_freq < 1
        ):
            raise ValueError(
                f"RunstreamMetricsLogger: log_freq must be 'epoch', 'batch' or an int >= 1, not {log_freq!r}"
            )
        self.logging_batch_wise = log_freq != "epoch"
        self.log_freq: int | None = log_freq if isinstance(log_freq, int) else None
        self.global_batch = 0
        self.global_step = initial_global_step
        self._lr_warned = False
        self._no_run_warned = False
        if self.logging_batch_wise:
            run.define_metric("batch/batch_step")
            run.define_metric("batch/*", step_metric="batch/batch_step")
        else:
            run.define_metric("epoch/epoch")
            run.define_metric("epoch/*", step_metric="epoch/epoch")

    def _learning_rate(self) -> float | None:
        try:
            # Keras 3 evaluates a schedule at the optimizer's iteration count here.
            return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        except Exception as e:  # an optimizer without one: log the metrics anyway
            if not self._lr_warned:
                self._lr_warned = True
                warn(f"RunstreamMetricsLogger: the learning rate cannot be read ({e}); not logged")
            return None

    def _log(self, row: dict[str, Any]) -> None:
        import runstream

        if runstream.run is None:  # finished during fit: training goes on, unlogged
            if not self._no_run_warned:
                self._no_run_warned = True
                warn("RunstreamMetricsLogger: no run is active; metrics are not logged")
            return
        runstream.run.log(row)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Log the epoch's metrics (``epoch/...``)."""
        row = {f"epoch/{k}": _scalar(v) for k, v in (logs or {}).items()}
        row["epoch/epoch"] = epoch
        lr = self._learning_rate()
        if lr is not None:
            row["epoch/learning_rate"] = lr
        self._log(row)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Every ``log_freq`` batches: log the running metrics (``batch/...``)."""
        self.global_step += 1
        if self.log_freq is None or batch % self.log_freq != 0:
            return
        row = {f"batch/{k}": _scalar(v) for k, v in (logs or {}).items()}
        row["batch/batch_step"] = self.global_batch
        lr = self._learning_rate()
        if lr is not None:
            row["batch/learning_rate"] = lr
        self._log(row)
        self.global_batch += self.log_freq


class RunstreamModelCheckpoint(keras.callbacks.ModelCheckpoint):  # type: ignore[misc]
    """Keras' ``ModelCheckpoint`` that keeps each checkpoint it writes with the active run
    (W&B's ``WandbModelCheckpoint``).

    Args:
        filepath: Where Keras saves (``.keras``, or ``.weights.h5`` with ``save_weights_only``);
            may hold ``{epoch}``, ``{batch}`` and metric placeholders.
        monitor, verbose, save_best_only, save_weights_only, mode, save_freq,
        initial_value_threshold: As Keras' ``ModelCheckpoint``.

    Raises:
        UsageError: No run is active (call ``runstream.init()`` first).
        ValueError: As Keras' ``ModelCheckpoint`` (a wrong extension, an unknown ``save_freq``).

    Each file Keras actually writes (so, with ``save_best_only``, only improvements) is saved with
    ``Run.save(policy="now")`` as ``files/<its file name>``: a ``filepath`` without placeholders
    is one run file, replaced by each new checkpoint.  Keras writes the file on the training
    thread; copying and uploading it happen in the sidecar.
    """

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
    ) -> None:
        super().__init__(
            filepath=filepath,
            monitor=monitor,
            verbose=verbose,
            save_best_only=save_best_only,
            save_weights_only=save_weights_only,
            mode=mode,
            save_freq=save_freq,
            initial_value_threshold=initial_value_threshold,
        )
        _active_run("RunstreamModelCheckpoint")

    def _save_model(self, epoch: int, batch: int | None, logs: dict[str, Any] | None) -> None:
        # Keras decides whether to write (save_best_only...) inside _save_model; a file whose
        # stat changed across the call is one it wrote, whatever the rule that made it.
        path = os.path.abspath(self._get_file_path(epoch, batch, logs or {}))
        before = _stamp(path)
        super()._save_model(epoch=epoch, batch=batch, logs=logs)
        after = _stamp(path)
        if after is None or after == before:
            return
        import runstream

        if runstream.run is None:
            warn(f"RunstreamModelCheckpoint: no run is active; {path} is not kept with a run")
            return
        save_checkpoint(runstream.run, [path], os.path.dirname(path))


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_size)
