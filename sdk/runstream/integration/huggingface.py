"""``RunstreamCallback``: a Hugging Face ``TrainerCallback`` writing to a runstream run.

    import runstream.integration.huggingface  # registers report_to="runstream"
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments("out", report_to="runstream", logging_steps=10)
    Trainer(model=model, args=args, train_dataset=ds).train()

or ``Trainer(..., callbacks=[RunstreamCallback()])`` with ``report_to="none"``.  It logs what
transformers' ``WandbCallback`` logs (docs/integrations.md): the training arguments and the
model's config into the run's config (plus ``model/num_parameters``), each ``on_log`` as a row
with ``train/``, ``eval/`` and ``test/`` names and ``train/global_step``, the end-of-training
figures (``train_runtime``, ``train_loss``...) into the summary, and, with ``log_model``
(``RUNSTREAM_LOG_MODEL`` or ``WANDB_LOG_MODEL``), checkpoints and the final model as run files.

Importing this module imports ``transformers`` and adds ``"runstream"`` to its
``INTEGRATION_TO_CALLBACK`` table, which is what ``report_to`` names are looked up in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import integration_utils

from runstream.integration._common import default_project, save_checkpoint, warn

__all__ = ["RunstreamCallback"]

STEP_KEY = "train/global_step"
LOG_MODEL_VALUES = ("false", "checkpoint", "end")
# Figures the Trainer logs once, at the end of training: summary values, not history rows.
SINGLE_VALUE_SCALARS = (
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "train_loss",
    "total_flos",
)


def rewrite_logs(logs: Mapping[str, Any]) -> dict[str, Any]:
    """``eval_x`` -> ``eval/x``, ``test_x`` -> ``test/x``, anything else -> ``train/x``
    (the names ``WandbCallback`` logs)."""
    out: dict[str, Any] = {}
    for k, v in logs.items():
        if k.startswith("eval_"):
            out["eval/" + k[5:]] = v
        elif k.startswith("test_"):
            out["test/" + k[5:]] = v
        else:
            out["train/" + k] = v
    return out


def _log_model_setting(log_model: str | None) -> str:
    if log_model is not None:
        value, where = log_model, "log_model"
    elif os.environ.get("RUNSTREAM_LOG_MODEL"):
        value, where = os.environ["RUNSTREAM_LOG_MODEL"], "RUNSTREAM_LOG_MODEL"
    else:
        value, where = os.environ.get("WANDB_LOG_MODEL", "false"), "WANDB_LOG_MODEL"
    if not isinstance(value, str) or value.lower() not in LOG_MODEL_VALUES:
        raise ValueError(f"RunstreamCallback: {where} must be 'false', 'checkpoint' or 'end', not {value!r}")
    return value.lower()


class RunstreamCallback(TrainerCallback):
    """Log a ``transformers.Trainer``'s training to a runstream run (``WandbCallback``'s behaviour).

    Args:
        log_model: ``"false"`` (default): no model files; ``"checkpoint"``: each checkpoint the
            Trainer writes (``save_steps``) is kept as run files under
            ``files/checkpoint-<step>/``, and the final model as with ``"end"``; ``"end"``: the
            final model (``save_pretrained``, with the tokenizer or processor and
            ``model_architecture.txt``) is written to the run's ``files/model/``.  When not given:
            ``RUNSTREAM_LOG_MODEL``, else ``WANDB_LOG_MODEL``, else ``"false"``.

    Raises:
        ValueError: ``log_model`` (or the variable it came from) is not one of those values.

    The run is started at the beginning of training (``runstream.init`` with ``RUNSTREAM_PROJECT``,
    ``WANDB_PROJECT`` or ``"huggingface"`` as project and ``TrainingArguments.run_name`` as name)
    unless one is active, which is then used.  It is not finished at the end of training (the
    Trainer's later ``evaluate``/``predict`` calls log to it): ``runstream.finish()`` or the
    interpreter's exit does it.  Nothing here waits for the sidecar or the network; saving the
    final model (``log_model``) writes it to disk on the training thread.
    """

    def __init__(self, log_model: str | None = None) -> None:
        self._log_model = _log_model_setting(log_model)
        self._initialized = False
        self._run: Any = None

    def setup(self, args: TrainingArguments, state: TrainerState, model: Any, **kwargs: Any) -> None:
        """Start (or join) the run and record the configuration: the model's config, then the
        training arguments over it, then ``model/num_parameters``.  Called by
        ``on_train_begin``, or by the first ``on_log`` when training has not begun."""
        import runstream

        self._initialized = True
        if not state.is_world_process_zero:
            return
        combined: dict[str, Any] = {**args.to_dict()}  # type: ignore[no-untyped-call, unused-ignore]
        if getattr(model, "config", None) is not None:
            model_config = model.config if isinstance(model.config, dict) else model.config.to_dict()
            combined = {**model_config, **combined}
        if getattr(model, "peft_config", None) is not None:
            combined = {"peft_config": model.peft_config, **combined}
        init_args: dict[str, Any] = {}
        if state.trial_name is not None:
            init_args = {"name": state.trial_name, "group": args.run_name or args.output_dir}
        elif args.run_name is not None:
            init_args = {"name": args.run_name}
        if runstream.run is None:
            runstream.init(project=default_project("huggingface"), **init_args)
        self._run = runstream.run
        self._run.config.update(combined, allow_val_change=True)
        # The x-axis of every metric is the Trainer's step, as WandbCallback defines it.
        self._run.define_metric(STEP_KEY)
        self._run.define_metric("*", step_metric=STEP_KEY, step_sync=True)
        try:
            self._run.config.update({"model/num_parameters": model.num_parameters()}, allow_val_change=True)
        except AttributeError:  # a plain torch module has no num_parameters
            pass
        # WandbCallback's WANDB_WATCH ("false" by default): histograms every max(100, logging
        # steps) batches through runstream.watch (docs/watch.md).
        watch = os.environ.get("RUNSTREAM_WATCH") or os.environ.get("WANDB_WATCH") or "false"
        if watch in ("all", "parameters", "gradients") and model is not None:
            self._run.watch(model, log=watch, log_freq=max(100, state.logging_steps))

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        """Start the run; a hyperparameter search finishes the previous trial's run first."""
        import runstream

        if state.is_hyper_param_search:
            runstream.finish()
            self._initialized = False
            args.run_name = None
        if not self._initialized:
            self.setup(args, state, model, **kwargs)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Log ``logs`` as one row with ``train/global_step``; end-of-training figures go to the
        summary instead."""
        if not self._initialized:
            self.setup(args, state, model)
        if not state.is_world_process_zero or self._run is None:
            return
        logs = logs or {}
        for k, v in logs.items():
            if k in SINGLE_VALUE_SCALARS:
                self._run.summary[k] = v
        row = rewrite_logs({k: v for k, v in logs.items() if k not in SINGLE_VALUE_SCALARS})
        self._run.log({**row, STEP_KEY: state.global_step})

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """With ``log_model="checkpoint"``: keep ``<output_dir>/checkpoint-<step>/`` with the run."""
        if self._log_model != "checkpoint" or not self._initialized or not state.is_world_process_zero:
            return
        if self._run is None:
            return
        output_dir = str(args.output_dir)  # TrainingArguments sets it when it is None
        checkpoint = os.path.join(output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(checkpoint):
            warn(
                f"the Trainer reported a checkpoint at step {state.global_step} but {checkpoint} is not there"
            )
            return
        save_checkpoint(self._run, [checkpoint], os.path.abspath(output_dir))

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        """With ``log_model`` ``"end"`` or ``"checkpoint"``: write the final model into the run's
        ``files/model/`` (kept with the run)."""
        if self._log_model == "false" or not self._initialized or not state.is_world_process_zero:
            return
        if self._run is None or model is None or getattr(self._run, "mode", None) == "disabled":
            return
        files = os.path.join(self._run.dir, "files")
        target = os.path.join(files, "model")
        try:
            model.save_pretrained(target)
            processor = kwargs.get("processing_class")
            if processor is not None and hasattr(processor, "save_pretrained"):
                processor.save_pretrained(target)
            with open(os.path.join(target, "model_architecture.txt"), "w", encoding="utf-8") as f:
                print(model, file=f)
        except Exception as e:  # the model is trained: failing to keep a copy must not undo that
            warn(f"the final model was not saved with the run: {e}")
            return
        # Written in place under files/, so "end": the file is its own copy, uploaded at finish.
        save_checkpoint(self._run, [target], files, policy="end")

    def on_predict(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        """Log ``Trainer.predict``'s metrics as one row (``test/...``)."""
        if not self._initialized:
            self.setup(args, state, kwargs.get("model"))
        if state.is_world_process_zero and self._run is not None and metrics:
            self._run.log(rewrite_logs(metrics))


# report_to="runstream": the Trainer looks report_to names up in this table when it is built.
integration_utils.INTEGRATION_TO_CALLBACK.setdefault("runstream", RunstreamCallback)
