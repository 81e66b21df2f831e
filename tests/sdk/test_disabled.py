"""mode="disabled": W&B-style calls all work and leave nothing behind."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import psutil
import pytest

from runstream.disabled import DisabledRun
from runstream.errors import ConfigError
from runstream.settings import resolve_settings


@pytest.fixture(autouse=True)
def in_tmp_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # conftest's clean_env has removed RUNSTREAM_*/WANDB_*; runs made here land in tmp_path.
    monkeypatch.chdir(tmp_path)


def make_run(tmp_path: Path, **config: object) -> DisabledRun:
    settings = resolve_settings(mode="disabled", dir=tmp_path, project="proj", entity="me", tags=["t"])
    return DisabledRun(settings, dict(config))


def test_a_whole_wandb_style_script_leaves_no_files_and_no_processes(tmp_path: Path) -> None:
    children_before = psutil.Process().children(recursive=True)
    with make_run(tmp_path, lr=0.1) as run:
        run.config.update({"epochs": 2})
        run.config.batch = 32
        for step in range(3):
            run.log({"loss": 1.0 / (step + 1)}, step=step)
            run.log({"acc": 0.5}, commit=False)
        run.summary["best"] = 0.9
        run.summary.final = 1.0
        run.summary.update({"extra": 1})
        run.watch(object(), log="all", log_freq=10)
        run.define_metric("loss", summary="min")
        run.save("*.pt", policy="end")
        run.alert(title="t", text="x")
        run.log_artifact("model.pt", type="model")  # not supported: a no-op when disabled
        # W&B returns an Artifact here: a disabled run gives an inert one (docs/compatibility.md).
        assert run.use_artifact("dataset:latest").download() is not None
        run.mark_preempting()
        run.finish(exit_code=0)
    assert list(tmp_path.iterdir()) == []
    assert psutil.Process().children(recursive=True) == children_before


def test_run_attributes(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    assert len(run.id) == 8
    assert run.path == f"me/proj/{run.id}"
    assert (run.project, run.entity, run.tags) == ("proj", "me", ("t",))
    assert isinstance(run.name, str) and run.name
    assert isinstance(run.dir, str) and os.path.isdir(run.dir)  # existing; nothing was created
    assert run.notes is None and run.group is None and run.job_type is None
    settings = resolve_settings(mode="disabled", run_id="given", name="named")
    assert (DisabledRun(settings, {}).id, DisabledRun(settings, {}).name) == ("given", "named")


def test_config_behaves_like_a_tracked_run(tmp_path: Path) -> None:
    run = make_run(tmp_path, lr=0.1)
    assert run.config.lr == 0.1 and run.config["lr"] == 0.1
    with pytest.raises(ConfigError, match="'lr'"):
        run.config.lr = 0.2
    settings = resolve_settings(mode="disabled")
    run2 = DisabledRun(settings, {"lr": 0.1}, allow_val_change=True)
    run2.config.lr = 0.2
    assert run2.config.lr == 0.2


def test_summary_is_dict_like(tmp_path: Path) -> None:
    summary = make_run(tmp_path).summary
    summary["a"] = 1
    summary.b = 2
    summary.update({"c": 3})
    assert summary.a == 1 and summary["b"] == 2 and summary.get("c") == 3
    assert dict(summary) == {"a": 1, "b": 2, "c": 3} and len(summary) == 3
    del summary["a"]
    assert "a" not in summary
    with pytest.raises(AttributeError):
        _ = summary.missing
    assert copy.deepcopy(summary) == {"b": 2, "c": 3}


def test_exceptions_propagate_from_the_with_block(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), make_run(tmp_path):
        raise RuntimeError("boom")


def test_dunder_names_are_not_faked(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    with pytest.raises(AttributeError):
        run.__wrapped__  # noqa: B018
    assert callable(run.anything_else)
