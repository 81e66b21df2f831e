"""The record: the unit the SDK writes into the ring and the sidecar packs into batches.

One byte format serves both places (see ``docs/ring-format.md`` for the grammar and a worked
example), so the sidecar moves records from the ring into a batch by copying spans, never by
re-encoding them.  All integers are little-endian::

    record  := header body pad
    header  := len:u32 crc:u32 seq:u64 kind:u8 flags:u8 reserved:6 step:i64 time:f64   (40 bytes)
    body    := msgpack bytes, ``len`` of them
    pad     := zero to seven bytes so the next record starts 8-aligned (not covered by crc)

``crc`` is CRC-32C over bytes ``[8, 40 + len)``: everything after itself, so a record whose
bytes are not all visible yet (a torn or half-published record) never validates.  ``seq`` starts
at 1 and grows by exactly one per record written by one run writer, which makes gaps and
duplicates detectable downstream.

This module is pure functions and constants: safe to call from any thread or process.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, NamedTuple

import crc32c as _crc32c
import msgpack

# --- header layout (docs/ring-format.md, "Record") -------------------------------------------
HEADER = struct.Struct("<IIQBB6xqd")
HEADER_SIZE = HEADER.size  # 40
assert HEADER_SIZE == 40
CRC_START = 8  # the crc covers the record from this offset to the end of its body
ALIGN = 8

# --- kinds ----------------------------------------------------------------------------------
KIND_PAD = 0  # ring only: "the rest of the ring is padding, continue at offset 0"
KIND_RUN = 1  # run metadata (first record of a run; later ones update name/tags/notes)
KIND_CONFIG = 2  # config keys merged into the run's config
KIND_ROW = 3  # one committed history row; ``step`` in the header
KIND_SUMMARY = 4  # user-pinned summary keys: {"set": {...}, "del": [...]}
KIND_STATS = 5  # loss and back-pressure counters, latest value wins
KIND_EXIT = 6  # the run ended: {"exit_code": int, "state": str}
KIND_SYSTEM = 7  # a system-metrics sample: {"system/cpu": 12.5, ...} (the sidecar's companion writer)
KIND_CONSOLE = 8  # console output: {"stream": "stdout" | "stderr", "lines": [str, ...]}
KIND_FILE = 9  # a file kept with the run: {"path", "policy"}; once uploaded also {"sha256", "size"}
# A logged media object (docs/media.md): from the SDK its raw payload, which the sidecar encodes
# and replaces, before the journal, with {"id", "key", "pointer" | "error"}; the row after it holds
# {"_rs_media": id} where the media goes, which the sidecar replaces with the pointer.
KIND_MEDIA = 10
# A define_metric call: {"name", and the options given: "step_metric", "step_sync", "hidden",
# "summary": [op, ...], "goal", "overwrite"} (docs/ring-format.md, "METRIC"; format/metrics.py).
KIND_METRIC = 11
KIND_ALERT = 12  # runstream.alert: {"title", "text", "level", "wait_duration", "time", ...}

KIND_NAMES = {
    KIND_PAD: "pad",
    KIND_RUN: "run",
    KIND_CONFIG: "config",
    KIND_ROW: "row",
    KIND_SUMMARY: "summary",
    KIND_STATS: "stats",
    KIND_EXIT: "exit",
    KIND_SYSTEM: "system",
    KIND_CONSOLE: "console",
    KIND_FILE: "file",
    KIND_MEDIA: "media",
    KIND_METRIC: "metric",
    KIND_ALERT: "alert",
}

# The sidecar's own writer (system metrics, console, environment, files) is a second writer of the
# run: its writer id is the producer's plus this suffix, and it opens with resume "companion"
# (docs/protocol.md, "Companion writers").
COMPANION_WRITER_SUFFIX = ".companion"

# flags
FLAG_SIDECAR = 0x01  # written by the sidecar on the producer's behalf (e.g. the crash exit record)
FLAG_MEDIA_DONE = 0x02  # a MEDIA record the sidecar has encoded: its body is msgpack

crc32c = _crc32c.crc32c


def padded(n: int) -> int:
    """Size of a record with an ``n``-byte body, padding included."""
    return (HEADER_SIZE + n + ALIGN - 1) & ~(ALIGN - 1)


class Record(NamedTuple):
    seq: int
    kind: int
    flags: int
    step: int
    time: float
    body: bytes

    def value(self) -> Any:
        return unpack_body(self.body)


def encode(seq: int, kind: int, step: int, time: float, body: bytes, flags: int = 0) -> bytes:
    """One complete record, padding included (used off the hot path: tests, sidecar, tools)."""
    out = bytearray(padded(len(body)))
    HEADER.pack_into(out, 0, len(body), 0, seq, kind, flags, step, time)
    out[HEADER_SIZE : HEADER_SIZE + len(body)] = body
    struct.pack_into("<I", out, 4, crc32c(memoryview(out)[CRC_START : HEADER_SIZE + len(body)]))
    return bytes(out)


def iter_records(buf: bytes | memoryview) -> Iterator[Record]:
    """Decode a batch: a run of whole records.  Stops at the first record that does not validate.

    Batches are checksummed as a whole by their journal frame, so a bad record here means a bug
    upstream, not disk damage; stopping (rather than guessing a resync point) never returns a
    record that was not written.
    """
    mv = memoryview(buf)
    pos, end = 0, len(mv)
    while end - pos >= HEADER_SIZE:
        length, crc, seq, kind, flags, step, t = HEADER.unpack_from(mv, pos)
        stop = pos + HEADER_SIZE + length
        if stop > end or crc32c(mv[pos + CRC_START : stop]) != crc:
            return
        yield Record(seq, kind, flags, step, t, bytes(mv[pos + HEADER_SIZE : stop]))
        pos = padded(length) + pos


class BatchError(ValueError):
    """A batch that is not a gapless run of whole, valid records (says where and why)."""


def parse_batch(buf: bytes | memoryview, first_seq: int, last_seq: int) -> list[Record]:
    """Strictly decode a batch received from elsewhere: every byte must belong to a valid record
    and the seqs must run ``first_seq..last_seq`` without a gap."""
    mv = memoryview(buf)
    out: list[Record] = []
    pos, end = 0, len(mv)
    expect = first_seq
    while pos < end:
        if end - pos < HEADER_SIZE:
            raise BatchError(f"{end - pos} trailing bytes at offset {pos} are not a record")
        length, crc, seq, kind, flags, step, t = HEADER.unpack_from(mv, pos)
        stop = pos + HEADER_SIZE + length
        if stop > end:
            raise BatchError(
                f"record at offset {pos} claims {length} bytes; only {end - pos - HEADER_SIZE} remain"
            )
        if crc32c(mv[pos + CRC_START : stop]) != crc:
            raise BatchError(f"record at offset {pos} (seq {seq}) fails its CRC")
        if seq != expect:
            raise BatchError(f"record at offset {pos} has seq {seq}, expected {expect}")
        if kind == KIND_PAD:
            raise BatchError(f"record at offset {pos} is ring padding, which never belongs in a batch")
        out.append(Record(seq, kind, flags, step, t, bytes(mv[pos + HEADER_SIZE : stop])))
        expect += 1
        pos = padded(length) + pos
    if expect - 1 != last_seq or not out:
        raise BatchError(f"batch claims seqs {first_seq}..{last_seq} but holds {first_seq}..{expect - 1}")
    return out


def pack_body(obj: Any) -> bytes:
    """msgpack for metadata records (not the ``log`` hot path, which uses its own Packer)."""
    return msgpack.packb(obj, use_bin_type=True, default=item_default)  # type: ignore[no-any-return]


def unpack_body(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def item_default(obj: Any) -> Any:
    """msgpack fallback for values that are not plain Python: numpy scalars and 0-d arrays, torch
    scalar tensors, anything else with ``.item()``.  Raises TypeError for everything else; the
    caller turns that into a message naming the key."""
    item = getattr(obj, "item", None)
    if item is not None:
        try:
            return item()
        except (TypeError, ValueError):
            pass
    tolist = getattr(obj, "tolist", None)
    if tolist is not None and getattr(obj, "ndim", 2) == 1:
        return tolist()  # a 1-d numpy array: a list of numbers
    raise TypeError(type(obj).__name__)


# --- limits on what one value may be (docs/ring-format.md, "Limits") ---------------------------
# Dicts and lists inside one logged row, summary update or config value may nest at most this
# deep.  Everything downstream (the fold's flatten, the YAML writer of config.yaml, the server's
# flattening of configs) walks values recursively; a fixed, documented bound keeps them all far
# from Python's recursion limit, and it is what turns a value that contains itself into an error.
MAX_DEPTH = 64
_CONTAINERS = (dict, list, tuple)
# Key types that unpack to hashable keys and read back as str (``flatten``/the fold ``str`` them);
# a tuple key would unpack as a list, which no reader can use as a key.
_KEY_TYPES = (str, int, float)


def show_key(key: Any, most: int = 60) -> str:
    """A key (or key path) for an error message: its repr, cut to ``most`` characters, never
    raising (a user's ``__repr__`` may)."""
    try:
        text = repr(key)
    except Exception:
        text = f"<{type(key).__name__} whose repr failed>"
    return text if len(text) <= most else text[: most - 3] + "..."


def check_nesting(data: Any, where: str) -> None:
    """Raise ``ValueError`` when ``data`` nests dicts/lists more than ``MAX_DEPTH`` deep or contains
    itself, and ``TypeError`` for a dict key that is not a str (or a number, read back as str);
    each message names the key path.  The walk recurses at most ``MAX_DEPTH`` levels, so no input
    can raise ``RecursionError`` here.

    A flat dict of scalars with str keys costs one pass over its items: ``log``'s pure-Python path
    may call this for any row (the C fast path never does).
    """
    try:
        _walk(data, 0)
    except _Found as found:
        found.path.reverse()  # collected while unwinding: innermost first
        found.objs.reverse()
        raise found.error(where) from None


class _Found(Exception):
    """What ``_walk`` found, with the keys and containers from the top down to it (collected as
    the recursion unwinds, so the walk itself keeps no path)."""

    def __init__(self, key: Any = None) -> None:
        self.key = key  # the bad key; None for nesting too deep
        self.path: list[Any] = []
        self.objs: list[Any] = []

    def error(self, where: str) -> TypeError | ValueError:
        at = _path_text(self.path, where)
        if self.key is not None:
            return TypeError(
                f"runstream.{where}: the key {show_key(self.key)} at {at} is a "
                f"{type(self.key).__name__}; keys must be str"
            )
        ids = [id(o) for o in self.objs]
        for i, o in enumerate(ids):
            if o in ids[:i]:  # a container that is one of its own ancestors: a value containing itself
                first = ids.index(o)
                return ValueError(
                    f"runstream.{where}: the value at {_path_text(self.path[:i], where)} is the same "
                    f"object as the one at {_path_text(self.path[:first], where)}: it contains itself, "
                    "which cannot be logged"
                )
        return ValueError(
            f"runstream.{where}: the value at {at} is nested more than {MAX_DEPTH} dicts/lists deep; "
            f"at most {MAX_DEPTH} levels can be logged (flatten it, or log it as a string)"
        )


def _walk(value: Any, depth: int) -> None:
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return
    if depth >= MAX_DEPTH:
        found = _Found()
        found.objs.append(value)
        raise found
    is_dict = isinstance(value, dict)
    for k, v in items:
        if is_dict and type(k) is not str and not (isinstance(k, _KEY_TYPES) or k is None):
            found = _Found(k)
            found.objs.append(value)
            raise found
        if isinstance(v, _CONTAINERS):
            try:
                _walk(v, depth + 1)
            except _Found as f:
                f.path.append(k)
                f.objs.append(value)
                raise


def _path_text(keys: list[Any], where: str) -> str:
    if not keys:
        return f"the top level of the {where} data"
    parts = [str(k) if isinstance(k, (str, int)) else show_key(k) for k in keys]
    return show_key("/".join(parts), 120)


def nested_too_deep(value: Any, depth: int = 0) -> bool:
    """Whether dicts/lists/tuples inside ``value`` (a dict or list) nest deeper than ``MAX_DEPTH``:
    the depth half of ``check_nesting`` alone, for a row that packed (so its keys are str and it
    holds no cycle), at a fraction of the cost.  Exact types only, for speed; recursion stops at
    ``MAX_DEPTH``."""
    for v in value.values() if type(value) is dict else value:
        t = type(v)
        if (t is dict or t is list or t is tuple) and (
            depth + 1 >= MAX_DEPTH or nested_too_deep(v, depth + 1)
        ):
            return True
    return False
