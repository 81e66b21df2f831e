"""Run settings: what each one means, its default, and where a value may come from.

Each setting is resolved on its own, taking the first source that gives it, in this order:

1. an explicit argument (``runstream.init(project="x")``, i.e. :func:`resolve_settings`'s keywords);
2. an entry of ``settings=`` -- a dict, or a :class:`Settings` whose field differs from its default;
3. a ``RUNSTREAM_*`` environment variable;
4. the ``WANDB_*`` variable of the same meaning, so W&B job scripts and launchers keep working;
5. the default.

Environment variables (``X`` is ``RUNSTREAM`` or ``WANDB``; an empty variable counts as unset)::

    mode      X_MODE       ("dryrun" means offline)   tags      X_TAGS (comma-separated)
    root_dir  X_DIR                                   notes     X_NOTES
    project   X_PROJECT                               group     X_RUN_GROUP, then X_GROUP
    entity    X_ENTITY                                job_type  X_JOB_TYPE
    run_id    X_RUN_ID                                silent    X_SILENT (true/false, 1/0, yes/no, on/off)
    name      X_NAME                                  host      RUNSTREAM_HOST, WANDB_BASE_URL

``WANDB_DISABLED=true`` (W&B's older switch) gives mode ``disabled`` when no mode variable is set.

The tuning settings (``ring_size`` and below) have no W&B twin; they read ``RUNSTREAM_<NAME>``,
e.g. ``RUNSTREAM_FSYNC=always`` or ``RUNSTREAM_RING_SIZE=16MiB``.  W&B's ``WANDB_HOST`` is not read:
in W&B it is the machine's display name, not a server address.

``settings=`` also takes W&B's spellings (``run_name``, ``run_tags``, ``base_url``, ...) and silently
ignores W&B keys that steer machinery runstream does not have (``start_method``, ``console``, ...),
so ``settings=dict(start_method="thread")`` keeps working; any other unknown key is an error.
"""

from __future__ import annotations

import difflib
import getpass
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from runstream.errors import SettingsError, UsageError
from runstream.names import validate_run_id

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def _default_entity() -> str:
    try:
        return getpass.getuser() or "local"
    except Exception:  # no login name (containers with an unnamed uid): OSError, KeyError...
        return "local"


@dataclass
class Settings:
    """Resolved settings of one run.  Values are checked (and normalised) on construction."""

    mode: str = "online"  # "online" | "offline" | "disabled" | "shared" (W&B's: online, distributed)
    root_dir: Path = field(default_factory=Path.cwd)  # runs go to <root_dir>/runstream/
    project: str = "uncategorized"
    entity: str = field(default_factory=_default_entity)
    run_id: str | None = None  # None: init generates one
    name: str | None = None  # None: init generates one
    tags: tuple[str, ...] = ()
    notes: str | None = None
    group: str | None = None
    job_type: str | None = None
    silent: bool = False  # no console messages from runstream
    host: str | None = None  # ingest server address; None: local only
    ring_size: int = 64 * MiB  # bytes of shared memory between the SDK and the sidecar
    overflow_size: int = 64 * MiB  # bytes buffered in-process when the ring is full; 0: none
    media_spill_size: int = 1024 * MiB  # bytes of media waiting on disk for the sidecar; 0: none
    batch_bytes: int = 1 * MiB  # the sidecar closes a batch at this size ...
    batch_age: float = 0.1  # ... or when its oldest record is this many seconds old
    fsync: str = "group"  # "group" | "always" | "never"
    fsync_interval: float = 1.0  # seconds between fsyncs in "group" mode
    step_regression: str = "warn"  # a log() with a smaller step: "warn" | "raise"
    finish_timeout: float = 60.0  # seconds finish() waits for the sidecar to drain
    sidecar_memory: int = 256 * MiB  # the sidecar's memory budget in bytes
    zstd_level: int = 3
    stats_interval: float = 2.0  # seconds between system-metric samples (the sidecar takes them)
    disable_stats: bool = False  # no system metrics at all
    console: str = "auto"  # "auto" | "redirect" | "wrap" | "off": how stdout/stderr are captured
    disable_code: bool = False  # no git state, diff or code capture
    disable_git: bool = False  # no git state or diff (code capture still follows save_code)
    save_code: bool = False  # keep a copy of the entry-point script with the run
    ignore_globs: tuple[str, ...] = ()  # files matching these are never uploaded
    # W&B's shared-mode settings (docs/distributed.md, "W&B's patterns"): this process's label
    # (a rank number in it, e.g. "rank_3", names the rank), whether it is the primary (rank 0),
    # and whether its finish may end the run (here the run ends when every rank has).
    x_label: str | None = None
    x_primary: bool | None = None
    x_update_finish_state: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, check_setting(f.name, getattr(self, f.name), "Settings()"))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The setting names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.names()}


# --- checking ---------------------------------------------------------------------------------
class _Invalid(Exception):
    """Raised by a checker with a description of what is allowed."""


Checker = Callable[[Any], Any]


def _choice(*allowed: str, aliases: Mapping[str, str] | None = None) -> Checker:
    def check(value: Any) -> str:
        if isinstance(value, str):
            v = value.strip().lower()
            v = (aliases or {}).get(v, v)
            if v in allowed:
                return v
        raise _Invalid("one of " + ", ".join(repr(a) for a in allowed))

    return check


_SIZE = re.compile(r"(\d[\d_]*)\s*(|k|kib|m|mib|g|gib)", re.IGNORECASE)
_UNITS = {"": 1, "k": KiB, "kib": KiB, "m": MiB, "mib": MiB, "g": GiB, "gib": GiB}


def _size(minimum: int, multiple: int = 1) -> Checker:
    shown = f"{minimum} ({minimum // KiB} KiB)" if minimum >= KiB else str(minimum)
    allowed = f"an int number of bytes >= {shown}" + (f", a multiple of {multiple}" if multiple > 1 else "")

    def check(value: Any) -> int:
        if isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
            value = int(m[1]) * _UNITS[m[2].lower()]
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value >= minimum
            and value % multiple == 0
        ):
            return value
        raise _Invalid(allowed + " (strings may end in KiB, MiB or GiB)")

    return check


def _seconds(*, positive: bool, allow_inf: bool = False) -> Checker:
    allowed = "a number of seconds " + ("> 0" if positive else ">= 0") + ("" if allow_inf else ", finite")

    def check(value: Any) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise _Invalid(allowed) from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            v = float(value)
            if not math.isnan(v) and (v > 0 or (v == 0 and not positive)) and (allow_inf or v != math.inf):
                return v
        raise _Invalid(allowed)

    return check


def _min_seconds(lo: float) -> Checker:
    def check(value: Any) -> float:
        v = _seconds(positive=True)(value)
        if v < lo:
            raise _Invalid(f"at least {lo} seconds")
        return float(v)

    return check


def _int_range(lo: int, hi: int) -> Checker:
    def check(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
            return value
        raise _Invalid(f"an int from {lo} to {hi}")

    return check


def _text(*, optional: bool, slug: bool = False) -> Checker:
    # project and entity are path components (entity/project/id), so they cannot hold "/".
    allowed = "a non-empty str" + (" without '/'" if slug else "") + (" or None" if optional else "")

    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if isinstance(value, str) and value.strip() and not (slug and "/" in value):
            return value
        raise _Invalid(allowed)

    return check


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Invalid("true or false (also 1/0, yes/no, on/off)")


def _path(value: Any) -> Path:
    if isinstance(value, (str, os.PathLike)) and str(value):
        # Absolute now, so that a later os.chdir() in the user's script does not move the run.
        return Path(value).expanduser().absolute()
    raise _Invalid("a directory path")


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # one tag, not a sequence of letters
        value = (value,)
    if isinstance(value, Sequence) and all(isinstance(t, str) and t.strip() for t in value):
        return tuple(value)
    raise _Invalid("a list of non-empty str")


def _run_id(value: Any) -> str | None:
    return None if value is None else validate_run_id(value)


_CHECKERS: dict[str, Checker] = {
    "mode": _choice(
        "online", "offline", "disabled", "shared", aliases={"dryrun": "offline", "run": "online"}
    ),
    "root_dir": _path,
    "project": _text(optional=False, slug=True),
    "entity": _text(optional=False, slug=True),
    "run_id": _run_id,
    "name": _text(optional=True),
    "tags": _tags,
    "notes": _text(optional=True),
    "group": _text(optional=True),
    "job_type": _text(optional=True),
    "silent": _bool,
    "host": _text(optional=True),
    "ring_size": _size(64 * KiB, multiple=8),  # records are 8-aligned in the ring
    "overflow_size": _size(0),
    "media_spill_size": _size(0),
    "batch_bytes": _size(1),
    "batch_age": _seconds(positive=False),
    "fsync": _choice("group", "always", "never"),
    "fsync_interval": _seconds(positive=True),
    "step_regression": _choice("warn", "raise"),
    "finish_timeout": _seconds(positive=False, allow_inf=True),
    "sidecar_memory": _size(1),
    "zstd_level": _int_range(1, 22),
    "stats_interval": _min_seconds(0.1),
    "disable_stats": _bool,
    "console": _choice(
        "auto",
        "redirect",
        "wrap",
        "off",
        aliases={"wrap_raw": "wrap", "wrap_emu": "wrap", "false": "off", "none": "off"},
    ),
    "disable_code": _bool,
    "disable_git": _bool,
    "save_code": _bool,
    "ignore_globs": _tags,
    "x_label": _text(optional=True),
    "x_primary": lambda v: None if v is None else _bool(v),
    "x_update_finish_state": _bool,
}


def check_setting(name: str, value: Any, source: str) -> Any:
    """Return ``value`` normalised for setting ``name``, or raise :class:`SettingsError` naming the
    setting, the value, ``source`` (where it came from) and what is allowed.  A bad ``run_id``
    raises :class:`UsageError` (from :func:`runstream.names.validate_run_id`)."""
    try:
        return _CHECKERS[name](value)
    except _Invalid as e:
        raise SettingsError(
            f"setting {name}={value!r} (from {source}) is not allowed: expected {e}"
        ) from None
    except UsageError as e:
        raise UsageError(f"{e} (from {source})") from None


# --- sources ----------------------------------------------------------------------------------
_ENV_SUFFIXES: dict[str, tuple[str, ...]] = {
    "mode": ("MODE",),
    "root_dir": ("DIR",),
    "project": ("PROJECT",),
    "entity": ("ENTITY",),
    "run_id": ("RUN_ID",),
    "name": ("NAME",),
    "tags": ("TAGS",),
    "notes": ("NOTES",),
    "group": ("RUN_GROUP", "GROUP"),
    "job_type": ("JOB_TYPE",),
    "silent": ("SILENT",),
    "host": ("HOST",),
    "console": ("CONSOLE",),
    "disable_code": ("DISABLE_CODE",),
    "disable_git": ("DISABLE_GIT",),
    "save_code": ("SAVE_CODE",),
    "ignore_globs": ("IGNORE_GLOBS",),
    "disable_stats": ("DISABLE_STATS",),
}
_WANDB_ENV = {k: tuple(f"WANDB_{s}" for s in v) for k, v in _ENV_SUFFIXES.items()} | {
    "host": ("WANDB_BASE_URL",)
}

# settings= keys that W&B scripts use for what runstream calls by another name.
_KEY_ALIASES = {
    "dir": "root_dir",
    "id": "run_id",
    "run_name": "name",
    "run_tags": "tags",
    "run_notes": "notes",
    "run_group": "group",
    "run_job_type": "job_type",
    "base_url": "host",
    "_disable_stats": "disable_stats",
    "x_disable_stats": "disable_stats",
    "x_stats_sampling_interval": "stats_interval",
}
# settings= keys common in W&B scripts that steer W&B machinery runstream does not have.
# Accepting them keeps "change only the import line" true; they have no effect.
_IGNORED_WANDB_KEYS = frozenset(
    {"start_method", "init_timeout", "_disable_meta", "x_disable_meta", "anonymous", "api_key"}
)


# init's keyword for a setting, where it differs from the setting's name (for messages).
_ARG_NAMES = {"root_dir": "dir", "run_id": "id"}


def env_names(name: str) -> tuple[str, ...]:
    """The environment variables that can set ``name``, highest precedence first."""
    suffixes = _ENV_SUFFIXES.get(name, (name.upper(),))
    return tuple(f"RUNSTREAM_{s}" for s in suffixes) + _WANDB_ENV.get(name, ())


def _from_env(name: str, environ: Mapping[str, str]) -> tuple[Any, str] | None:
    for var in env_names(name):
        raw = environ.get(var, "")
        if raw:
            value: Any = raw
            if name in ("tags", "ignore_globs"):
                value = tuple(t.strip() for t in raw.split(",") if t.strip())
            return value, f"environment variable {var}"
    # W&B's older switch, still in many job scripts (transformers documents it): below the mode
    # variables, which name a mode outright.
    if name == "mode" and environ.get("WANDB_DISABLED", "").strip().lower() in ("true", "1", "yes"):
        return "disabled", "environment variable WANDB_DISABLED"
    return None


def _settings_entries(settings: Mapping[str, Any] | Settings | None) -> dict[str, Any]:
    if settings is None:
        return {}
    if isinstance(settings, Settings):
        # Only fields that differ from their default count as given, so that an instance built
        # for one option (runstream.Settings(silent=True)) does not hide the environment.
        default = Settings()
        return {
            n: getattr(settings, n) for n in Settings.names() if getattr(settings, n) != getattr(default, n)
        }
    if not isinstance(settings, Mapping):
        raise SettingsError(f"settings= must be a dict or a Settings, not a {type(settings).__name__}")
    entries: dict[str, Any] = {}
    for key, value in settings.items():
        name = _KEY_ALIASES.get(key, key)
        if name in _IGNORED_WANDB_KEYS:
            continue
        if name not in _CHECKERS:
            close = difflib.get_close_matches(str(key), [*Settings.names(), *_KEY_ALIASES], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SettingsError(
                f"unknown setting {key!r} in settings=.{hint} Valid settings: {', '.join(Settings.names())}"
            )
        if value is not None:  # None means "not given", as for the keyword arguments
            entries[name] = value
    return entries


def resolve_settings(
    *,
    mode: str | None = None,
    dir: str | os.PathLike[str] | None = None,
    project: str | None = None,
    entity: str | None = None,
    run_id: str | None = None,
    name: str | None = None,
    tags: Sequence[str] | None = None,
    notes: str | None = None,
    group: str | None = None,
    job_type: str | None = None,
    settings: Mapping[str, Any] | Settings | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every setting by the precedence in the module docstring.  ``None`` means "not
    given".  ``environ`` defaults to ``os.environ``."""
    env = os.environ if environ is None else environ
    explicit = {
        "mode": mode,
        "root_dir": dir,
        "project": project,
        "entity": entity,
        "run_id": run_id,
        "name": name,
        "tags": tags,
        "notes": notes,
        "group": group,
        "job_type": job_type,
    }
    entries = _settings_entries(settings)
    resolved: dict[str, Any] = {}
    for key in Settings.names():
        found: tuple[Any, str] | None
        if explicit.get(key) is not None:
            found = (explicit[key], f"argument {_ARG_NAMES.get(key, key)}=")
        elif key in entries:
            found = (entries[key], f"settings[{key!r}]")
        else:
            found = _from_env(key, env)
        if found is not None:
            resolved[key] = check_setting(key, found[0], found[1])
    if "mode" not in resolved:  # `runstream offline` / `runstream online` in the run's directory
        root = Path(resolved.get("root_dir") or Path.cwd())
        saved = read_directory_mode(root)
        if saved is not None:
            resolved["mode"] = check_setting("mode", saved, f"{root / 'runstream' / 'settings'}")
    return Settings(**resolved)


def _mode_file(root: str | os.PathLike[str]) -> Path:
    return Path(root) / "runstream" / "settings"


def read_directory_mode(root: str | os.PathLike[str]) -> str | None:
    """The mode saved by ``runstream offline``/``online`` for runs started under ``root``."""
    import configparser

    parser = configparser.ConfigParser()
    try:
        parser.read(_mode_file(root))
    except configparser.Error:
        return None
    return parser.get("default", "mode", fallback=None)


def write_directory_mode(mode: str, root: str | os.PathLike[str]) -> Path:
    import configparser

    path = _mode_file(root)
    parser = configparser.ConfigParser()
    parser.read(path)
    if not parser.has_section("default"):
        parser.add_section("default")
    parser.set("default", "mode", mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        parser.write(f)
    os.replace(tmp, path)
    return path
