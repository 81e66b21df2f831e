"""The public API: what ``runstream`` exports, that it documents itself, and that ``init`` takes
exactly W&B's parameters (a misspelt keyword is an error, an unsupported feature a warning)."""

from __future__ import annotations

import inspect
import typing
import warnings
from pathlib import Path
from typing import Any

import pytest

import runstream
from runstream.disabled import DisabledRun
from runstream.errors import UsageError
from runstream.read.api_runs import ApiRun
from runstream.run import Run

pytestmark = pytest.mark.usefixtures("finish_active_run")

# What W&B scripts commonly use at the top level and runstream provides.  (W&B's ``watch``,
# ``define_metric``, ``Table``, ``Image``, ``Artifact``... are not provided.)
WANDB_TOP_LEVEL = (
    "init",
    "log",
    "finish",
    "config",
    "summary",
    "run",
    "save",
    "login",
    "Api",
    "Run",
    "Error",
    "__version__",
)

# Every parameter of ``wandb.init`` (shared/reference/wandb-api-init-log-watch-login-finish.md),
# and the two newer wandb releases added.
WANDB_INIT_PARAMS = (
    "job_type",
    "dir",
    "config",
    "project",
    "entity",
    "reinit",
    "tags",
    "group",
    "name",
    "notes",
    "magic",
    "config_exclude_keys",
    "config_include_keys",
    "anonymous",
    "mode",
    "allow_val_change",
    "resume",
    "force",
    "tensorboard",
    "sync_tensorboard",
    "monitor_gym",
    "save_code",
    "id",
    "settings",
    "fork_from",
    "resume_from",
)


def disabled(**kw: Any) -> Any:
    return runstream.init(mode="disabled", **kw)


def test_every_name_in_all_exists() -> None:
    missing = [name for name in runstream.__all__ if not hasattr(runstream, name)]
    assert missing == []
    assert len(set(runstream.__all__)) == len(runstream.__all__)


def test_the_wandb_top_level_names_scripts_use_exist() -> None:
    assert [name for name in WANDB_TOP_LEVEL if not hasattr(runstream, name)] == []
    assert runstream.Run is Run and "Run" in runstream.__all__


def test_every_public_callable_is_documented() -> None:
    undocumented = [
        name
        for name in runstream.__all__
        if callable(getattr(runstream, name)) and not inspect.getdoc(getattr(runstream, name))
    ]
    assert undocumented == []
    # Run.log is C code when the extension is built: its full docstring is the Python log's.
    methods: list[Any] = [
        Run._log_py,
        Run.finish,
        Run.save,
        runstream.Api.__init__,
        runstream.Api.run,
        runstream.Api.runs,
        runstream.Api.projects,
        ApiRun.history,
        ApiRun.scan_history,
        DisabledRun,
    ]
    assert [m.__qualname__ for m in methods if not inspect.getdoc(m)] == []
    sections: dict[Any, tuple[str, ...]] = {
        runstream.init: ("Args:", "Returns:", "Raises:", "Blocking:"),
        Run._log_py: ("Args:", "Raises:", "Back-pressure:"),
        Run.finish: ("Args:", "Blocking:"),
    }
    for documented, wanted in sections.items():
        doc = inspect.getdoc(documented) or ""
        assert [w for w in wanted if w not in doc] == [], documented.__qualname__


def test_init_and_finish_have_real_return_types() -> None:
    assert typing.get_type_hints(runstream.init)["return"] == Run | DisabledRun
    assert typing.get_type_hints(runstream.finish)["return"] is type(None)


def test_init_takes_every_wandb_parameter_and_no_catch_all() -> None:
    params = inspect.signature(runstream.init).parameters
    assert [p for p in WANDB_INIT_PARAMS if p not in params] == []
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params.values())
    # The order of the reference's signature, for the rare script that passes some positionally.
    assert list(params) == list(WANDB_INIT_PARAMS)


def test_a_misspelt_keyword_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="projct"):
        runstream.init(projct="x", mode="disabled")  # type: ignore[call-arg]
    assert runstream.run is None  # nothing was started


def test_every_wandb_parameter_is_accepted(tmp_path: Path) -> None:
    quiet: dict[str, Any] = {
        "job_type": "train",
        "dir": tmp_path,
        "config": {"lr": 0.1, "secret": 1},
        "project": "p",
        "entity": "e",
        "reinit": True,
        "tags": ["a"],
        "group": "g",
        "name": "n",
        "notes": "some notes",
        "magic": False,
        "config_exclude_keys": ["secret"],
        "anonymous": "allow",
        "allow_val_change": True,
        "resume": "allow",
        "force": True,
        "tensorboard": False,
        "sync_tensorboard": False,
        "monitor_gym": False,
        "save_code": True,
        "id": "given01",
        "settings": {"silent": True},
        "fork_from": None,
        "resume_from": None,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these values asks for a missing feature
        run = disabled(**quiet)
        assert isinstance(run, DisabledRun)
        assert (run.id, run.name, run.project, run.entity, run.tags) == ("given01", "n", "p", "e", ("a",))
        assert dict(run.config.items()) == {"lr": 0.1}
        runstream.finish()
        for param, value in quiet.items():  # one at a time too
            disabled(**{param: value}).finish()
        disabled(config={"a": 1}, config_include_keys=["a"], magic=None, anonymous="must").finish()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("monitor_gym", True),
        ("magic", True),
        ("fork_from", "other-run?_step=10"),
        ("resume_from", "this-run?_step=10"),
    ],
)
def test_an_unsupported_feature_warns_once_naming_the_parameter(param: str, value: object) -> None:
    with pytest.warns(RuntimeWarning, match=rf"{param}=.*has no effect in runstream") as caught:
        run = disabled(**{param: value})
    assert len(caught) == 1
    assert caught[0].filename == __file__  # it points at the caller's init line
    assert isinstance(run, DisabledRun)  # and the run starts anyway


def test_module_level_log_bound_before_init_follows_a_disabled_run() -> None:
    from runstream import log  # bound before init: the forwarding function

    with pytest.raises(UsageError, match=r"before runstream\.init"):
        log({"a": 1})
    disabled()
    log({"a": 1}, step=3, commit=True, sync=False)
    assert runstream.save("nothing-matches-*") is None  # a disabled run saves nothing
    runstream.finish()
    with pytest.raises(UsageError):
        log({"a": 1})


def test_log_after_finish_is_a_usage_error_on_every_path(tmp_path: Path) -> None:
    run = runstream.init(project="t", mode="offline", dir=tmp_path)
    assert run.mode == "offline"
    run.log({"a": 1}, sync=True)  # W&B's deprecated argument is accepted
    run.finish()
    for kw in ({}, {"step": 5}, {"commit": False}):
        with pytest.raises(UsageError, match="finished"):
            run.log({"a": 2}, **kw)
    assert runstream.read_run(run.dir).history_rows == 1


def test_resume_must_without_an_id_is_an_error_online_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("RUNSTREAM_HOST", "http://127.0.0.1:9")  # never contacted
    with pytest.raises(UsageError, match="needs a run id"):
        runstream.init(mode="online", resume="must", dir=tmp_path)
    assert runstream.run is None and not (tmp_path / "runstream").exists()
