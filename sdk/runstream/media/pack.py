"""Media in a logged row: converted when ``log`` is called, packed into MEDIA records at commit.

``convert`` runs in ``log`` (the row's slow path, taken by any row holding something other than
plain values): it turns what W&B converts by itself into media or plain values -- a DataFrame
into a ``Table``, a figure into an ``Image``, an array into a list or a 32-bin histogram, an int
beyond 64 bits into a float -- and names the key of anything wrong.

``MediaPacker.pack_row`` runs when the row is committed: each media object becomes one MEDIA
record pushed into the ring just before the row, and ``{"_rs_media": id}`` stands in for it in
the row (docs/media.md, "How media travels").  A payload too large for the ring (or from a
file) is staged in ``<run dir>/media-staging/`` and the record names it; the sidecar deletes it
once journaled.  Past ``media_spill_size`` bytes staged and not yet consumed, a media value is
dropped from its row, warned about once and counted in ``_runstream/dropped_media``.

Not safe for use from several threads: a ``MediaPacker`` belongs to its run's logging thread.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ormsgpack

from runstream.format import record as rec
from runstream.format.ring_layout import W_MEDIA_DROPPED, W_MEDIA_FREED, W_MEDIA_STAGED
from runstream.media.base import META_LEN, PLACEHOLDER, Media
from runstream.media.chart import CustomChart
from runstream.media.histogram import Histogram, array_value
from runstream.media.image import Image, _is_figure
from runstream.media.others import Plotly
from runstream.media.table import MAX_ROWS, Table

_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1
_PLAIN = (float, str, bool)  # with None and ints in range: packed as they are
LIST_TYPES = ("image", "video", "audio", "html", "object3D")
MAX_LIST_ITEMS = 108  # W&B's limit for a list of media in one value


def _is_tensor(v: Any) -> bool:
    return type(v).__module__.startswith(("torch", "jax", "tensorflow")) and hasattr(v, "shape")


def needs_convert(v: Any) -> bool:
    """Whether ``v`` is a value ``convert`` changes (the slow path asks before walking a row)."""
    t = type(v)
    if t in (int, float, str, bool) or v is None:
        return t is int and not _INT_MIN <= v <= _INT_MAX
    if isinstance(v, (Media, Histogram, CustomChart, np.ndarray)) or _is_tensor(v):
        return True
    if isinstance(v, (list, tuple)):
        return any(needs_convert(x) for x in v)
    if isinstance(v, dict):
        return any(needs_convert(x) for x in v.values())
    mod = t.__module__
    return mod.startswith(("pandas", "PIL.", "plotly", "matplotlib")) or _is_figure(v)


def convert_value(key: str, v: Any, where: str = "log") -> Any:
    """One value as ``log`` keeps it; raises ``TypeError``/``ValueError`` naming ``key``."""
    try:
        return _convert(v)
    except (TypeError, ValueError) as e:
        msg = str(e).removeprefix("runstream.")
        raise type(e)(f"runstream.{where}: the value for key {key!r}: {msg}") from None


def _convert(v: Any) -> Any:
    t = type(v)
    if t is int:
        return float(v) if not _INT_MIN <= v <= _INT_MAX else v
    if isinstance(v, (Media, CustomChart)):
        return v
    if isinstance(v, Histogram):
        return v.to_json()
    if isinstance(v, np.ndarray) or _is_tensor(v):
        return array_value(v)
    if isinstance(v, (list, tuple)):
        return [_convert(x) for x in v]
    if isinstance(v, dict):
        return {k: _convert(x) for k, x in v.items()}
    mod = t.__module__
    if mod.startswith("pandas") and hasattr(v, "itertuples") and hasattr(v, "columns"):
        return Table(dataframe=v)
    if mod.startswith("PIL."):
        return Image(v)
    if mod.startswith("plotly") or _is_figure(v):
        return Plotly.make_plot_media(v)
    return v


def row_default(obj: Any) -> Any:
    """msgpack fallback for a row's values: numpy/torch as ``log`` stores them, then
    ``record.item_default`` (scalars with ``.item()``)."""
    if isinstance(obj, np.ndarray) or _is_tensor(obj):
        return array_value(obj)
    if isinstance(obj, Histogram):
        return obj.to_json()
    return rec.item_default(obj)


_packb = ormsgpack.packb
_OPT = ormsgpack.OPT_NON_STR_KEYS


class MediaPacker:
    """Turns a committed row's media into MEDIA records (one run's; see the module docstring)."""

    def __init__(
        self,
        run_dir: Path,
        push: Callable[[int, int, float, list[Any]], None],
        words: Any,
        max_record: int,
        spill_limit: int,
        emit_config: Callable[[dict[str, Any]], None],
        ids: Any = None,
    ) -> None:
        self.staging = run_dir / "media-staging"
        self._push = push
        self._words = words
        # Payloads up to this size go through the ring; larger ones are staged on disk, so one
        # video cannot take the ring's room from the rows behind it.
        self.inline_max = max(4096, min(1 << 20, max_record // 4))
        self.spill_limit = spill_limit
        self._emit_config = emit_config
        # Where the next MEDIA id is kept: the run (``_media_next_id``), whose C ``log`` takes ids
        # from the same counter; or, alone (tests), this packer.
        self._ids = self if ids is None else ids
        if ids is None:
            self._media_next_id = 1
        self._pid = os.getpid()
        self._warned = False
        self.visualize: dict[str, Any] = {}

    # --- a committed row -------------------------------------------------------------------------
    def flat_row(self, data: dict[Any, Any], step: int, t: float) -> bytes | None:
        """``log``'s fast media path: when every key of ``data`` is a str and every value a
        plain scalar, a media object (not a table) or a list of them, push the MEDIA records and
        return the row's body; else None, with nothing pushed (the slow path takes the row)."""
        for k, v in data.items():
            tv = type(v)
            if type(k) is not str:
                return None
            if tv in _PLAIN or v is None or (tv is int and _INT_MIN <= v <= _INT_MAX):
                continue
            if isinstance(v, Media) and tv is not Table:
                continue
            if tv is list and v and all(isinstance(x, Media) and type(x) is not Table for x in v):
                continue
            return None
        out: dict[str, Any] = {}
        for k, v in data.items():
            value = self._value(k, v, step, t) if isinstance(v, (Media, list)) else v
            if value is not _DROPPED:
                out[k] = value
        return _packb(out, None, _OPT)

    def pack_row(self, row: dict[str, Any], step: int, t: float) -> bytes:
        """Push the MEDIA records of ``row``'s media and return the row's body (placeholders where
        the media were).  ``row`` is flat and already converted."""
        return _packb(self.place(row, step, t), row_default, _OPT)

    def place(self, row: dict[str, Any], step: int, t: float) -> dict[str, Any]:
        """``pack_row`` before packing: the MEDIA records pushed, the dict with placeholders (a
        summary update's ``set``, which the sidecar fills in as it does a row)."""
        out: dict[str, Any] = {}
        for k, v in row.items():
            if isinstance(v, CustomChart):
                tkey = v.table_key(k)
                placeholder = self._media(tkey, v.table, step, t)
                if placeholder is not None:
                    out[tkey] = placeholder
                self.visualize[k] = v.spec(tkey)
                self._emit_config({"_wandb": {"visualize": dict(self.visualize)}})
                continue
            value = self._value(k, v, step, t)
            if value is not _DROPPED:
                out[k] = value
        return out

    def _value(self, key: str, v: Any, step: int, t: float) -> Any:
        if isinstance(v, Media):
            p = self._media(key, v, step, t)
            return _DROPPED if p is None else p
        if isinstance(v, list) and v and any(isinstance(x, Media) for x in v):
            kinds = {type(x) for x in v}
            if len(kinds) == 1 and isinstance(v[0], Media) and _kind(v[0]) in LIST_TYPES:
                ids = [p[PLACEHOLDER] for x in v[:MAX_LIST_ITEMS] if (p := self._media(key, x, step, t))]
                if not ids:
                    return _DROPPED
                return self._record({"type": "list", "of": _kind(v[0]), "items": ids}, [], key, step, t)
            return [self._value(key, x, step, t) for x in v]
        return v

    def _media(self, key: str, m: Media, step: int, t: float) -> dict[str, int] | None:
        if isinstance(m, Table):
            return self._table(key, m, step, t)
        meta, parts = m._meta()
        return self._record(meta, parts, key, step, t)

    def _table(self, key: str, table: Table, step: int, t: float) -> dict[str, int] | None:
        rows = table.data
        cut = max(len(rows) - MAX_ROWS, 0)
        data = [
            [(self._media(key, c, step, t) if isinstance(c, Media) else c) for c in row]
            for row in rows[:MAX_ROWS]
        ]
        meta: dict[str, Any] = {"type": "table", "columns": table.columns, "log_mode": table.log_mode}
        if cut:
            meta["rows_cut"] = cut
        body = _packb(data, row_default, _OPT)
        return self._record(meta, [body], key, step, t)

    def _record(
        self, meta: dict[str, Any], parts: list[Any], key: str, step: int, t: float
    ) -> dict[str, int] | None:
        ids = self._ids
        mid = ids._media_next_id
        ids._media_next_id = mid + 1
        meta.update(id=mid, key=key, step=step)
        try:
            if "file" in meta:
                size = self._stage_file(meta, mid)
            else:
                size = sum(memoryview(p).nbytes for p in parts)
                if size > self.inline_max:
                    self._stage_parts(meta, parts, mid, size)
                    parts = []
        except _Dropped as why:
            self._drop(key, str(why))
            return None
        mb = _packb(meta, row_default, _OPT)
        # The body's parts go into the ring one after another: no joined copy of the pixels.
        self._push(rec.KIND_MEDIA, step, t, [META_LEN.pack(len(mb)), mb, *parts])
        return {PLACEHOLDER: mid}

    # --- the spill: payloads on disk -------------------------------------------------------------
    def _reserve(self, size: int) -> None:
        w = self._words
        waiting = int(w[W_MEDIA_STAGED]) - int(w[W_MEDIA_FREED])
        if waiting + size > self.spill_limit:
            raise _Dropped(
                f"{waiting} bytes of media wait for the sidecar and this one adds {size} "
                f"(media_spill_size is {self.spill_limit})"
            )

    def _staged_path(self, mid: int, ext: str) -> Path:
        self.staging.mkdir(exist_ok=True)
        return self.staging / f"{self._pid}-{mid}{ext}"

    def _stage_file(self, meta: dict[str, Any], mid: int) -> int:
        src = Path(meta.pop("file"))
        try:
            size = src.stat().st_size
            self._reserve(size)
            dest = self._staged_path(mid, meta.get("ext", ""))
            try:
                os.link(src, dest)  # instant, and the user may now delete or replace the file
            except OSError:
                shutil.copyfile(src, dest)
        except OSError as e:
            raise _Dropped(f"could not keep {src}: {e}") from None
        self._words[W_MEDIA_STAGED] = int(self._words[W_MEDIA_STAGED]) + size
        meta["staged"] = dest.name
        meta["staged_size"] = size
        return size

    def _stage_parts(self, meta: dict[str, Any], parts: list[Any], mid: int, size: int) -> None:
        self._reserve(size)
        dest = self._staged_path(mid, ".bin")
        try:
            with open(dest, "wb") as f:
                for p in parts:
                    f.write(p)
        except OSError as e:
            dest.unlink(missing_ok=True)
            raise _Dropped(f"could not stage {size} bytes in {self.staging}: {e}") from None
        self._words[W_MEDIA_STAGED] = int(self._words[W_MEDIA_STAGED]) + size
        meta["staged"] = dest.name
        meta["staged_size"] = size

    def _drop(self, key: str, why: str) -> None:
        self._words[W_MEDIA_DROPPED] = int(self._words[W_MEDIA_DROPPED]) + 1
        if not self._warned:
            self._warned = True
            print(
                f"runstream: warning: the media logged under {key!r} was dropped: {why}; further drops are "
                "counted in summary _runstream/dropped_media",
                file=sys.stderr,
            )


class _Dropped(Exception):
    pass


_DROPPED = object()


def _kind(m: Media) -> str:
    """The MEDIA record's ``type`` of ``m``: its W&B ``_type`` less ``-file`` (``image-file``...)."""
    return m._log_type.removesuffix("-file")
