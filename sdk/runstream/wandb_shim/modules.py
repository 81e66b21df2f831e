"""The module objects that ``import wandb`` (and ``import wandb.sdk...``) get under the shim.

``wandb`` itself is a proxy over ``runstream``: an attribute is looked up, in this order, among

1. the shim's own names (``__version__``, ``init``), which must differ from runstream's;
2. the submodules below (``wandb.sdk``, ``wandb.env``...), imported on first use as W&B's are
   imported eagerly;
3. ``runstream`` itself, at each access: ``wandb.run``, ``wandb.config``, ``wandb.log`` follow
   ``init`` and ``finish``, and names runstream gains later show through with no change here;
4. stand-ins for W&B names runstream may lack (``define_metric``, ``termwarn``, ``Artifact``,
   ``Settings``...): they forward to the active run, do W&B's small job themselves, or raise
   :class:`~runstream.errors.NotSupportedError` saying runstream does not support the call.
   runstream's own versions of these names, where it has them, win (step 3).

The submodules hold exactly what Lightning's ``WandbLogger``, Hugging Face's ``WandbCallback``
and Accelerate's ``WandBTracker`` import from them (docs/wandb-shim.md lists it).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping
from types import ModuleType
from typing import Any

import runstream
from runstream.errors import NotSupportedError, UsageError

WANDB_VERSION = "0.31.0+runstream"  # also in pythonpath/wandb-0.31.0.dist-info/METADATA
SHIM_MARK = "__runstream_wandb_shim__"  # set on every module the shim makes

_TRUE = ("1", "true", "yes", "on")


def _unsupported(what: str) -> NotSupportedError:
    return NotSupportedError(
        f"{what}: runstream does not support this W&B feature (runstream.wandb_shim maps `import wandb` "
        "onto runstream; see docs/wandb-shim.md for what is covered)"
    )


# --- stand-ins for W&B names runstream lacks (step 4 above) ------------------------------------
class Artifact:
    """W&B's ``wandb.Artifact``.  runstream has no artifacts: making one raises ``NotSupportedError``
    (Lightning's ``WandbLogger(log_model=True)`` and Hugging Face's ``WANDB_LOG_MODEL`` reach
    here; leave them off)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise _unsupported("wandb.Artifact (model upload: WandbLogger(log_model=...), WANDB_LOG_MODEL)")


class Settings(dict):  # type: ignore[type-arg]
    """W&B's ``wandb.Settings(**kwargs)``: kept as a dict, which ``init(settings=...)`` reads with
    W&B's spellings (and ignores W&B machinery keys such as ``start_method``)."""

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"Settings has no {key!r}") from None


def _run_method(name: str) -> Callable[..., Any]:
    """``wandb.<name>(...)``: the active run's method of that name."""

    def call(*args: Any, **kwargs: Any) -> Any:
        run = runstream.run
        if run is None:
            raise UsageError(f"wandb.{name}() was called before wandb.init(): start a run first")
        method = getattr(run, name, None)
        if method is None:
            raise _unsupported(f"wandb.{name}()")
        return method(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"The active run's ``{name}``; ``UsageError`` before ``init``."
    return call


def _refuse(name: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise _unsupported(f"wandb.{name}()")

    call.__name__ = call.__qualname__ = name
    call.__doc__ = "Not supported by runstream: raises ``NotSupportedError``."
    return call


def _nothing(*args: Any, **kwargs: Any) -> None:
    """W&B process-management calls (``require``, ``setup``, ``teardown``): nothing to do here."""
    return None


FALLBACKS: dict[str, Any] = {
    "Artifact": Artifact,
    "Settings": Settings,
    **{
        n: _run_method(n)
        for n in ("define_metric", "watch", "unwatch", "alert", "mark_preempting", "log_code")
    },
    **{
        n: _refuse(n)
        for n in ("log_artifact", "use_artifact", "log_model", "use_model", "link_model", "sweep", "agent")
    },
}


# --- the shim's own names (step 1), and W&B's console helpers for step 4 ------------------------
_warned: set[str] = set()


def _silent() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("RUNSTREAM_SILENT", "WANDB_SILENT"))


def _term(level: str) -> Callable[..., None]:
    def term(string: str = "", newline: bool = True, repeat: bool = True, prefix: bool = True) -> None:
        if _silent() or (not repeat and string in _warned):
            return
        _warned.add(string)
        head = ("runstream: " if prefix else "") + (f"{level} " if level else "")
        print(head + str(string), end="\n" if newline else "", file=sys.stderr, flush=True)

    term.__name__ = term.__qualname__ = "term" + (level.lower() or "log")
    term.__doc__ = (
        "W&B's console message: one line to stderr with a ``runstream:`` prefix; ``repeat=False`` "
        "prints a given message once per process; nothing when ``WANDB_SILENT``/``RUNSTREAM_SILENT``."
    )
    return term


@functools.wraps(runstream.init)
def init(*args: Any, **kwargs: Any) -> Any:
    # W&B reads WANDB_DISABLED=true as mode "disabled" (HF and Lightning users set it to switch
    # tracking off); runstream's own settings do not, so the shim maps it, below any explicit mode.
    settings = kwargs.get("settings")
    if (
        kwargs.get("mode") is None
        and not (isinstance(settings, Mapping) and settings.get("mode"))
        and os.environ.get("WANDB_DISABLED", "").strip().lower() in _TRUE
        and not os.environ.get("RUNSTREAM_MODE")
        and not os.environ.get("WANDB_MODE")
    ):
        kwargs["mode"] = "disabled"
    return runstream.init(*args, **kwargs)


OWN: dict[str, Any] = {"__version__": WANDB_VERSION, "init": init}
FALLBACKS.update(
    require=_nothing,
    setup=_nothing,
    teardown=_nothing,
    termlog=_term(""),
    termwarn=_term("WARNING"),
    termerror=_term("ERROR"),
)


# --- building modules ---------------------------------------------------------------------------
def _new(name: str, doc: str, attrs: dict[str, Any], children: tuple[str, ...] = ()) -> ModuleType:
    """A module marked as the shim's; a package (``children``) imports a child on first access."""
    mod = ModuleType(name, doc)
    mod.__dict__.update(attrs)
    setattr(mod, SHIM_MARK, True)
    if children or name in PACKAGES:
        mod.__path__ = []  # a package with nothing on disk: only the shim's finder serves children

        def __getattr__(attr: str) -> Any:
            if attr in children:
                return importlib.import_module(f"{name}.{attr}")
            raise AttributeError(f"module {name!r} (runstream's W&B shim) has no attribute {attr!r}")

        mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    return mod


def _top() -> ModuleType:
    mod = _new("wandb", "W&B's API served by runstream (runstream.wandb_shim; docs/wandb-shim.md).", OWN)
    children = TOP_CHILDREN

    def __getattr__(attr: str) -> Any:
        # Dunder lookups (``__path__``, ``__file__``, import machinery probes) must not reach
        # runstream, whose own package attributes would be taken for the shim's.
        if attr.startswith("__"):
            raise AttributeError(f"module 'wandb' has no attribute {attr!r}")
        if attr in children:
            return importlib.import_module(f"wandb.{attr}")
        return resolve(attr)

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    return mod


def resolve(attr: str) -> Any:
    """``wandb.<attr>`` from runstream, else from the shim's stand-ins (steps 3 and 4 above).

    Raises:
        AttributeError: Neither has it.
    """
    try:
        return getattr(runstream, attr)
    except AttributeError:
        pass
    if attr in FALLBACKS:
        return FALLBACKS[attr]
    raise AttributeError(
        f"module 'wandb' (runstream's W&B shim) has no attribute {attr!r}: runstream does not provide it"
    )


def _proxy(name: str, target: str) -> ModuleType:
    """``wandb.plot`` and the like: every attribute read from runstream's module of that role."""
    mod = _new(name, f"runstream's {target}, under W&B's name {name}.", {})

    def __getattr__(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(importlib.import_module(target), attr)

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    return mod


def _env_module() -> ModuleType:
    names = {
        "MODE": "WANDB_MODE",
        "PROJECT": "WANDB_PROJECT",
        "ENTITY": "WANDB_ENTITY",
        "DIR": "WANDB_DIR",
        "NAME": "WANDB_NAME",
        "NOTES": "WANDB_NOTES",
        "TAGS": "WANDB_TAGS",
        "RUN_ID": "WANDB_RUN_ID",
        "RUN_GROUP": "WANDB_RUN_GROUP",
        "JOB_TYPE": "WANDB_JOB_TYPE",
        "SILENT": "WANDB_SILENT",
        "DISABLED": "WANDB_DISABLED",
        "BASE_URL": "WANDB_BASE_URL",
        "API_KEY": "WANDB_API_KEY",
        "LOG_MODEL": "WANDB_LOG_MODEL",
        "WATCH": "WANDB_WATCH",
    }

    def setter(var: str) -> Callable[..., None]:
        def set_(value: str, env: MutableMapping[str, str] | None = None) -> None:
            (os.environ if env is None else env)[var] = value

        return set_

    def getter(var: str) -> Callable[..., str | None]:
        def get(default: str | None = None, env: MutableMapping[str, str] | None = None) -> str | None:
            return (os.environ if env is None else env).get(var, default)

        return get

    attrs: dict[str, Any] = dict(names)
    for key in ("PROJECT", "ENTITY"):
        attrs[f"set_{key.lower()}"] = setter(names[key])
    for key in ("PROJECT", "ENTITY", "DIR", "MODE"):
        attrs[f"get_{key.lower()}"] = getter(names[key])
    return _new("wandb.env", "W&B's environment variable names (runstream reads the WANDB_* ones).", attrs)


def _lazy(attrs: Callable[[], dict[str, Any]]) -> Callable[[str], ModuleType]:
    return lambda name: _new(name, f"W&B's {name}, served by runstream.", attrs())


def _disabled() -> dict[str, Any]:
    from runstream.disabled import DisabledRun, DisabledSummary

    return {"RunDisabled": DisabledRun, "SummaryDisabled": DisabledSummary}


TOP_CHILDREN = ("sdk", "env", "errors", "wandb_run", "plot", "sklearn")
PACKAGES = ("wandb", "wandb.sdk", "wandb.sdk.lib")

# Every module the shim serves: its name -> a function making it.  Other ``wandb.*`` names are
# not found (ModuleNotFoundError), as for any missing module.
BUILDERS: dict[str, Callable[[str], ModuleType]] = {
    "wandb": lambda name: _top(),
    "wandb.sdk": lambda name: _new(
        name,
        "W&B's wandb.sdk, served by runstream.",
        {"Settings": resolve("Settings"), "Artifact": resolve("Artifact")},
        ("wandb_run", "wandb_settings", "lib"),
    ),
    "wandb.sdk.lib": lambda name: _new(
        name, "W&B's wandb.sdk.lib, served by runstream.", _disabled(), ("disabled", "config_util")
    ),
    "wandb.sdk.lib.disabled": _lazy(_disabled),
    "wandb.sdk.lib.config_util": _lazy(lambda: {"ConfigError": runstream.ConfigError}),
    "wandb.sdk.wandb_run": _lazy(lambda: {"Run": runstream.Run}),
    "wandb.sdk.wandb_settings": _lazy(lambda: {"Settings": resolve("Settings")}),
    "wandb.wandb_run": _lazy(lambda: {"Run": runstream.Run}),
    "wandb.errors": _lazy(
        lambda: {"Error": runstream.Error, "UsageError": UsageError, "CommError": runstream.ApiError}
    ),
    "wandb.env": lambda name: _env_module(),
    "wandb.plot": lambda name: _proxy(name, "runstream.plot"),
    "wandb.sklearn": lambda name: _proxy(name, "runstream.sklearn"),
}


def build(name: str) -> ModuleType:
    """Make the shim's module ``name`` (one of :data:`BUILDERS`)."""
    return BUILDERS[name](name)
