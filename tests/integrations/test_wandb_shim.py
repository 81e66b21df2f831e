"""Code that does ``import wandb`` itself, unchanged, against runstream (runstream.wandb_shim,
docs/wandb-shim.md): Lightning's own ``WandbLogger``, Hugging Face's ``Trainer(report_to="wandb")``
and Accelerate's ``WandBTracker`` write runstream runs; the shim is opt-in.

wandb is not installed.  Each framework run is a fresh Python process, so ``sys.modules`` starts
clean and the switch is exercised the way users flip it (``runstream as-wandb``, ``PYTHONPATH``,
or ``install()`` in the script).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

import runstream
from runstream.errors import UsageError
from runstream.wandb_shim import WANDB_VERSION, install, installed, pythonpath_dir

TIMEOUT = 240  # seconds per child; framework imports take a few of them


def run_py(
    tmp_path: Path, body: str, *, shim: str | None, env: dict[str, str] | None = None, name: str = "train"
) -> subprocess.CompletedProcess[str]:
    """Run ``body`` as a script in ``tmp_path``.  ``shim``: ``"cli"`` (``runstream as-wandb``),
    ``"pythonpath"`` (the folder on PYTHONPATH), or ``None`` (no switch; the script may call
    ``install()`` itself)."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    child_env.pop("PYTHONPATH", None)
    child_env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    child_env.update(env or {})
    cmd = [sys.executable, str(path)]
    if shim == "cli":
        cmd = [sys.executable, "-m", "runstream.cli", "as-wandb", *cmd]
    elif shim == "pythonpath":
        child_env["PYTHONPATH"] = str(pythonpath_dir())
    return subprocess.run(
        cmd, cwd=tmp_path, env=child_env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def ok(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON object the script printed last, after checking it exited 0."""
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


LIGHTNING = """
import json
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import lightning as L
from lightning.pytorch.loggers import WandbLogger

class Tiny(L.LightningModule):
    def __init__(self, lr=0.05, hidden=4):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def training_step(self, batch, _):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

torch.manual_seed(0)
data = TensorDataset(torch.randn(32, 3), torch.randn(32, 1))
logger = WandbLogger(project="shim-lightning", offline=True)  # sets WANDB_MODE=dryrun
trainer = L.Trainer(max_epochs=2, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
trainer.fit(Tiny(), DataLoader(data, batch_size=8), DataLoader(data, batch_size=16))

import runstream, wandb
print(json.dumps({"dir": wandb.run.dir, "same_run": logger.experiment is runstream.run,
                  "mode": wandb.run.mode,
                  "type": type(logger.experiment).__module__}))
"""


@pytest.mark.slow
def test_lightning_wandb_logger_trains_into_a_runstream_run(tmp_path: Path) -> None:
    out = ok(run_py(tmp_path, LIGHTNING, shim="cli"))
    assert out["same_run"] and out["type"] == "runstream.run" and out["mode"] == "offline"

    data = runstream.read_run(out["dir"])
    assert data.run["state"] == "finished" and data.run["project"] == "shim-lightning"
    assert data.config == {"lr": 0.05, "hidden": 4}  # save_hyperparameters -> log_hyperparams
    train = [r for r in data.history if "train_loss" in r]
    # 32 samples / batch 8 = 4 steps per epoch, 2 epochs, logged every step with Lightning's step.
    assert [r["trainer/global_step"] for r in train] == list(range(8))
    assert [r["epoch"] for r in train] == [0] * 4 + [1] * 4
    val = [r for r in data.history if "val_loss" in r]
    assert [r["trainer/global_step"] for r in val] == [3, 7]
    assert data.summary["val_loss"] == val[-1]["val_loss"]
    # WandbLogger's define_metric calls reached the run: Lightning's step is the x axis.
    assert data.metrics["*"]["step_metric"] == "trainer/global_step"


HF = """
import json
import runstream.wandb_shim
runstream.wandb_shim.install()  # the notebook way: before anything imports wandb

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

class Data(torch.utils.data.Dataset):
    def __init__(self, n=24):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 50, (n, 8), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)
    def __len__(self):
        return len(self.ids)
    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}

torch.manual_seed(0)
config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=16, num_labels=2)
model = BertForSequenceClassification(config)
args = TrainingArguments(output_dir="out", report_to="wandb", max_steps=6, logging_steps=2,
                         per_device_train_batch_size=4, save_strategy="no", use_cpu=True,
                         run_name="hf-shim", disable_tqdm=True)
Trainer(model=model, args=args, train_dataset=Data()).train()

import wandb
print(json.dumps({"dir": wandb.run.dir, "params": model.num_parameters()}))
"""


@pytest.mark.slow
def test_hugging_face_trainer_report_to_wandb_logs_to_a_runstream_run(tmp_path: Path) -> None:
    out = ok(run_py(tmp_path, HF, shim=None, env={"WANDB_MODE": "offline", "WANDB_PROJECT": "shim-hf"}))

    data = runstream.read_run(out["dir"])
    assert data.run["name"] == "hf-shim" and data.run["project"] == "shim-hf"
    assert data.run["state"] == "finished"
    # The model config, the TrainingArguments and the parameter count, as WandbCallback sets them.
    assert data.config["hidden_size"] == 16 and data.config["max_steps"] == 6
    assert data.config["model/num_parameters"] == out["params"]
    losses = [r for r in data.history if "train/loss" in r]
    assert [r["train/global_step"] for r in losses] == [2, 4, 6]  # logging_steps=2, max_steps=6
    assert all(0 < r["train/loss"] < 10 for r in losses)
    assert all("train/learning_rate" in r for r in losses)
    # End-of-training scalars go to the summary, not the history (WandbCallback's single values).
    assert data.summary["train_loss"] > 0 and "train_loss" not in data.history_keys
    assert data.metrics["*"]["step_metric"] == "train/global_step"


ACCELERATE = """
import json
from accelerate import Accelerator

acc = Accelerator(log_with="wandb", cpu=True)
acc.init_trackers("shim-accelerate", config={"lr": 0.1})
for step in range(3):
    acc.log({"loss": 1.0 / (step + 1)}, step=step)
import wandb
d = wandb.run.dir
acc.end_training()
print(json.dumps({"dir": d, "after_end": wandb.run is None}))
"""


@pytest.mark.slow
def test_accelerate_wandb_tracker_logs_to_a_runstream_run(tmp_path: Path) -> None:
    out = ok(run_py(tmp_path, ACCELERATE, shim="pythonpath", env={"WANDB_MODE": "offline"}))
    assert out["after_end"]  # end_training finished the run
    data = runstream.read_run(out["dir"])
    assert data.run["project"] == "shim-accelerate" and data.config == {"lr": 0.1}
    assert [(r["_step"], r["loss"]) for r in data.history] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]


PROBE = """
import importlib.metadata, importlib.util, json, os
out = {"spec": importlib.util.find_spec("wandb") is not None}
try:
    out["version"] = importlib.metadata.version("wandb")
except importlib.metadata.PackageNotFoundError as e:
    out["version"] = "PackageNotFoundError"
try:
    import wandb
    out["import"] = wandb.__version__
except ModuleNotFoundError as e:
    out["import"] = f"ModuleNotFoundError: {e.name}"
if out["spec"] and os.environ.get("PROBE_FRAMEWORKS"):
    from lightning_utilities.core.imports import RequirementCache
    from accelerate.utils import is_wandb_available as acc
    from transformers.integrations import is_wandb_available as hf
    out["lightning"] = bool(RequirementCache("wandb>=0.12.10"))
    out["accelerate"], out["transformers"] = acc(), hf()
    from wandb.sdk.lib import RunDisabled
    from wandb.wandb_run import Run
    from wandb.sdk.lib.config_util import ConfigError
    import runstream, wandb.env
    out["types"] = [RunDisabled is runstream.disabled.DisabledRun, Run is runstream.Run,
                    ConfigError is runstream.ConfigError, wandb.env.MODE == "WANDB_MODE"]
    try:
        import wandb.integration.keras
    except ModuleNotFoundError as e:
        out["missing"] = e.name
print(json.dumps(out))
"""


def test_without_the_switch_wandb_stays_missing(tmp_path: Path) -> None:
    out = ok(run_py(tmp_path, PROBE, shim=None))
    assert out == {"spec": False, "version": "PackageNotFoundError", "import": "ModuleNotFoundError: wandb"}


def test_the_cli_switch_makes_wandb_importable_with_its_distribution(tmp_path: Path) -> None:
    out = ok(run_py(tmp_path, PROBE, shim="cli"))
    assert out == {"spec": True, "version": WANDB_VERSION, "import": WANDB_VERSION}


@pytest.mark.slow
def test_the_switch_satisfies_the_integrations_distribution_checks(tmp_path: Path) -> None:
    out = ok(run_py(tmp_path, PROBE, shim="pythonpath", env={"PROBE_FRAMEWORKS": "1"}))
    assert out["spec"] and out["version"] == out["import"] == WANDB_VERSION
    assert out["lightning"] and out["accelerate"] and out["transformers"]
    assert out["types"] == [True, True, True, True]
    assert out["missing"].startswith("wandb.integration")  # what the shim does not serve is missing


def test_install_in_process_and_uninstall(tmp_path: Path) -> None:
    body = """
    import importlib.metadata, json, runstream.wandb_shim as shim
    before = shim.installed()
    wandb = shim.install()
    again = shim.install()
    import wandb as imported
    out = {"before": before, "same": wandb is again is imported,
           "version": importlib.metadata.version("wandb"),
           "dists": len(list(importlib.metadata.distributions(name="wandb")))}
    shim.uninstall()
    try:
        import wandb
        out["after"] = "imported"
    except ModuleNotFoundError:
        out["after"] = "ModuleNotFoundError"
    try:
        importlib.metadata.version("wandb")
    except importlib.metadata.PackageNotFoundError:
        out["after_version"] = "PackageNotFoundError"
    print(json.dumps(out))
    """
    out = ok(run_py(tmp_path, body, shim=None))
    assert out == {
        "before": False,
        "same": True,
        "version": WANDB_VERSION,
        "dists": 1,
        "after": "ModuleNotFoundError",
        "after_version": "PackageNotFoundError",
    }


def test_unsupported_w_and_b_features_fail_clearly_and_wandb_disabled_is_honoured(tmp_path: Path) -> None:
    body = """
    import json, os, wandb, runstream
    from runstream.errors import NotSupportedError
    out = {}
    try:
        wandb.Artifact("model-x", type="model")
    except NotSupportedError as e:
        out["artifact"] = str(e)
    os.environ["WANDB_DISABLED"] = "true"  # read by init, as W&B does
    run = wandb.init(project="p")
    out["disabled"] = isinstance(run, wandb.sdk.lib.RunDisabled)
    run.log({"x": 1})
    wandb.finish()
    out["made_files"] = os.path.exists("runstream")
    print(json.dumps(out))
    """
    out = ok(run_py(tmp_path, body, shim="pythonpath"))
    assert "not supported" in out["artifact"].lower()
    assert out["disabled"] and not out["made_files"]


@pytest.mark.slow
def test_hf_wandb_log_model_stops_with_the_not_supported_error(tmp_path: Path) -> None:
    body = HF.replace('"dir": wandb.run.dir, ', "")
    proc = run_py(tmp_path, body, shim=None, env={"WANDB_MODE": "offline", "WANDB_LOG_MODEL": "end"})
    assert proc.returncode != 0
    assert "NotSupportedError" in proc.stderr and "artifact" in proc.stderr.lower()


def test_install_refuses_when_the_real_wandb_is_already_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    real = types.ModuleType("wandb")
    real.__file__ = "/site-packages/wandb/__init__.py"
    monkeypatch.setitem(sys.modules, "wandb", real)
    with pytest.raises(UsageError, match="real wandb package is already imported"):
        install()
    assert not installed() and sys.modules["wandb"] is real


def test_cli_prints_the_folder_and_the_stand_in_metadata_matches(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "as-wandb", "--path"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    folder = Path(proc.stdout.strip())
    assert folder == pythonpath_dir() and (folder / "wandb" / "__init__.py").is_file()
    (dist,) = folder.glob("wandb-*.dist-info")
    assert f"Version: {WANDB_VERSION}\n" in (dist / "METADATA").read_text()
    assert dist.name == f"wandb-{WANDB_VERSION.split('+')[0]}.dist-info"

    missing = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "as-wandb"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert missing.returncode == 2 and "give the command to run" in missing.stderr
