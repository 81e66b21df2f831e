"""``Run``: what ``runstream.init`` returns, and ``log``'s hot path.

``log`` turns a dict into one msgpack body and one ``RingWriter.push``; everything else (nested
keys flattened to ``a/b``, ``_runtime``, the summary) is computed downstream from the record's
header, so a call costs well under a microsecond and never waits on the sidecar.  With the C
extension (``runstream.ring.NATIVE``) the common call -- a plain dict of scalars, nothing pending
-- is one C call (``_ringfast.RunCore.log``); everything else, and every call without it, runs
``_log_py`` below.

Step semantics (W&B's): each plain ``log`` commits a row at the current step and moves to the
next; ``commit=False`` merges into a pending row; ``step=`` greater than the current step commits
the pending row and moves there (the new data stays pending unless ``commit=True``), equal merges,
smaller is dropped with one warning and counted (``settings step_regression="raise"`` makes it a
``ValueError``).

Concurrency contract: a ``Run`` is used from one thread at a time (the training loop's).  The
sidecar supervisor thread only touches ``self._sidecar``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import ormsgpack

from runstream import ring as _ring
from runstream.errors import UsageError
from runstream.format import record as rec
from runstream.read.local import flatten
from runstream.ring import W_STEP_REGRESSIONS, RingWriter

if TYPE_CHECKING:
    from runstream.config import Config
    from runstream.settings import Settings
    from runstream.supervisor import SidecarSupervisor

_time = time.time
_ROW = rec.KIND_ROW  # a global lookup, not an attribute lookup, on the hot path
# ormsgpack writes the same bytes as msgpack.Packer(default=item_default, use_bin_type=True)
# (tests/format/test_records.py checks it) at 2-3x the speed.  Positional arguments: keywords cost ~40 ns.
_packb, _default, _PACK_OPT = ormsgpack.packb, rec.item_default, ormsgpack.OPT_NON_STR_KEYS


def bad_value_error(data: Mapping[Any, Any], where: str = "log") -> TypeError:
    """Find the value msgpack refused and name its key and type (the slow path of an error)."""
    for key, value in flatten(dict(data)).items():
        try:
            rec.pack_body(value)
        except (TypeError, ValueError, OverflowError) as e:
            kind = type(value).__name__
            why = "an integer too large for 64 bits" if isinstance(e, OverflowError) else f"type {kind}"
            return TypeError(
                f"runstream.{where}: the value for key {key!r} has {why}, which cannot be logged; "
                "log int, float, bool, str, None, numpy scalars or 0-d arrays, scalar tensors "
                "(anything with .item()), or lists of numbers"
            )
    return TypeError(f"runstream.{where}: data could not be serialised")


class Summary:
    """``run.summary``: a key's value is its last logged value unless set here, which pins it.

    Setting or deleting emits a SUMMARY record; the sidecar and readers compute the full summary
    from the journal.  Reading in-process sees pinned keys and the last committed row.
    """

    def __init__(self, run: Run) -> None:
        object.__setattr__(self, "_run", run)
        object.__setattr__(self, "_pinned", {})
        object.__setattr__(self, "_deleted", set())

    def _view(self) -> dict[str, Any]:
        run: Run = self._run
        out: dict[str, Any] = {}
        if run._last_body is not None:
            out.update(flatten(rec.unpack_body(run._last_body)))
        for k in self._deleted:
            out.pop(k, None)
        out.update(self._pinned)
        return out

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __getitem__(self, key: str) -> Any:
        return self._view()[key]

    def __delitem__(self, key: str) -> None:
        if key not in self._view():
            raise KeyError(key)
        self._pinned.pop(key, None)
        self._deleted.add(key)
        self._run._emit(rec.KIND_SUMMARY, {"del": [key]})

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __contains__(self, key: object) -> bool:
        return key in self._view()

    def __iter__(self) -> Iterator[str]:
        return iter(self._view())

    def __len__(self) -> int:
        return len(self._view())

    def __repr__(self) -> str:
        return f"Summary({self._view()!r})"

    def update(self, d: Mapping[str, Any]) -> None:
        flat = flatten(dict(d))
        try:
            rec.pack_body(flat)
        except (TypeError, ValueError, OverflowError):
            raise bad_value_error(flat, "summary") from None
        self._pinned.update(flat)
        self._deleted.difference_update(flat)
        self._run._emit(rec.KIND_SUMMARY, {"set": flat})

    def get(self, key: str, default: Any = None) -> Any:
        return self._view().get(key, default)

    def keys(self) -> list[str]:
        return list(self._view())

    def items(self) -> list[tuple[str, Any]]:
        return list(self._view().items())


# With the C extension, Run's slots ``_writer``, ``_step``, ``_pending`` and ``_last_body`` live in
# ``_ringfast.RunCore``, whose ``log`` does the plain-dict fast path below in one C call (packing
# rows of str -> float/int/bool/None/str itself, bytes identical to msgpack's) and calls
# ``_log_py`` for everything else.
if TYPE_CHECKING or not _ring.NATIVE:

    class _RunBase:
        pass

else:
    _RunBase = _ring._ringfast.RunCore


class Run(_RunBase):
    def __init__(
        self,
        settings: Settings,
        run_id: str,
        name: str,
        run_dir: Path,
        config: Config,
        writer: RingWriter,
        start_step: int = 0,
    ) -> None:
        self._settings = settings
        self._id = run_id
        self._name = name
        self._dir = run_dir
        self.config = config
        self.summary = Summary(self)
        self._writer = writer
        self._push = writer.push
        self._step = start_step
        self._pending: dict[str, Any] | None = None
        self._last_body: bytes | None = None
        self._regression_warned = False
        self._finished = False
        self._sidecar: SidecarSupervisor | None = None
        self._pid = os.getpid()
        self.start_time = _time()
        self._tags = tuple(settings.tags)
        self._notes = settings.notes
        self.project = settings.project
        self.entity = settings.entity
        self.group = settings.group
        self.job_type = settings.job_type

    # --- identity ------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._id

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = str(value)
        self._emit(rec.KIND_RUN, {"name": self._name})

    @property
    def tags(self) -> tuple[str, ...]:
        return self._tags

    @tags.setter
    def tags(self, value: Any) -> None:
        self._tags = tuple(str(t) for t in value)
        self._emit(rec.KIND_RUN, {"tags": list(self._tags)})

    @property
    def notes(self) -> str | None:
        return self._notes

    @notes.setter
    def notes(self, value: str | None) -> None:
        self._notes = value
        self._emit(rec.KIND_RUN, {"notes": value})

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self._id}"

    @property
    def dir(self) -> str:
        return str(self._dir)

    @property
    def step(self) -> int:
        return self._step

    @property
    def mode(self) -> str:
        return "offline"

    def __repr__(self) -> str:
        return f"<runstream.Run {self.path} name={self._name!r} dir={self.dir!r}>"

    # --- logging -------------------------------------------------------------------------------
    def log(self, data: dict[str, Any], step: int | None = None, commit: bool | None = None) -> None:
        """Log a dict of metrics as one history row (the module docstring has the step rules)."""
        if step is None and commit is None and self._pending is None and type(data) is dict:
            try:
                body = _packb(data, _default, _PACK_OPT)
            except (TypeError, ValueError, OverflowError):
                raise bad_value_error(data) from None
            self._push(_ROW, self._step, _time(), body)
            self._last_body = body
            self._step += 1
            return
        self._log_slow(data, step, commit)

    _log_py = log  # the C ``log`` calls this for what it does not take itself
    if not TYPE_CHECKING and _ring.NATIVE:
        del log  # RunCore.log

    def _log_slow(self, data: Any, step: Any, commit: bool | None) -> None:
        if self._finished:
            raise UsageError(f"run {self._id} is finished; call runstream.init() to start another run")
        if not isinstance(data, Mapping):
            raise TypeError(f"runstream.log takes a dict of metrics, not {type(data).__name__}")
        try:
            _packb(dict(data), _default, _PACK_OPT)
        except (TypeError, ValueError, OverflowError):
            raise bad_value_error(data) from None
        if step is not None:
            if isinstance(step, bool) or not hasattr(step, "__index__"):
                raise TypeError(f"runstream.log: step must be an int, not {type(step).__name__}")
            step = int(step)
            if step < self._step:
                self._step_regression(step)
                return
            if step > self._step:
                self._commit_pending()
                self._step = step
            self._merge(data)
            if commit:
                self._commit_pending()
            return
        self._merge(data)
        if commit is not False:
            self._commit_pending()

    def _merge(self, data: Mapping[str, Any]) -> None:
        flat = flatten(dict(data))
        if self._pending is None:
            self._pending = flat
        else:
            self._pending.update(flat)

    def _commit_pending(self) -> None:
        if self._pending is None:
            return
        body = _packb(self._pending, _default, _PACK_OPT)
        self._pending = None
        self._push(rec.KIND_ROW, self._step, _time(), body)
        self._last_body = body
        self._step += 1

    def _step_regression(self, step: int) -> None:
        if self._settings.step_regression == "raise":
            raise ValueError(
                f"runstream.log: step {step} is behind the run's current step {self._step}; "
                "steps must not go backwards"
            )
        self._writer.count(W_STEP_REGRESSIONS)
        if not self._regression_warned:
            self._regression_warned = True
            print(
                f"runstream: warning: log(step={step}) dropped: the run is already at step {self._step} "
                "and steps must not go backwards (further such rows are dropped silently and counted "
                "in summary _runstream/step_regressions)",
                file=sys.stderr,
            )

    def _emit(self, kind: int, value: Any) -> None:
        """Publish a metadata record (config, summary, run updates); not the hot path."""
        if self._finished:
            return
        self._push(kind, 0, _time(), rec.pack_body(value))

    def save(self, glob_str: Any, base_path: Any = None, policy: str = "live") -> list[str]:
        """Keep files with the run (W&B's ``save``; docs/files.md): each file ``glob_str`` matches
        now goes under ``files/`` at its path relative to ``base_path`` and is uploaded: ``live``
        again after each change, ``now`` at once, ``end`` when the run finishes.  Returns the
        saved paths; the copying, hashing and uploading happen in the sidecar."""
        from runstream.files import save

        return save(self, glob_str, base_path, policy)

    # --- lifecycle -------------------------------------------------------------------------------
    def finish(self, exit_code: int | None = None, quiet: bool | None = None) -> None:
        from runstream.session import finish_run

        finish_run(self, exit_code)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        self.finish(exit_code=0 if exc_type is None else 1)
        return False

    # W&B calls that have no effect yet in runstream; accepted so scripts run unchanged.
    def watch(self, *args: Any, **kwargs: Any) -> None:
        return None

    def define_metric(self, *args: Any, **kwargs: Any) -> None:
        return None

    def mark_preempting(self) -> None:
        return None
