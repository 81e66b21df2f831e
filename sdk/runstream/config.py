"""``run.config``: the run's hyperparameters, with W&B's semantics.

A :class:`Config` behaves like W&B's ``wandb.config``: attribute and item access, ``update`` from a
dict, an ``argparse.Namespace`` or absl flags, and a guard against silently changing a value that
was already recorded (``allow_val_change``).  Every change is handed to ``emit`` as a dict of just
the changed keys; the SDK turns that into a CONFIG record.

Values are stored in a plain, JSON-like form (str, int, float, bool, None, list, and dicts with str
keys) because they are written to the journal and to ``config.yaml``: numpy scalars and other
objects with ``.item()`` become Python numbers, arrays become lists, tuples become lists, and
anything else becomes ``str(obj)`` -- what W&B does too.  An int beyond 64 bits, which the journal
(msgpack) cannot hold, is kept as its decimal string.

Limits, checked when a value is set (``init``'s ``config`` before the run is created): dicts and
lists nest at most ``MAX_DEPTH`` (64) levels and never contain themselves (:class:`ConfigError`,
naming the key path); a value whose ``str()`` raises is a ``TypeError`` naming it.  A rejected
value changes nothing.

Thread safety: none.  A Config is meant to be used from one thread at a time (the user's); the
SDK only reads what ``emit`` hands it.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from pathlib import Path
from typing import Any

import yaml

from runstream.errors import ConfigError, UsageError
from runstream.format.record import MAX_DEPTH, show_key

Emit = Callable[[dict[str, Any]], None]

_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1  # what msgpack can hold

# Top-level keys W&B writes into its own config files; they describe W&B, not the experiment.
_WANDB_FILE_KEYS = frozenset({"wandb_version", "_wandb"})


class Config:
    """The run's config.  See the module docstring for value handling and threading."""

    __slots__ = ("_allow_val_change", "_emit", "_items")

    _allow_val_change: bool
    _emit: Emit | None
    _items: dict[str, Any]

    def __init__(self, emit: Emit | None = None, *, allow_val_change: bool = False) -> None:
        # object.__setattr__ because our own __setattr__ turns attributes into config keys.
        object.__setattr__(self, "_emit", emit)
        object.__setattr__(self, "_items", {})
        object.__setattr__(self, "_allow_val_change", allow_val_change)

    # --- changing ---------------------------------------------------------------------------
    def update(self, d: Any, allow_val_change: bool = False) -> None:
        """Merge ``d`` (anything :func:`load_config` accepts) into the config.

        All keys are checked before any is stored, so a rejected update changes nothing.
        """
        self._merge(load_config(d), allow_val_change or self._allow_val_change, only_missing=False)

    def setdefaults(self, d: Any) -> None:
        """Store the keys of ``d`` that the config does not have yet; existing keys are kept."""
        self._merge(load_config(d), allow_change=False, only_missing=True)

    def __setitem__(self, key: str, value: Any) -> None:
        self._merge({key: value}, self._allow_val_change, only_missing=False)

    def __setattr__(self, key: str, value: Any) -> None:
        if key in Config.__slots__:
            object.__setattr__(self, key, value)
        else:
            self[key] = value

    def _merge(self, d: Mapping[Any, Any], allow_change: bool, only_missing: bool) -> None:
        delta: dict[str, Any] = {}
        conflicts: list[str] = []
        for key, raw in d.items():
            value = to_plain(raw, _top_key(key))
            if key in self._items:
                old = self._items[key]
                if only_missing or _same(old, value):
                    continue
                if not allow_change:
                    conflicts.append(f"{key!r} from {old!r} to {value!r}")
                    continue
            delta[key] = value
        if conflicts:
            raise ConfigError(
                "refusing to change config "
                + ("key " if len(conflicts) == 1 else "keys ")
                + "; ".join(conflicts)
                + ". Config values are recorded once; to change them on purpose pass "
                "allow_val_change=True to config.update() (or to runstream.init())."
            )
        if delta:
            if self._emit is not None:  # first: an emit that refuses (a finished run) stores nothing
                self._emit(delta)
            self._items.update(delta)

    # --- reading ----------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __getattr__(self, key: str) -> Any:
        # Only called when normal lookup fails.  Dunder names are never config keys: copy, pickle
        # and numpy probe for them and must see AttributeError.  A slot name here means the slot
        # is not set yet (an object being rebuilt by copy or pickle).
        if key.startswith("__") or key in Config.__slots__:
            raise AttributeError(key)
        try:
            return self._items[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}") from None

    def get(self, key: str, default: Any = None) -> Any:
        return self._items.get(key, default)

    def keys(self) -> KeysView[str]:
        return self._items.keys()

    def items(self) -> ItemsView[str, Any]:
        return self._items.items()

    def values(self) -> ValuesView[Any]:
        return self._items.values()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def as_dict(self) -> dict[str, Any]:
        """A deep copy: changing it does not change the config (nor record anything)."""
        return copy.deepcopy(self._items)

    def __repr__(self) -> str:
        return f"Config({self._items!r})"


# --- values -----------------------------------------------------------------------------------
def plain_config(d: Mapping[Any, Any]) -> dict[str, Any]:
    """``d`` as a Config would store it, checked: what ``init`` runs on its ``config`` before it
    creates anything, so a value that cannot be stored fails ``init`` itself, naming its key."""
    return {_top_key(key): to_plain(raw, key) for key, raw in d.items()}


def _top_key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"config keys must be str, got {type(key).__name__} key {show_key(key)}")
    return key


def to_plain(value: Any, path: str = "", _above: tuple[int, ...] = ()) -> Any:
    """``value`` in the plain, JSON-like form a Config stores (see the module docstring).

    ``path`` is the key path of ``value`` (``"model/layers"``), used in error messages.  Raises
    :class:`ConfigError` (a ``ValueError``) when dicts and lists nest more than ``MAX_DEPTH``
    deep or a value contains itself, and ``TypeError`` when a value's ``str`` fails; recursion
    stops at ``MAX_DEPTH``, so no input raises ``RecursionError``.
    """
    if value is None or type(value) in (str, float, bool):
        return value
    if type(value) is int:
        # msgpack (the journal) holds 64-bit integers; a larger one is kept as its digits, as
        # other values it cannot hold are kept as their str.
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    # Subclasses (IntEnum, StrEnum, numpy.float64 is a float) are reduced to the builtin type.
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return to_plain(base(value), path, _above)
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in _above:
            raise ConfigError(f"config value {_show(path)} contains itself, which cannot be stored")
        if len(_above) >= MAX_DEPTH:
            raise ConfigError(
                f"config value {_show(path)} is nested more than {MAX_DEPTH} dicts/lists deep; "
                f"at most {MAX_DEPTH} levels can be stored (flatten it, or store it as a string)"
            )
        above = (*_above, id(value))
        if isinstance(value, Mapping):
            # Nested keys become str, as JSON would make them, so every store of the config agrees.
            out = {}
            for k, v in value.items():
                key = _plain_str(k, path)
                out[key] = to_plain(v, f"{path}/{key}" if path else key, above)
            return out
        return [to_plain(v, f"{path}/{i}" if path else str(i), above) for i, v in enumerate(value)]
    # numpy/torch: arrays (ndim > 0) via tolist(), scalars and 0-d tensors via item().
    method = "tolist" if getattr(value, "ndim", 0) else "item"
    convert = getattr(value, method, None)
    if callable(convert):
        try:
            converted = convert()
        except Exception:  # a user object's item() may raise anything; fall back to str()
            pass
        else:
            if converted is not value:
                return to_plain(converted, path, _above)
    return _plain_str(value, path)


def _plain_str(value: Any, path: str) -> str:
    """``str(value)``; a user object whose ``__str__`` raises is a ``TypeError`` naming where it is."""
    if type(value) is str:
        return value
    try:
        return str(value)
    except Exception as e:
        raise TypeError(
            f"config value {_show(path)} is a {type(value).__name__} whose str() raised "
            f"{type(e).__name__}: {e}; config values are stored as str when they are not plain data"
        ) from None


def _show(path: str) -> str:
    return show_key(path or "<top level>", 120)


def _same(a: Any, b: Any) -> bool:
    """Equality for stored values where NaN equals NaN and True is not 1 (both count as changes
    users care about), while 1 and 1.0 are the same number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) in (int, float) and type(b) in (int, float):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


# --- sources ----------------------------------------------------------------------------------
def load_config(
    source: Any, include_keys: Iterable[str] | None = None, exclude_keys: Iterable[str] | None = None
) -> dict[str, Any]:
    """Turn what ``init(config=...)`` / ``config.update(...)`` accept into a dict.

    ``source`` is None, a mapping, an ``argparse.Namespace``, an absl-style flags object (anything
    with ``flag_values_dict()``) or the path of a YAML file.  W&B-style YAML, where each value is
    written as ``{value: X, desc: ...}``, is unwrapped to ``X``, and W&B's bookkeeping keys
    (``wandb_version``, ``_wandb``) are dropped.  ``include_keys`` keeps only the listed keys,
    ``exclude_keys`` drops them; giving both is a :class:`UsageError`, as in W&B.
    """
    if include_keys is not None and exclude_keys is not None:
        raise UsageError("give at most one of config_include_keys and config_exclude_keys, not both")
    if source is None:
        result: dict[Any, Any] = {}
    elif isinstance(source, Config):
        result = source.as_dict()
    elif isinstance(source, Mapping):
        result = dict(source)
    elif isinstance(source, argparse.Namespace):
        result = vars(source).copy()
    elif callable(getattr(source, "flag_values_dict", None)):
        result = dict(source.flag_values_dict())
    elif isinstance(source, (str, os.PathLike)):
        result = _load_yaml(Path(source))
    else:
        raise TypeError(
            f"cannot read a config from a {type(source).__name__}: expected a dict, an "
            "argparse.Namespace, absl flags or the path of a YAML file"
        )
    if include_keys is not None:
        keep = _key_set(include_keys)
        result = {k: v for k, v in result.items() if k in keep}
    if exclude_keys is not None:
        drop = _key_set(exclude_keys)
        result = {k: v for k, v in result.items() if k not in drop}
    return result


def _key_set(keys: Iterable[str]) -> set[str]:
    # A bare string is one key, not a set of one-letter keys.
    return {keys} if isinstance(keys, str) else set(keys)


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    except RecursionError:  # the YAML parser recurses once per level
        raise ConfigError(f"config file {str(path)!r} nests values too deeply to read") from None
    if data is None:  # an empty file (or only comments) is an empty config
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of keys to values, "
            f"but its top level is a {type(data).__name__}"
        )
    result: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"config file {str(path)!r} has a non-string top-level key {key!r}")
        if key in _WANDB_FILE_KEYS:
            continue
        if isinstance(value, dict) and "value" in value and value.keys() <= {"value", "desc"}:
            value = value["value"]
        result[key] = value
    return result
