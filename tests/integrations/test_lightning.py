"""``RunstreamLogger`` under a real Lightning ``Trainer``: a 2-layer MLP on random tensors, CPU.

What a user of Lightning's ``WandbLogger`` relies on: hyperparameters in the config, each logged
metric in a row carrying ``trainer/global_step``, checkpoints kept with the run (``log_model``),
Lightning's directory layout (``<save_dir>/<project>/<run id>/checkpoints``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import pytorch_lightning as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import runstream
from runstream.integration.lightning import RunstreamLogger
from runstream.integration.pytorch_lightning import RunstreamLogger as PLLogger

# Lightning's own advice (few dataloader workers, a tiny dataset) and a torch deprecation inside
# Lightning are about the framework, not about what these tests check.
pytestmark = [
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
    pytest.mark.usefixtures("finish_active_run"),
]


def make_module(base: Any) -> Any:
    class MLP(base):  # type: ignore[misc, valid-type]
        def __init__(self, hidden: int = 8, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 1))

        def training_step(self, batch: Any, _i: int) -> Any:
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, _i: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return MLP()


def loaders() -> tuple[DataLoader[Any], DataLoader[Any]]:
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g))
    return DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=16)  # 4 training steps an epoch


def fit(trainer_mod: Any, logger: Any, tmp_path: Path, *callbacks: Any) -> Any:
    trainer = trainer_mod.Trainer(
        max_epochs=2,
        logger=logger,
        log_every_n_steps=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    trainer.fit(make_module(trainer_mod.LightningModule), *loaders())
    return trainer


def files_of(run_dir: str) -> dict[str, bytes]:
    root = Path(run_dir) / "files"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.ckpt")}


def test_fit_logs_config_metrics_at_the_trainers_step_and_every_checkpoint(tmp_path: Path) -> None:
    logger = RunstreamLogger(project="mlp", save_dir=tmp_path, offline=True, log_model="all", tags=["t1"])
    checkpoints = ModelCheckpoint(save_top_k=-1)  # one file per epoch, all kept
    fit(L, logger, tmp_path, checkpoints)
    run = logger.experiment
    assert logger.name == "mlp" and logger.version == run.id and logger.save_dir == str(tmp_path)
    logger.log_metrics({"test_acc": 0.5})  # no step: trainer/global_step is the x-axis of "*"
    runstream.finish()

    data = runstream.read_run(run.dir)
    assert data.run["project"] == "mlp" and data.run["state"] == "finished"
    assert data.config == {"hidden": 8, "lr": 0.05}
    train = [r for r in data.history if "train_loss" in r]
    val = [r for r in data.history if "val_loss" in r]
    # log_every_n_steps=2 over 8 steps; validation at the end of each epoch (steps 4 and 8).
    assert [r["trainer/global_step"] for r in train] == [1, 3, 5, 7]
    assert [r["trainer/global_step"] for r in val] == [3, 7]
    assert [r["epoch"] for r in val] == [0, 1]
    assert all(isinstance(r["train_loss"], float) for r in train)
    assert [r["_step"] for r in data.history] == list(range(7))  # each log_metrics call is a row
    # define_metric("*", step_metric="trainer/global_step", step_sync=True), as WandbLogger's: a
    # row logged without the step reads back with its latest value.
    assert data.history[-1]["test_acc"] == 0.5 and data.history[-1]["trainer/global_step"] == 7

    # Lightning's layout with this logger, and each checkpoint kept byte for byte with the run.
    ckpt_dir = tmp_path / "mlp" / run.id / "checkpoints"
    assert Path(checkpoints.dirpath) == ckpt_dir
    on_disk = {f"checkpoints/{p.name}": p.read_bytes() for p in ckpt_dir.iterdir()}
    assert sorted(on_disk) == ["checkpoints/epoch=0-step=4.ckpt", "checkpoints/epoch=1-step=8.ckpt"]
    assert files_of(run.dir) == on_disk


def test_log_model_true_keeps_the_best_and_last_checkpoints_when_fitting_ends(tmp_path: Path) -> None:
    logger = RunstreamLogger(project="mlp", save_dir=tmp_path, offline=True, log_model=True)
    checkpoints = ModelCheckpoint(monitor="val_loss", save_top_k=1, save_last=True)
    fit(L, logger, tmp_path, checkpoints)
    run = logger.experiment
    runstream.finish()
    kept = files_of(run.dir)
    assert sorted(kept) == sorted(
        {f"checkpoints/{Path(checkpoints.best_model_path).name}", "checkpoints/last.ckpt"}
    )
    assert kept["checkpoints/last.ckpt"] == Path(checkpoints.last_model_path).read_bytes()


def test_no_log_model_keeps_no_checkpoint(tmp_path: Path) -> None:
    logger = RunstreamLogger(project="mlp", save_dir=tmp_path, offline=True)
    fit(L, logger, tmp_path, ModelCheckpoint(save_top_k=-1))
    run = logger.experiment
    runstream.finish()
    assert files_of(run.dir) == {}
    assert len(runstream.read_run(run.dir).history) == 6


def test_an_active_run_is_reused_with_a_prefix_and_hyperparameters_are_sanitised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runstream.init(project="mine", mode="offline", dir=tmp_path, config={"seed": 1})
    logger = RunstreamLogger(prefix="fold1", save_dir=tmp_path)
    assert logger.experiment is run
    assert "already active" in capsys.readouterr().err
    logger.log_hyperparams(argparse.Namespace(act=torch.relu, dims=[4, 8], seed=2))
    logger.log_metrics({"acc": 0.5}, step=10)
    logger.log_metrics({"acc": 0.75})
    runstream.finish()
    data = runstream.read_run(run.dir)
    # A callable is logged by name; a changed key is allowed (WandbLogger's allow_val_change).
    assert data.config == {"seed": 2, "act": "relu", "dims": [4, 8]}
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in data.history]
    assert rows == [{"fold1-acc": 0.5, "trainer/global_step": 10}, {"fold1-acc": 0.75}]


def test_a_wrong_log_model_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="log_model must be True, False or 'all', not 'best'"):
        RunstreamLogger(log_model="best")


def test_pytorch_lightning_gets_its_own_logger_class(tmp_path: Path) -> None:
    logger = PLLogger(project="pl", save_dir=tmp_path, offline=True)
    assert isinstance(logger, pl.loggers.Logger)
    fit(pl, logger, tmp_path)
    run = logger.experiment
    runstream.finish()
    data = runstream.read_run(run.dir)
    assert data.config == {"hidden": 8, "lr": 0.05}
    assert [r["trainer/global_step"] for r in data.history if "val_loss" in r] == [3, 7]


def test_import_runstream_imports_no_framework() -> None:
    code = (
        "import sys, runstream\n"
        "heavy = [m for m in ('lightning', 'pytorch_lightning', 'transformers', 'keras', 'torch')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import runstream.integration\n"
        "assert 'lightning' not in sys.modules\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr


def test_the_loggers_watch_histograms_gradients_as_wandb_loggers_does(tmp_path: Path) -> None:
    logger = RunstreamLogger(project="mlp", save_dir=tmp_path, offline=True)
    module = make_module(L.LightningModule)
    logger.watch(module, log="gradients", log_freq=2)  # WandbLogger.watch's arguments
    trainer = L.Trainer(
        max_epochs=1,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    trainer.fit(module, *loaders())
    run = logger.experiment
    runstream.finish()
    rows = runstream.read_run(run.dir).history
    hists = [r for r in rows if "gradients/net.0.weight" in r]
    # 4 batches, every 2nd backward (training_step calls self.net, not forward: W&B's count).
    assert len(hists) == 2
    assert all(r["gradients/net.0.weight"]["_type"] == "histogram" for r in hists)
