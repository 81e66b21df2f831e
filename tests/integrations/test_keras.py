"""``RunstreamMetricsLogger`` and ``RunstreamModelCheckpoint`` under a real Keras 3 ``fit`` (torch
backend, CPU): a 2-layer ``Sequential`` on random arrays.

What a user of W&B's Keras callbacks relies on: ``epoch/`` metrics (with ``epoch/epoch`` and the
learning rate, scheduled or not) each epoch, ``batch/`` metrics every ``log_freq`` batches, each
checkpoint file Keras writes kept with the run.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import runstream
from runstream.errors import UsageError

pytestmark = [
    pytest.mark.usefixtures("finish_active_run"),
    # Keras' own saving code hands torch tensors to numpy (keras/src/saving), which numpy 2 flags.
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]


@pytest.fixture
def keras(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Keras 3 on torch: the backend is read once, when keras is first imported (TensorFlow, its
    default, is not installed)."""
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    mod = importlib.import_module("keras")
    assert mod.backend.backend() == "torch"
    return mod


@pytest.fixture
def integration(keras: ModuleType) -> ModuleType:
    return importlib.import_module("runstream.integration.keras")


def model_and_data(keras: ModuleType, learning_rate: Any = 0.05) -> tuple[Any, Any, Any]:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=learning_rate), loss="mse", metrics=["mae"])
    rng = np.random.default_rng(0)
    return model, rng.random((32, 4), dtype=np.float32), rng.random((32, 1), dtype=np.float32)


def stripped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def test_epoch_metrics_with_epoch_and_learning_rate(
    tmp_path: Path, keras: ModuleType, integration: Any
) -> None:
    run = runstream.init(project="k", mode="offline", dir=tmp_path)
    model, x, y = model_and_data(keras)
    history = model.fit(
        x,
        y,
        epochs=3,
        batch_size=8,
        validation_split=0.25,
        verbose=0,
        callbacks=[integration.RunstreamMetricsLogger()],
    )
    runstream.finish()
    rows = stripped(runstream.read_run(run.dir).history)
    assert [r["epoch/epoch"] for r in rows] == [0, 1, 2]
    keys = {
        "epoch/loss",
        "epoch/mae",
        "epoch/val_loss",
        "epoch/val_mae",
        "epoch/epoch",
        "epoch/learning_rate",
    }
    assert [set(r) for r in rows] == [keys] * 3
    assert [r["epoch/learning_rate"] for r in rows] == pytest.approx([0.05] * 3)
    # The values are Keras' own epoch logs, as fit's History has them.
    assert [r["epoch/val_loss"] for r in rows] == pytest.approx(history.history["val_loss"])
    assert [r["epoch/loss"] for r in rows] == pytest.approx(history.history["loss"])


def test_batch_metrics_every_n_batches_with_a_scheduled_learning_rate(
    tmp_path: Path, keras: ModuleType, integration: Any
) -> None:
    run = runstream.init(project="k", mode="offline", dir=tmp_path)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    model, x, y = model_and_data(keras, schedule)
    logger = integration.RunstreamMetricsLogger(log_freq=2)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[logger])  # 4 batches an epoch
    runstream.finish()
    rows = stripped(runstream.read_run(run.dir).history)
    batch_rows = [r for r in rows if "batch/batch_step" in r]
    epoch_rows = [r for r in rows if "epoch/epoch" in r]
    # Batches 0 and 2 of each epoch; batch_step counts batches across epochs (W&B's numbering).
    assert [r["batch/batch_step"] for r in batch_rows] == [0, 2, 4, 6]
    assert {"batch/loss", "batch/mae", "batch/learning_rate"} <= set(batch_rows[0])
    # The schedule is read at the optimizer's step: after 1, 3, 5 and 7 updates.
    assert [r["batch/learning_rate"] for r in batch_rows] == pytest.approx(
        [0.05, 0.0125, 0.003125, 0.00078125]
    )
    assert [r["epoch/epoch"] for r in epoch_rows] == [0, 1]  # epoch rows are logged too


def test_checkpoints_keras_writes_are_kept_with_the_run(
    tmp_path: Path, keras: ModuleType, integration: Any
) -> None:
    run = runstream.init(project="k", mode="offline", dir=tmp_path)
    model, x, y = model_and_data(keras)
    ckpt_dir = tmp_path / "ckpt"
    every = integration.RunstreamModelCheckpoint(str(ckpt_dir / "model-{epoch:02d}.keras"), monitor="loss")
    latest = integration.RunstreamModelCheckpoint(
        str(tmp_path / "w" / "last.weights.h5"), save_weights_only=True
    )
    best = integration.RunstreamModelCheckpoint(
        str(tmp_path / "best" / "best-{epoch}.keras"), monitor="val_loss", save_best_only=True, mode="min"
    )
    model.fit(x, y, epochs=3, batch_size=8, validation_split=0.25, verbose=0, callbacks=[every, latest, best])
    runstream.finish()
    files = Path(run.dir) / "files"
    for name in ("model-01.keras", "model-02.keras", "model-03.keras"):
        assert (files / name).read_bytes() == (ckpt_dir / name).read_bytes()
    # One path rewritten each epoch: the run's file is the last version.
    assert (files / "last.weights.h5").read_bytes() == (tmp_path / "w" / "last.weights.h5").read_bytes()
    # save_best_only: exactly the files Keras wrote (the epochs that improved), no others.
    written = sorted(p.name for p in (tmp_path / "best").iterdir())
    assert written and sorted(p.name for p in files.glob("best-*.keras")) == written


def test_callbacks_need_an_active_run_and_a_valid_log_freq(tmp_path: Path, integration: Any) -> None:
    with pytest.raises(UsageError, match=r"call runstream.init\(\) before RunstreamMetricsLogger"):
        integration.RunstreamMetricsLogger()
    with pytest.raises(UsageError, match=r"call runstream.init\(\) before RunstreamModelCheckpoint"):
        integration.RunstreamModelCheckpoint(str(tmp_path / "m.keras"))
    runstream.init(project="k", mode="offline", dir=tmp_path)
    for bad in ("step", 0, True):
        with pytest.raises(ValueError, match="log_freq must be 'epoch', 'batch' or an int >= 1"):
            integration.RunstreamMetricsLogger(log_freq=bad)
