"""``RunstreamCallback`` under a real ``transformers.Trainer``: a tiny BERT built from a config
(no download: ``HF_HUB_OFFLINE=1``) trained for 6 steps on random tokens, CPU.

What a user of ``report_to="wandb"`` relies on: ``report_to="runstream"`` works once
``runstream.integration.huggingface`` is imported; the training arguments and the model config in
the run's config; ``train/``/``eval/``/``test/`` metrics with ``train/global_step``; the
end-of-training figures in the summary; checkpoints and the final model kept with the run when
asked (``RUNSTREAM_LOG_MODEL``/``WANDB_LOG_MODEL``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import runstream
from runstream.integration.huggingface import RunstreamCallback

pytestmark = pytest.mark.usefixtures("finish_active_run")


class RandomTokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {"input_ids": torch.randint(0, 100, (8,), generator=g), "labels": torch.tensor(i % 2)}


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs the callback starts go offline under tmp_path; nothing reaches the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RUNSTREAM_MODE", "offline")
    monkeypatch.setenv("RUNSTREAM_DIR", str(tmp_path))
    return tmp_path


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=100,
        max_position_embeddings=16,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def trainer(out: Path, model: Any, callbacks: list[Any] | None = None, **kwargs: Any) -> Trainer:
    args = TrainingArguments(
        str(out),
        max_steps=6,
        logging_steps=2,
        save_steps=3,
        eval_strategy="steps",
        eval_steps=3,
        per_device_train_batch_size=4,
        use_cpu=True,
        disable_tqdm=True,
        **kwargs,
    )
    return Trainer(
        model=model, args=args, train_dataset=RandomTokens(), eval_dataset=RandomTokens(), callbacks=callbacks
    )


def below(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_report_to_runstream_logs_config_metrics_summary_and_checkpoints(
    offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_LOG_MODEL", "checkpoint")  # W&B's variable is honoured too
    model = tiny_bert()
    out = offline / "out"
    trainer(out, model, report_to="runstream", run_name="tiny").train()
    run = runstream.run
    assert run is not None
    runstream.finish()

    data = runstream.read_run(run.dir)
    assert data.run["project"] == "huggingface" and data.run["name"] == "tiny"
    cfg = data.config
    # The model's config, the training arguments over it, and the parameter count.
    assert cfg["hidden_size"] == 16 and cfg["num_hidden_layers"] == 1 and cfg["vocab_size"] == 100
    assert cfg["max_steps"] == 6 and cfg["logging_steps"] == 2 and cfg["learning_rate"] == 5e-05
    assert cfg["model/num_parameters"] == model.num_parameters() > 0

    train = [r for r in data.history if "train/loss" in r]
    evals = [r for r in data.history if "eval/loss" in r]
    assert [r["train/global_step"] for r in train] == [2, 4, 6]  # logging_steps=2
    assert [r["train/global_step"] for r in evals] == [3, 6]  # eval_steps=3
    assert {"train/learning_rate", "train/grad_norm", "train/epoch"} <= set(train[0])
    assert "loss" not in data.history_keys and "eval_loss" not in data.history_keys
    # End-of-training figures are summary values, not history.
    assert {"train_runtime", "train_loss", "total_flos"} <= set(data.summary)
    assert not {"train/train_runtime", "train/train_loss", "train_runtime"} & set(data.history_keys)

    # Each checkpoint directory (save_steps=3) and the final model are kept with the run.
    files = Path(run.dir) / "files"
    for step in (3, 6):
        ckpt = out / f"checkpoint-{step}"
        assert below(files / f"checkpoint-{step}") == below(ckpt)
        assert "model.safetensors" in below(ckpt)
    final = below(files / "model")
    assert {"config.json", "model.safetensors", "model_architecture.txt"} <= set(final)
    assert b"BertForSequenceClassification" in final["model_architecture.txt"]


def test_callbacks_list_joins_the_active_run_and_predict_logs_test_metrics(offline: Path) -> None:
    run = runstream.init(project="mine", config={"dataset": "random"})
    t = trainer(offline / "out", tiny_bert(), report_to="none", callbacks=[RunstreamCallback()])
    t.train()
    t.predict(RandomTokens())
    runstream.finish()

    data = runstream.read_run(run.dir)
    assert data.run["project"] == "mine"
    assert data.config["dataset"] == "random" and data.config["hidden_size"] == 16
    test_rows = [r for r in data.history if "test/loss" in r]
    assert len(test_rows) == 1 and "test/runtime" in test_rows[0]
    # train/global_step is the x-axis of every key (define_metric with step_sync, as WandbCallback).
    assert test_rows[0]["train/global_step"] == 6
    assert [r["train/global_step"] for r in data.history if "train/loss" in r] == [2, 4, 6]
    # log_model is off by default: no model files are kept.
    kept = below(Path(run.dir) / "files")
    assert not [name for name in kept if name.startswith(("checkpoint-", "model/"))]


def test_a_wrong_log_model_setting_is_refused_by_name(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNSTREAM_LOG_MODEL", "always")
    with pytest.raises(
        ValueError, match="RUNSTREAM_LOG_MODEL must be 'false', 'checkpoint' or 'end', not 'always'"
    ):
        trainer(offline / "out", tiny_bert(), report_to="runstream")
    with pytest.raises(ValueError, match="log_model must be"):
        RunstreamCallback(log_model="yes")


def test_wandb_watch_histograms_the_models_gradients_every_100_batches(
    offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_WATCH", "gradients")  # WandbCallback's switch, honoured as it is
    args = TrainingArguments(
        str(offline / "out"),
        max_steps=100,
        logging_steps=50,
        save_strategy="no",
        per_device_train_batch_size=2,
        use_cpu=True,
        disable_tqdm=True,
        report_to="runstream",
    )
    Trainer(model=tiny_bert(), args=args, train_dataset=RandomTokens()).train()
    run = runstream.run
    assert run is not None
    runstream.finish()
    rows = runstream.read_run(run.dir).history
    with_hist = [r for r in rows if any(k.startswith("gradients/") for k in r)]
    # max(100, logging_steps) batches: one set of histograms, W&B's names and shape.
    assert len(with_hist) == 1
    h = with_hist[0]["gradients/classifier.weight"]
    assert h["_type"] == "histogram" and len(h["bins"]) == 65
    assert not any(k.startswith("parameters/") for r in rows for k in r)
