"""W&B's module-level names that runstream has no machinery of its own for (docs/compatibility.md).

Two kinds live here:

* small helpers that work: ``setup``/``teardown``, ``termlog``/``termwarn``/``termerror``/
  ``termsetup``, ``require``, ``restore``, ``Settings`` (W&B's keyword spellings accepted),
  ``ensure_configured``, ``set_trace``, ``patched``, ``util.generate_id``, ``ArtifactTTL``;
* stand-ins for features runstream does not have yet (artifacts, model registry, sweeps, the
  internal API, framework integrations under W&B's names...).  Using one raises
  :class:`~runstream.errors.NotSupportedError`, which says what is missing and what to do
  instead -- except under ``mode="disabled"``, where each is a quiet no-op that returns a
  harmless object where W&B returns one, so a script switched off never breaks.

"Disabled" means: the active run is a :class:`~runstream.disabled.DisabledRun`, or no run is
active and the mode the next ``init`` would get (argument aside) is ``"disabled"``
(``RUNSTREAM_MODE``/``WANDB_MODE``, or ``WANDB_DISABLED=true``, as W&B reads it).

Importing this module is cheap (no numpy); ``runstream/__init__.py`` loads it on first use of
one of its names.
"""

from __future__ import annotations

import enum
import os
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from runstream.errors import NotSupportedError, UsageError
from runstream.settings import Settings as _BaseSettings
from runstream.settings import _settings_entries, resolve_settings


# --- disabled mode ----------------------------------------------------------------------------
def is_disabled() -> bool:
    """Whether W&B's calls should be quiet no-ops now (see the module docstring)."""
    import runstream

    run = runstream.run
    if run is not None:
        return getattr(run, "mode", None) == "disabled"
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        return resolve_settings().mode == "disabled"
    except Exception:  # a bad environment is init's to report, not this check's
        return False


class Inert:
    """What a not-supported call returns under ``mode="disabled"``: every attribute is another
    ``Inert``, calling one returns an ``Inert``, and it is empty and false.  Dunder names stay
    missing, so copy, pickle and inspection behave normally."""

    def __init__(self, name: str = "disabled") -> None:
        object.__setattr__(self, "_name", name)

    def __getattr__(self, name: str) -> Inert:
        if name.startswith("__") or name == "_name":  # _name: not set yet (copy, pickle)
            raise AttributeError(name)
        return Inert(f"{self._name}.{name}")

    def __setattr__(self, name: str, value: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Inert:
        return self

    def __bool__(self) -> bool:
        return False

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __enter__(self) -> Inert:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def __repr__(self) -> str:
        return f"<runstream disabled: {self._name}>"


def not_supported(name: str, what: str, instead: str) -> NotSupportedError:
    """The error a stand-in raises: ``name`` was called; ``what`` is the missing feature."""
    return NotSupportedError(f"runstream.{name}: {what} is not supported by runstream yet; {instead}")


# Why each feature is missing and what to do meanwhile; the docs table says the same.
ARTIFACTS = (
    "artifacts (versioned datasets and models)",
    "keep files with the run instead: run.save(path, policy='now') (docs/files.md)",
)
MODELS = ("the model registry (model artifacts)", ARTIFACTS[1])
SWEEPS = (
    "hyperparameter sweeps (sweep, agent, controller)",
    "run your own search loop (e.g. Optuna) and start one runstream.init() per trial",
)
ATTACH = (
    "attaching to a run from another process",
    "log from the process that called init(), or give each process its own run",
)
PIN = ("pinned config keys on the run's overview", "the dashboard shows every config key")
GRAPH = ("wandb.Graph (model graphs)", "log the model summary as text: runstream.Html or a file")
TABLES = ("joined and eval tables", "log a runstream.Table of the joined rows")
VISUALIZE = ("preset custom charts (visualize)", "use runstream.plot (line, scatter, bar, histogram)")
INTERNAL = (
    "W&B's internal API",
    "read runs with runstream.Api() (docs/http-api.md)",
)


def stub(
    name: str, feature: tuple[str, str], disabled: Callable[[], Any] = lambda: None
) -> Callable[..., Any]:
    """A module-level function for a missing feature: raises ``NotSupportedError``, or under
    disabled mode returns ``disabled()``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if is_disabled():
            return disabled()
        raise not_supported(name, *feature)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = (
        f"W&B's ``{name}``: {feature[0]} is not supported by runstream yet.\n\n"
        f'Raises:\n    NotSupportedError: always, except under ``mode="disabled"``, where it does '
        f"nothing and returns a harmless stand-in.  Instead: {feature[1]}."
    )
    return call


class _UnsupportedNamespace:
    """A W&B module or object runstream has no twin of (``wandb.keras``, ``wandb.api``...):
    touching any attribute, or calling it, raises ``NotSupportedError``; under disabled mode
    both give an :class:`Inert`."""

    def __init__(self, name: str, feature: tuple[str, str]) -> None:
        self._name = name
        self._feature = feature

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr in ("_name", "_feature"):  # not set yet (copy, pickle)
            raise AttributeError(attr)
        if is_disabled():
            return Inert(f"{self._name}.{attr}")
        raise not_supported(f"{self._name}.{attr}", *self._feature)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if is_disabled():
            return Inert(self._name)
        raise not_supported(self._name, *self._feature)

    def __repr__(self) -> str:
        return f"<runstream stand-in for wandb.{self._name}: not supported>"


def _integration(name: str, instead: str) -> _UnsupportedNamespace:
    return _UnsupportedNamespace(name, (f"W&B's {name} integration under the name wandb.{name}", instead))


_NATIVE = "use runstream's own integrations (docs/integrations.md)"
NAMESPACES: dict[str, _UnsupportedNamespace] = {
    "keras": _integration("keras", _NATIVE + ": runstream.integration.keras"),
    "tensorflow": _integration("tensorflow", "write TensorBoard event files and init(sync_tensorboard=True)"),
    "xgboost": _integration("xgboost", "log the booster's eval results with run.log()"),
    "lightgbm": _integration("lightgbm", "log the booster's eval results with run.log()"),
    "catboost": _integration("catboost", "log the model's eval metrics with run.log()"),
    "gym": _integration("gym", "log episode rewards with run.log() and videos with runstream.Video"),
    "sacred": _integration("sacred", "call runstream.init()/log() from the experiment's main"),
    "jupyter": _integration("jupyter", "runstream works in notebooks without it"),
    "sagemaker_auth": _integration("sagemaker_auth", "set RUNSTREAM_HOST/RUNSTREAM_API_KEY in the job"),
    "wandb_torch": _integration("wandb_torch", "use runstream.watch(model)"),
    "profiler": _integration("profiler", "use torch.profiler and keep its trace with run.save()"),
    "helper": _UnsupportedNamespace("helper", ("W&B's internal helper module", "use runstream's public API")),
    "wandb_sdk": _UnsupportedNamespace(
        "wandb_sdk", ("W&B's internal sdk module", "use runstream's public API")
    ),
    "wandb_lib": _UnsupportedNamespace(
        "wandb_lib", ("W&B's internal lib module", "use runstream's public API")
    ),
    "api": _UnsupportedNamespace("api", INTERNAL),
}


# --- artifacts and models -----------------------------------------------------------------
class Artifact:
    """W&B's ``Artifact``: versioned files.  Not supported by runstream yet.

    Raises:
        NotSupportedError: On construction, except under ``mode="disabled"``, where the object
            accepts every method call (``add_file``, ``add_dir``, ``new_file``, ``wait``...)
            and does nothing.
    """

    def __init__(self, name: str = "", type: str = "", *args: Any, **kwargs: Any) -> None:
        if not is_disabled():
            raise not_supported("Artifact", *ARTIFACTS)
        self.name = name
        self.type = type

    def __getattr__(self, attr: str) -> Any:
        # Only reached for names not set: an inert artifact's methods (a real one is never made).
        if attr.startswith("__") or attr in ("name", "type"):
            raise AttributeError(attr)
        return Inert(f"Artifact.{attr}")

    def __repr__(self) -> str:
        return f"<runstream disabled Artifact {self.name!r}>"


def disabled_artifact(*args: Any, **kwargs: Any) -> Artifact:
    """An inert :class:`Artifact` (what a disabled run's artifact calls return)."""
    art = object.__new__(Artifact)
    art.name = str(kwargs.get("name") or (args[0] if args and isinstance(args[0], str) else ""))
    art.type = str(kwargs.get("type") or "")
    return art


class ArtifactTTL(enum.Enum):
    """W&B's artifact time-to-live marker; only a constant here (artifacts are not supported)."""

    INHERIT = 0


class Graph(Inert):
    """W&B's ``Graph`` (a model's graph as media).  Not supported by runstream yet.

    Raises:
        NotSupportedError: On construction, except under ``mode="disabled"``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not is_disabled():
            raise not_supported("Graph", *GRAPH)
        super().__init__("Graph")


class JoinedTable(Inert):
    """W&B's ``JoinedTable`` (two artifact tables joined).  Not supported by runstream yet.

    Raises:
        NotSupportedError: On construction, except under ``mode="disabled"``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not is_disabled():
            raise not_supported("JoinedTable", *TABLES)
        super().__init__("JoinedTable")


class EvalTable(Inert):
    """W&B's ``EvalTable`` (an evaluation table type).  Not supported by runstream yet.

    Raises:
        NotSupportedError: On construction, except under ``mode="disabled"``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not is_disabled():
            raise not_supported("EvalTable", *TABLES)
        super().__init__("EvalTable")


class InternalApi(Inert):
    """W&B's internal (GraphQL) API.  Not supported: read runs with ``runstream.Api()``.

    Raises:
        NotSupportedError: On construction, except under ``mode="disabled"``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not is_disabled():
            raise not_supported("InternalApi", *INTERNAL)
        super().__init__("InternalApi")


def _disabled_sweep_id() -> str:
    from runstream.names import new_run_id

    return new_run_id()


sweep = stub("sweep", SWEEPS, _disabled_sweep_id)
controller = stub("controller", SWEEPS, lambda: Inert("controller"))
agent = stub("agent", SWEEPS)
attach = stub("attach", ATTACH)
visualize = stub("visualize", VISUALIZE, lambda: Inert("visualize"))


def run_method(name: str, doc: str) -> Callable[..., Any]:
    """A module-level twin of ``Run.<name>``: forwards to the active run, as W&B's does;
    before ``init`` raises ``UsageError`` (or, under disabled mode, does nothing)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        import runstream

        run = runstream.run
        if run is None:
            if is_disabled():
                return None
            raise UsageError(f"runstream.{name}() was called before runstream.init(): start a run first")
        return getattr(run, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"The active run's ``{name}``: {doc}\n\nRaises:\n    UsageError: No run is active."
    return call


log_artifact = run_method("log_artifact", "not supported yet (NotSupportedError).")
use_artifact = run_method("use_artifact", "not supported yet (NotSupportedError).")
log_model = run_method("log_model", "not supported yet (NotSupportedError).")
use_model = run_method("use_model", "not supported yet (NotSupportedError).")
link_model = run_method("link_model", "not supported yet (NotSupportedError).")
pin_config_keys = run_method("pin_config_keys", "not supported yet (NotSupportedError).")
mark_preempting = run_method(
    "mark_preempting", "records that the run is about to be preempted (see Run.mark_preempting)."
)


# --- settings, setup and teardown -----------------------------------------------------------
class Settings(_BaseSettings):
    """``runstream.Settings``: the run settings, built from W&B's keywords too.

    ``Settings(silent=True)``, ``Settings(run_name="x")`` and ``Settings(start_method="thread")``
    all work: W&B's spellings map to runstream's settings (runstream.settings's module
    docstring lists them), and W&B keys for machinery runstream lacks are ignored.  Pass the
    object as ``init(settings=...)``; only fields that differ from their defaults count there.

    Raises:
        SettingsError: An unknown key (the message suggests the closest one) or a bad value.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_settings_entries(kwargs))


class Setup:
    """What :func:`setup` returns: the settings runs in this process start from."""

    def __init__(self, settings: _BaseSettings) -> None:
        self.settings = settings

    def __repr__(self) -> str:
        return f"<runstream.Setup mode={self.settings.mode!r}>"


def setup(settings: Any = None) -> Setup:
    """Prepare runstream in this process (W&B's ``setup``).

    runstream needs no service process, so this only resolves and checks the settings (from
    ``settings``, a dict or :class:`Settings`, and the environment) and returns them; each
    ``init`` still resolves its own.  Never blocks.

    Raises:
        SettingsError: A setting has a bad value or an unknown name.
    """
    return Setup(resolve_settings(settings=settings))


def teardown(exit_code: int | None = None) -> None:
    """Finish the active run, if any, and wait for it as ``runstream.finish`` does (W&B's
    ``teardown``); nothing else needs freeing.  Blocks up to the run's ``finish_timeout``."""
    from runstream.session import finish

    finish(exit_code=exit_code)


# --- terminal messages -------------------------------------------------------------------
_said: set[str] = set()
_term = {"silent": False}


def termsetup(settings: Any = None, logger: Any = None) -> None:
    """Take the ``silent`` setting from ``settings`` (a Settings, a dict or None: the
    environment's) for later ``termlog``/``termwarn``/``termerror`` calls.  ``logger`` is
    accepted for W&B compatibility and ignored."""
    if isinstance(settings, _BaseSettings):
        _term["silent"] = bool(settings.silent)
    else:
        _term["silent"] = resolve_settings(settings=settings).silent


def _silent() -> bool:
    import runstream

    run = runstream.run
    if run is not None:
        return bool(getattr(run, "settings", None) and run.settings.silent)
    if _term["silent"]:
        return True
    try:
        return resolve_settings().silent
    except Exception:
        return False


def _term_write(label: str, string: str, newline: bool, repeat: bool, prefix: bool, quiet: bool) -> None:
    if quiet:
        return
    text = "\n".join(
        f"runstream: {label}{line}" if prefix else f"{label}{line}" for line in string.split("\n")
    )
    if not repeat:
        if text in _said:
            return
        _said.add(text)
    sys.stderr.write(text + ("\n" if newline else ""))
    sys.stderr.flush()


def termlog(string: str = "", newline: bool = True, repeat: bool = True, prefix: bool = True) -> None:
    """Print ``string`` on stderr, each line prefixed ``runstream: `` (W&B's ``termlog``).

    Args:
        string: The message; several lines are prefixed one by one.
        newline: End with a newline.
        repeat: ``False`` prints a given message only the first time.
        prefix: ``False`` leaves out ``runstream: ``.

    Nothing is printed when the ``silent`` setting is on (``RUNSTREAM_SILENT``/``WANDB_SILENT``,
    or the active run's settings).
    """
    _term_write("", string, newline, repeat, prefix, _silent())


def termwarn(string: str, newline: bool = True, repeat: bool = True, prefix: bool = True) -> None:
    """As :func:`termlog`, each line marked ``WARNING``; also quiet when ``silent``."""
    _term_write("WARNING ", string, newline, repeat, prefix, _silent())


def termerror(string: str, newline: bool = True, repeat: bool = True, prefix: bool = True) -> None:
    """As :func:`termlog`, each line marked ``ERROR``.  Errors are printed even when silent."""
    _term_write("ERROR ", string, newline, repeat, prefix, False)


# --- require, restore, small things -------------------------------------------------------
_LEGACY_REQUIREMENTS = ("service", "core", "require")


def require(
    requirement: str | Iterable[str] | None = None, experiment: str | Iterable[str] | None = None
) -> None:
    """W&B's ``require``: declare experimental features.  W&B's remaining ones (``"service"``,
    ``"core"``) are its defaults and runstream's behaviour already, so they are accepted and do
    nothing.

    Raises:
        NotSupportedError: An unknown feature name (as W&B raises ``UnsupportedError``).
    """
    features = requirement or experiment
    if not features:
        return
    names = [features] if isinstance(features, str) else list(features)
    unknown = [f for f in names if str(f).split("@", 1)[0].split(":", 1)[0] not in _LEGACY_REQUIREMENTS]
    if unknown:
        raise NotSupportedError(f"runstream.require: unknown requirement(s) {', '.join(map(repr, unknown))}")


def restore(
    name: str, run_path: str | None = None, replace: bool = False, root: str | os.PathLike[str] | None = None
) -> IO[str] | None:
    """Fetch file ``name`` of a run from the server, unless it is already there (W&B's ``restore``).

    Args:
        name: The file's path among the run's files (as ``run.save`` kept it).
        run_path: ``"entity/project/run_id"``.  Default: the active run's path.
        replace: Download even if ``root/name`` exists.
        root: Where to put it.  Default: the active run's directory, else the current one.

    Returns:
        The file opened for reading (text), or ``None`` under disabled mode when it is not
        already at ``root/name``.

    Raises:
        ValueError: No ``run_path`` and no active run.
        NotFoundError: The server has no such run or the run no such file.
        ApiError, UsageError: As :class:`runstream.Api` (no server configured, unreachable...).

    Blocks for the download (one request for the file list, one for the file).
    """
    import runstream

    run = runstream.run
    disabled = run is not None and getattr(run, "mode", None) == "disabled"
    active = None if disabled else run
    if run_path is None:
        if active is None:
            raise ValueError("runstream.restore: run_path is required when no run is active")
        run_path = active.path
    if root is None:
        root = active.dir if active is not None else os.getcwd()
    path = os.path.join(os.fspath(root), name)
    if os.path.exists(path) and not replace:
        return open(path)
    if disabled:
        return None
    api_run = runstream.Api().run(run_path)
    dest = api_run.file(name).download(root=root, replace=True)
    return open(dest)


def ensure_configured() -> None:
    """W&B re-reads its settings here; runstream reads them at each ``init``.  Does nothing."""


def set_trace() -> None:
    """Start the debugger (``pdb.set_trace``), as W&B's does."""
    import pdb

    pdb.set_trace()


patched: dict[str, list[Any]] = {"tensorboard": [], "keras": [], "gym": []}
"""W&B's record of libraries it patched; runstream patches none, so every list stays empty."""


def generate_id(length: int = 8) -> str:
    """A new random run id (W&B's ``wandb.util.generate_id``): lower-case letters and digits.

    Raises:
        ValueError: ``length`` is not between 1 and 64.
    """
    import secrets

    if not 1 <= int(length) <= 64:
        raise ValueError(f"generate_id: length must be 1 to 64, not {length}")
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(int(length)))


util = types.SimpleNamespace(generate_id=generate_id)
"""``runstream.util``: the one helper of ``wandb.util`` that scripts use (``generate_id``)."""


def plot_table(
    vega_spec_name: str,
    data_table: Any,
    fields: dict[str, Any],
    string_fields: dict[str, Any] | None = None,
    split_table: bool = False,
) -> Any:
    """A custom chart of ``data_table`` by the Vega spec ``vega_spec_name`` (W&B's ``plot_table``).

    The chart is kept as W&B keeps it (its table plus the ``_wandb.visualize`` entry naming the
    spec, docs/media.md); ``runstream.plot.line`` and the other helpers are this call with W&B's
    built-in specs.

    Args:
        vega_spec_name: The spec's id, e.g. ``"wandb/line/v0"``.
        data_table: A ``runstream.Table``.
        fields: Which column plays which part of the spec (``{"x": "epoch", "y": "loss"}``).
        string_fields: Titles and other strings of the spec.
        split_table: Store the table under ``"Custom Chart Tables/<key>_table"``.

    Returns:
        The chart, to log.

    Raises:
        TypeError: ``data_table`` is not a ``runstream.Table`` or ``fields`` is not a dict.
    """
    from runstream.media.chart import CustomChart
    from runstream.media.table import Table

    if not isinstance(data_table, Table):
        raise TypeError(
            f"runstream.plot_table: data_table must be a runstream.Table, not {type(data_table).__name__}"
        )
    if not isinstance(fields, dict):
        raise TypeError(f"runstream.plot_table: fields must be a dict, not {type(fields).__name__}")
    return CustomChart(
        data_table, str(vega_spec_name), dict(fields), dict(string_fields or {}), bool(split_table)
    )
