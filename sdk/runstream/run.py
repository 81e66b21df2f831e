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
from runstream.format.fold import NestedReads, flatten
from runstream.format.ring_layout import W_STEP_REGRESSIONS
from runstream.ring import RingWriter
from runstream.run_compat import RunCompat

if TYPE_CHECKING:
    from runstream.config import Config
    from runstream.settings import Settings
    from runstream.supervisor import SidecarSupervisor

_time = time.time
_ROW = rec.KIND_ROW  # a global lookup, not an attribute lookup, on the hot path
# ormsgpack writes the same bytes as msgpack.Packer(default=item_default, use_bin_type=True)
# (tests/format/test_records.py checks it) at 2-3x the speed.  Positional arguments: keywords cost ~40 ns.
_packb, _PACK_OPT, _item_default = ormsgpack.packb, ormsgpack.OPT_NON_STR_KEYS, rec.item_default
_NATIVE, _too_deep, _MAX_DEPTH = _ring.NATIVE, rec.nested_too_deep, rec.MAX_DEPTH


def _default(obj: Any) -> Any:
    """msgpack's fallback for a row's values: scalars with ``.item()`` as themselves; arrays and
    tensors as W&B stores them (a list up to 32 values, else a 32-bin histogram:
    ``runstream.media``, which imports numpy, is loaded only when a row holds one)."""
    if getattr(obj, "ndim", 0):
        from runstream.media.pack import row_default

        return row_default(obj)
    return _item_default(obj)


def _wants_media(data: Mapping[Any, Any]) -> bool:
    """Whether a row that did not pack holds media or values ``log`` converts (the slow path's
    question; loads ``runstream.media`` only for rows that failed to pack)."""
    from runstream.media.pack import needs_convert

    try:
        return any(needs_convert(v) for v in data.values())
    except RecursionError:
        return False


def _media_check_default(obj: Any) -> Any:
    """The validating pack's fallback: media objects pass (packed later, at commit)."""
    from runstream.media.base import Media
    from runstream.media.chart import CustomChart

    if isinstance(obj, (Media, CustomChart)):
        return None
    return _default(obj)


def bad_value_error(data: Mapping[Any, Any], where: str = "log") -> TypeError | ValueError:
    """Find the value msgpack refused and name its key and type (the slow path of an error)."""
    data = dict(data)
    try:
        # First what would make the walk below recurse without end (nesting past MAX_DEPTH, a
        # value containing itself) and keys no reader can use.
        rec.check_nesting(data, where)
    except (TypeError, ValueError) as e:
        return e
    for key, value in flatten(dict(data)).items():
        try:
            rec.pack_body(value)
        except (TypeError, ValueError, OverflowError) as e:
            kind = type(value).__name__
            # msgpack reports a too-large int as OverflowError or (through ``default``) TypeError
            big = isinstance(e, OverflowError) or (
                isinstance(value, int) and not -(1 << 63) <= value < 1 << 64
            )
            why = "an integer too large for 64 bits" if big else f"type {kind}"
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
        if run._metric_rules is not None:  # summary="none" hides a key here too (docs/metrics.md)
            out = {k: v for k, v in out.items() if not (run._metric_rules.resolve(k) or {}).get("none")}
        out.update(self._pinned)
        return NestedReads(out)  # summary["nested"] reads the nested/... keys as a dict

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __getitem__(self, key: str) -> Any:
        return self._view()[key]

    def __delitem__(self, key: str) -> None:
        self._run._check_live("run.summary")
        view = self._view()
        if dict.__contains__(view, key):
            keys = [key]
        else:  # a nested value: every key under it
            keys = [k for k in view if k.startswith(f"{key}/")]
            if not keys:
                raise KeyError(key)
        for k in keys:
            self._pinned.pop(k, None)
        self._deleted.update(keys)
        self._run._emit(rec.KIND_SUMMARY, {"del": keys})

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
        """Pin the keys of ``d`` (nested dicts as ``a/b`` keys).  A value ``log`` would refuse
        (too deep, containing itself, not serialisable, a key that is not a str or number) raises
        ``TypeError``/``ValueError`` naming its key path, and nothing of ``d`` is pinned.
        After ``finish`` it raises ``UsageError``, as W&B does."""
        self._run._check_live("run.summary")
        rec.check_nesting(dict(d), "summary")  # before flatten, which recurses
        flat = flatten(dict(d))
        try:
            rec.pack_body(flat)
        except (TypeError, ValueError, OverflowError):
            if not _wants_media(flat):
                raise bad_value_error(flat, "summary") from None
            self._update_media(flat)
            return
        self._pinned.update(flat)
        self._deleted.difference_update(flat)
        self._run._emit(rec.KIND_SUMMARY, {"set": flat})

    def _update_media(self, flat: dict[str, Any]) -> None:
        """``update`` of values holding media (``run.summary["best"] = runstream.Image(...)``):
        their MEDIA records go into the ring, then the SUMMARY record, whose placeholders the
        sidecar fills in as it does a row's (docs/media.md)."""
        from runstream.media.pack import convert_value

        run: Run = self._run
        converted = {k: convert_value(k, v, "summary") for k, v in flat.items()}
        try:
            _packb(converted, _media_check_default, _PACK_OPT)
        except (TypeError, ValueError, OverflowError):
            raise bad_value_error(converted, "summary") from None
        if run._finished:
            return
        placed = run._media_packer().place(converted, run._step, _time())
        self._pinned.update(converted)
        self._deleted.difference_update(converted)
        run._emit(rec.KIND_SUMMARY, {"set": placed})

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


class Run(_RunBase, RunCompat):
    """One tracked run, as seen from the training process: what ``runstream.init`` returns
    (``mode="disabled"`` returns a :class:`~runstream.disabled.DisabledRun` instead).

    A ``Run`` owns the producer end of a shared-memory ring; a sidecar process, started by
    ``init``, reads the ring and writes the run's journal (and streams it to a server when the
    run is online).  Nothing a ``Run`` does on the training thread waits for that process.

    Attributes:
        id (str): The run id: 8 lower-case letters and digits unless given to ``init``.
        name (str): The display name.  Assigning to it renames the run.
        path (str): ``"entity/project/id"``, the run's address on a server and in ``Api.run``.
        dir (str): The local run directory (``<dir>/runstream/run-<time>-<id>``): the journal,
            ``files/`` and ``logs/``.
        step (int): The step the next committed history row will get.
        config (Config): Hyperparameters; ``run.config.lr`` and ``run.config["lr"]`` read them,
            assigning or ``update`` adds them.  Changing a key's value raises ``ConfigError``
            unless ``init(allow_val_change=True)`` or ``update(..., allow_val_change=True)``.
        summary (Summary): Each history key's last logged value, unless a value was set here,
            which pins the key (later ``log`` calls no longer change it, nor ``define_metric``
            rules; wandb 0.31 differs, docs/metrics.md).  The full summary is
            computed from the journal; read in-process it shows the pinned keys and those of
            the last committed row.
        project, entity, group, job_type (str | None): As resolved by ``init``.
        tags (tuple[str, ...]), notes (str | None): Assignable; the change is recorded.
        start_time (float): When this process started the run, in Unix seconds.
        mode (str): ``"online"`` (streaming to a server) or ``"offline"``.

    A ``Run`` is a context manager: leaving the ``with`` block finishes it, as failed (exit code
    1) when an exception is propagating.  The rest of W&B's ``Run`` surface (``url``,
    ``resumed``, ``offline``, ``starting_step``, ``log_code``, ``restore``, ``mark_preempting``,
    the artifact calls, which raise ``NotSupportedError``...) is in
    :class:`runstream.run_compat.RunCompat` (docs/compatibility.md).

    ``log`` is the hot path.  When the C extension is built (``runstream.ring.NATIVE``),
    ``Run.log`` is C code whose own docstring is a one-liner; its full documentation is that of
    ``Run._log_py``, the Python ``log``, which takes every call the C code does not.

    Concurrency:
        A ``Run`` belongs to one thread at a time, normally the training loop's: ``log``,
        ``save``, ``config`` and ``summary`` writes push into a single-producer ring without a
        lock.  Logging from several threads at once needs the caller's own lock.  A forked
        child (a ``DataLoader`` worker, say) must not log: in a fork the run turns inert, and
        its ``log`` calls are ignored with one warning.  ``finish`` may be called from any one
        thread, once the others have stopped logging.
    """

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
        self._pending_media = False  # the pending row holds media (runstream.media.pack)
        self._media: Any = None  # runstream.media.pack.MediaPacker, made at the first media row
        self._media_next_id = 1  # the next MEDIA record's id (RunCore's C log takes them too)
        self._media_inline_max = 0  # > 0 once the packer exists: C log's media fast path is on
        self._watcher: Any = None  # runstream.watch.Watcher, made by the first watch()
        self._last_body: bytes | None = None
        self._metric_rules: Any = None  # runstream.format.metrics.MetricRules, at define_metric
        self._regression_warned = False
        self._alerts: Any = None  # runstream.alerts.AlertLimiter, made at the first alert
        self._finished = False
        self._sidecar: SidecarSupervisor | None = None
        self._pid = os.getpid()
        self.start_time = _time()
        self._starting_step = start_step
        self._resumed = False  # set by init when it continues an existing run
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
        self._check_live("run.name")
        self._name = str(value)
        self._emit(rec.KIND_RUN, {"name": self._name})

    @property
    def tags(self) -> tuple[str, ...]:
        return self._tags

    @tags.setter
    def tags(self, value: Any) -> None:
        self._check_live("run.tags")
        self._tags = tuple(str(t) for t in value)
        self._emit(rec.KIND_RUN, {"tags": list(self._tags)})

    @property
    def notes(self) -> str | None:
        return self._notes

    @notes.setter
    def notes(self, value: str | None) -> None:
        self._check_live("run.notes")
        # A str as for ``name``: the server keeps notes in a text column, and a dict there (which
        # the record would carry as it is) is not something every reader can show or store.
        self._notes = None if value is None else str(value)
        self._emit(rec.KIND_RUN, {"notes": self._notes})

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
        """``"online"`` when the run streams to a server, else ``"offline"``."""
        return "online" if getattr(self, "_online", None) is not None else "offline"

    def __repr__(self) -> str:
        return f"<runstream.Run {self.path} name={self._name!r} dir={self.dir!r}>"

    # --- logging -------------------------------------------------------------------------------
    def log(
        self,
        data: Mapping[str, Any],
        step: int | None = None,
        commit: bool | None = None,
        sync: bool | None = None,
    ) -> None:
        """Add a row of metrics to the run's history, without waiting for anything.

        The call serialises ``data`` (msgpack) and copies it into the shared-memory ring that the
        sidecar reads: about a microsecond or two for a dict of a few scalars, more for larger
        dicts, with no lock, no system call and no hand-off to a thread.  Nested dicts are kept
        as they are and read back as ``"outer/inner"`` keys.  ``_step``, ``_timestamp`` and
        ``_runtime`` are added downstream, as is the summary's "last value" for each key.

        Rows and steps follow W&B's rules:

        * ``log(d)``: ``d`` (merged into any pending row) becomes the row at the current step,
          and the step advances by one.
        * ``log(d, commit=False)``: ``d`` is merged into the pending row, which a later
          committing call writes; the step does not move.
        * ``log(d, step=n)`` with ``n`` above the current step: the pending row, if any, is
          committed at the current step, the run moves to step ``n`` and ``d`` becomes the
          pending row there (committed at once only with ``commit=True``).  With ``n`` equal
          to the current step, ``d`` is merged into the pending row.  With ``n`` below it, the
          row is dropped: the first time with a warning on stderr, always counted in the summary
          as ``_runstream/step_regressions`` (``settings={"step_regression": "raise"}`` makes it
          a ``ValueError`` instead).

        A pending row that nothing commits is written by ``finish``.

        Args:
            data: A dict (any mapping) of metric names to values: ``int``, ``float``, ``bool``,
                ``str``, ``None``, numpy scalars and 0-d arrays, scalar tensors (anything with
                ``.item()``), lists of numbers, 1-d numpy arrays, and dicts of these.
            step: The step to log at (any integer type, not ``bool``), or ``None`` for the
                current step.  See the rules above.
            commit: ``False`` keeps the row pending; ``True`` commits it even with ``step``;
                ``None`` is W&B's default (commit unless ``step`` is given).
            sync: Accepted for compatibility with W&B, where it is deprecated; ignored.

        Limits: dicts and lists inside ``data`` may nest at most 64 levels deep
        (``runstream.format.record.MAX_DEPTH``) and must not contain themselves; keys are
        ``str`` (numbers are accepted and read back as ``str``).  Only the rows the C fast
        path declines (nested or unusual values) pay for the check; a flat row of scalars
        does not.  The pure-Python build checks depth only for rows that fail to pack
        (ormsgpack refuses nesting past 254 levels).

        Raises:
            TypeError: ``data`` is not a mapping, a value cannot be serialised (the message
                names its key and type), a key is neither a
                ``str`` nor a number (a tuple, say: the message names its key path), or
                ``step`` is not an integer.  Nothing of the call is logged.
            RecordTooLargeError: The serialised row is larger than one record may be (half the
                ring, and at most 8 MiB).  A pending row is only measured when it is committed,
                so this may come from the later call (or ``finish``) that commits it, and that
                row is then lost.
            ValueError: ``step`` is behind the current step and ``step_regression`` is
                ``"raise"``; or a value nests deeper than 64 levels or contains itself (the
                message names the key path).  Nothing of the call is logged.
            UsageError: The run is finished.

        Back-pressure:
            ``log`` never waits for the sidecar, the disk or the network.  When the ring (the
            ``ring_size`` setting, 64 MiB by default) is full because the sidecar has fallen
            behind, records queue, in order, in a bounded in-process overflow (``overflow_size``,
            64 MiB by default) that later ``log`` calls and ``finish`` move into the ring as room
            appears.  When the overflow is full too, the record is dropped: the first drop prints
            a warning on stderr, and every drop is counted in the run's summary as
            ``_runstream/dropped_records`` and shown by ``runstream inspect``.  ``log`` never
            raises because of back-pressure.
        """
        if step is None and commit is None and self._pending is None and type(data) is dict:
            try:
                # Without OPT_NON_STR_KEYS: a row of str keys (nearly all) packs at full speed, and
                # any other key takes the checked path below, which refuses keys no reader can use.
                body = _packb(data, _default)
            except (TypeError, ValueError, OverflowError):
                if self._log_media_row(data):  # str keys -> scalars and media objects
                    return
                if _wants_media(data):  # media, a DataFrame, a figure, an int past 64 bits...
                    self._log_slow(data, step, commit, media=True)
                    return
                body = self._pack_unusual(data)
            else:
                # Only rows the C fast path declined (nested or unusual values) get here, so the
                # check costs no plain row anything; packed, the row has str keys and no cycle, so
                # depth is all that is left to check.  The pure-Python build skips it for rows
                # that pack: ormsgpack itself refuses nesting past 254 levels.  Each level costs
                # the body at least a byte, so a short body cannot be too deep.
                if _NATIVE and len(body) > _MAX_DEPTH and _too_deep(data):
                    rec.check_nesting(data, "log")  # raises, naming the key path
            self._push(_ROW, self._step, _time(), body)
            self._last_body = body
            self._step += 1
            return
        self._log_slow(data, step, commit)

    def _pack_unusual(self, data: dict[Any, Any]) -> bytes:
        """A row that did not pack with str keys: checked, then packed with other keys allowed
        (numbers, read back as str), or the error that names the bad key or value."""
        rec.check_nesting(data, "log")
        try:
            return _packb(data, _default, _PACK_OPT)
        except (TypeError, ValueError, OverflowError):
            raise bad_value_error(data) from None

    _log_py = log  # the C ``log`` calls this for what it does not take itself
    if not TYPE_CHECKING and _ring.NATIVE:
        del log  # RunCore.log

    def _log_slow(self, data: Any, step: Any, commit: bool | None, media: bool = False) -> None:
        """``log`` for what the fast path does not take; ``media``: the row is known to hold
        media or values ``log`` converts (the caller asked ``_wants_media``)."""
        if self._finished:
            raise UsageError(f"run {self._id} is finished; call runstream.init() to start another run")
        if not isinstance(data, Mapping):
            raise TypeError(f"runstream.log takes a dict of metrics, not {type(data).__name__}")
        rec.check_nesting(dict(data), "log")  # before _merge's flatten, which recurses
        if not media:
            try:
                _packb(dict(data), _default, _PACK_OPT)
            except (TypeError, ValueError, OverflowError):
                if not _wants_media(data):
                    raise bad_value_error(data) from None
                media = True
        if media:
            data = self._convert_media(data)
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
            self._merge(data, media)
            if commit:
                self._commit_pending()
            return
        self._merge(data, media)
        if commit is not False:
            self._commit_pending()

    def _convert_media(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The row with media kept and W&B's conversions made (``runstream.media.pack``); raises
        naming the key of a value neither media nor loggable.  Nothing is pushed yet."""
        from runstream.media.base import Media
        from runstream.media.chart import CustomChart
        from runstream.media.pack import convert_value

        flat = {k: convert_value(k, v) for k, v in flatten(dict(data)).items()}
        try:
            _packb(flat, _media_check_default, _PACK_OPT)
        except (TypeError, ValueError, OverflowError):
            plain = {k: v for k, v in flat.items() if not isinstance(v, (Media, CustomChart, list))}
            raise bad_value_error(plain) from None
        return flat

    def _merge(self, data: Mapping[str, Any], media: bool = False) -> None:
        """Merge into the pending row; ``media``: ``data`` holds media, so the row's commit
        packs it with ``runstream.media.pack``."""
        if media:
            self._pending_media = True
        flat = flatten(dict(data))
        if self._pending is None:
            self._pending = flat
        else:
            self._pending.update(flat)

    def _commit_pending(self) -> None:
        if self._pending is None:
            return
        if self._watcher is not None:  # watch(): histograms made on the device, read now
            self._watcher.fill(self._pending)
        t = _time()
        if self._pending_media:  # its MEDIA records go into the ring first, then the row
            self._pending_media = False
            body = self._media_packer().pack_row(self._pending, self._step, t)
        else:
            try:
                body = _packb(self._pending, _default, _PACK_OPT)
            except TypeError:  # media merged by a path that did not say so: pack it as media
                body = self._media_packer().pack_row(self._pending, self._step, t)
        self._pending = None
        self._push(rec.KIND_ROW, self._step, t, body)
        self._last_body = body
        self._step += 1

    def _log_media_row(self, data: dict[Any, Any]) -> bool:
        """The common media row -- ``log({"img": Image(...), "loss": x})``: str keys, scalars and
        media objects (or lists of them) -- committed at once, without the slow path's walks and
        conversions (which cost ~100 us when the training step has left the caches cold).
        False, with nothing logged, for any other row."""
        if self._finished:
            return False  # the slow path says so
        t = _time()  # the row's and its media's: one moment
        body = self._media_packer().flat_row(data, self._step, t)
        if body is None:
            return False
        self._push(_ROW, self._step, t, body)
        self._last_body = body
        self._step += 1
        return True

    def _media_packer(self) -> Any:
        packer = self._media
        if packer is None:
            from runstream.format.ring_layout import max_record
            from runstream.media.pack import MediaPacker

            ring = self._writer.ring
            packer = self._media = MediaPacker(
                self._dir,
                self._writer.push_parts,
                ring.words,
                max_record(ring.capacity),
                self._settings.media_spill_size,
                lambda cfg: self._emit(rec.KIND_CONFIG, cfg),
                self,
            )
            self._media_inline_max = packer.inline_max
        return packer

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

    def save(self, glob_str: Any = None, base_path: Any = None, policy: str = "live") -> list[str] | bool:
        """Keep files with the run (W&B's ``save``; docs/files.md).

        Each file that ``glob_str`` matches now (files created later are not picked up) is kept
        under the run's ``files/`` at its path relative to ``base_path``, and uploaded when the
        run is online.  Files matching the ``ignore_globs`` setting are skipped.

        Args:
            glob_str: A path or glob (``str`` or ``os.PathLike``; ``**`` recurses).  A relative
                glob keeps its path below the current directory; an absolute one keeps the part
                below its last directory without wildcards.
            base_path: The directory saved paths are relative to; the glob must lie under it.
            policy: ``"live"`` (kept current: uploaded again after each change), ``"now"``
                (copied and uploaded once, now) or ``"end"`` (uploaded when the run finishes).

        Returns:
            The paths under ``files/`` that were saved; an empty list, with a warning on
            stderr, when nothing matched.

        Raises:
            TypeError: ``glob_str`` or ``base_path`` is not a path.
            ValueError: ``policy`` is unknown, or the glob reaches above ``base_path``.
            UsageError: The run is finished.

        The call lists the matching files and, for ``live`` and ``end``, symlinks them into
        ``files/``; it reads no file's content.  Copying (``now``), hashing and uploading happen
        in the sidecar, so a large file does not stall training.

        ``save()`` with no arguments (old W&B: "persist the run's attributes") returns ``True``
        and does nothing: runstream records each change as it is made.
        """
        if glob_str is None and base_path is None:
            return True
        from runstream.files import save

        return save(self, glob_str, base_path, policy)

    # --- lifecycle -------------------------------------------------------------------------------
    def finish(self, exit_code: int | None = None, quiet: bool | None = None) -> None:
        """End the run and wait, bounded, until the sidecar has made it durable.

        Steps, in order: a pending row (``log(..., commit=False)``) is committed; records waiting
        in the overflow are moved into the ring as the sidecar frees room; an exit record is
        written and the ring is closed; then ``finish`` waits for the sidecar to exit, which it
        does once it has journaled and fsync'd every record and, for an online run, once the
        server has acknowledged them or its upload deadline (a few seconds short of
        ``finish_timeout``) has passed.  The module-level ``runstream.run``, ``config``,
        ``summary`` and ``log`` go back to their pre-``init`` state, and one line (or, when
        records were lost or are still unsent, a warning) goes to stderr.

        Args:
            exit_code: 0 or ``None`` marks the run finished; anything else marks it failed with
                that code.
            quiet: Accepted for compatibility with W&B; ignored (the ``silent`` setting
                quiets runstream's messages).

        Blocking:
            Bounded by the ``finish_timeout`` setting (60 s by default), plus at least one
            second given to the sidecar even when draining the overflow used the whole budget.
            At the deadline, records still in the overflow are dropped and counted
            (``_runstream/dropped_records``), and a sidecar still writing is left to finish in
            the background; the warning says so and, for an online run with unacknowledged
            records, gives the ``runstream sync`` command that uploads the rest.  The sidecar
            keeps its state in the run directory, so nothing already journaled is lost.

        Calling ``finish`` again does nothing.  It is also called on leaving a ``with`` block
        and at interpreter exit (with the exit code of ``sys.exit`` or 1 for an uncaught
        exception, 130 for ``KeyboardInterrupt``).
        """
        from runstream.session import finish_run

        if self._watcher is not None:  # hooks off the models; histograms taken still go in the last row
            self._watcher.remove()
        finish_run(self, exit_code)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        self.finish(exit_code=0 if exc_type is None else 1)
        return False

    def alert(
        self,
        title: str,
        text: str,
        level: Any = None,
        wait_duration: Any = None,
    ) -> bool:
        """Record an alert with the run; the server lists it and POSTs it to the webhook set up
        for the run's entity (W&B's ``run.alert``; docs/alerts.md).

        Args:
            title: A short name, 1 to 64 characters; also the key of the rate limit.
            text: The message (a str; past 16,384 characters it is cut, and says so).
            level: ``runstream.AlertLevel.INFO`` (the default, also for ``None``), ``WARN`` or
                ``ERROR``, or the level's name as a str (any case).
            wait_duration: Seconds (int or float) or a ``datetime.timedelta``: alerts with this
                title are dropped until this long after the last one recorded.  ``None`` or 0:
                one minute, as in W&B.

        Returns:
            True when the alert was recorded; False when the rate limit dropped it (the next
            recorded alert with this title counts it in its ``suppressed`` field).

        Raises:
            TypeError: ``title`` or ``text`` is not a str, ``level`` is not an ``AlertLevel``
                or str, or ``wait_duration`` is not a number or timedelta.
            ValueError: An empty or too long title, an unknown level name, or a negative or
                non-finite ``wait_duration``.
            UsageError: The run is finished.

        Like ``log``, it never blocks: one small record goes into the ring (or the bounded
        overflow), and storage and delivery happen in the sidecar and the server.
        """
        from runstream.alerts import record_alert

        return record_alert(self, title, text, level, wait_duration)

    def watch(
        self,
        models: Any,
        criterion: Any = None,
        log: Literal["gradients", "parameters", "all"] | None = "gradients",
        log_freq: int = 1000,
        idx: int | None = None,
        log_graph: bool = False,
    ) -> None:
        """Log histograms of a torch model's gradients and/or parameters (docs/watch.md).

        Every ``log_freq`` batches, 64-bin histograms of each parameter's gradient (under
        ``gradients/<prefix><name>``) and/or value (``parameters/<prefix><name>``) go into the
        history row that the next committing ``log`` writes, as W&B's ``watch`` does.  The
        prefix is empty for the first model watched in the run and ``graph_<i>`` for the i-th
        after it.  Histograms are computed on the tensor's device without waiting for it; the
        batches in between cost one counter per model.  Hooks never call collectives, so DDP
        ranks may watch differently; an FSDP (DTensor) parameter is histogrammed from this
        rank's shard.

        Args:
            models: A ``torch.nn.Module`` or a list/tuple of them.
            criterion: Accepted for compatibility with W&B (it only feeds the graph); unused.
            log: ``"gradients"``, ``"parameters"``, ``"all"`` or ``None`` (nothing).
            log_freq: Log every this many batches (forward passes of the model, W&B's count;
                0 is taken as 1).
            idx: The index of the first model, for the ``graph_<idx>`` prefix; by default the
                number of models watched so far in this run.
            log_graph: Accepted; the graph is not recorded (one warning says so).

        Raises:
            ImportError: torch cannot be imported.
            TypeError: A model is not a ``torch.nn.Module``.
            ValueError: ``log``, ``log_freq`` or ``idx`` is invalid, or a model is already
                watched by this run.
            UsageError: The run is finished.

        Non-blocking: the call only registers hooks.  Each logged row then reads its
        histograms from the device in one copy per device (docs/watch.md, "Cost").
        """
        if self._finished:
            raise UsageError(f"run {self._id} is finished; call runstream.init() to start another run")
        from runstream.watch import watcher_of

        watcher_of(self).add(models, log, log_freq, idx, log_graph)

    def unwatch(self, models: Any = None) -> None:
        """Stop watching ``models`` (a module or a list of them; by default every watched model).

        The hooks are removed; histograms already taken still go into the next committed row.
        A model that is not watched gets a warning on stderr.
        """
        if self._watcher is not None:
            self._watcher.remove(models)
        elif models is not None:
            print("runstream: warning: unwatch: no model is watched", file=sys.stderr)

    def define_metric(
        self,
        name: str,
        step_metric: Any = None,
        step_sync: bool | None = None,
        hidden: bool | None = None,
        summary: str | None = None,
        goal: str | None = None,
        overwrite: bool | None = None,
    ) -> Any:
        """Say how a metric is summarised and charted (W&B's ``define_metric``; docs/metrics.md).

        Args:
            name: A logged key (``"loss"``, ``"train/loss"`` for a nested ``{"train": {"loss"}}``)
                or a glob ending in ``*`` (``"train/*"``) covering every key with that prefix
                that has no definition of its own (the longest matching glob wins; keys starting
                with ``_`` are never covered).
            step_metric: A key (or a ``Metric``) the dashboard uses as this metric's default x axis.
            step_sync: Fill ``step_metric``'s latest value into rows that log this metric without
                it (in the run's history as read back); defaults to True when ``step_metric`` is given.
            hidden: Leave this metric out of the dashboard's automatic charts.
            summary: Comma-separated operations: ``"min"``, ``"max"``, ``"mean"``, ``"first"``,
                ``"last"``, ``"best"`` (min or max, by ``goal``), ``"copy"`` (accepted, no effect)
                and ``"none"`` (no summary for the key).  With any of the first six, the key's
                summary is a dict of them: ``{"min": 0.1, "max": 0.9}``.
            goal: ``"minimize"`` or ``"maximize"`` (or ``"min"``/``"max"``): what ``"best"`` means.
            overwrite: True replaces an earlier definition of ``name``; otherwise the calls merge
                (later options win, summary operations add up).

        Returns:
            A ``runstream.metric.Metric`` holding the call's arguments; it can be discarded.

        Raises:
            runstream.metric.MetricError: (an ``Error`` and a ``ValueError``) an argument of the
                wrong type, an unknown summary operation or goal, ``"*"`` other than at the end
                of ``name``, or ``"best"`` without a goal.  Nothing is recorded.

        Non-blocking: one small METRIC record goes into the ring; the summary rules are applied
        where records are folded (``read_run``, ``summary.json``, the server), so ``log`` costs
        the same as before.  In this process ``run.summary`` shows each key's last value (and
        hides ``"none"`` keys): min/max/mean need every row, which only the fold sees.  After
        ``finish`` the call is checked and returns a ``Metric``, but records nothing.
        """
        from runstream.metric import define

        return define(self, name, step_metric, step_sync, hidden, summary, goal, overwrite)

    def _label(self, *args: Any, **kwargs: Any) -> None:
        # W&B's integration telemetry tag (HF's Trainer calls run._label(code=...)); nothing to record.
        return None
