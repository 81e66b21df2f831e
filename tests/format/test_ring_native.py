"""The C fast path (runstream._ringfast) against the pure-Python one: same bytes, same errors.

The native writer and ``Run.log`` must be indistinguishable from the pure-Python ones except in
speed: identical rings and control words for any sequence of pushes, wraps, full rings and reads;
the same exceptions for bad arguments; msgpack bodies byte-identical to msgpack's; and CRC-32C
equal to the ``crc32c`` package's on every input and alignment.
"""

from __future__ import annotations

import json
import os
import platform
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import crc32c as crc32c_pkg
import msgpack
import numpy as np
import ormsgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from runstream import ring
from runstream.format import record as rec
from runstream.format.ring_layout import MIN_CAPACITY, W_DROPPED, RingMap
from runstream.ring import PyRingWriter
from runstream_ingest.sidecar.ring_reader import RingReader
from tests.format.test_ring import body_of, ring_file

# Where gcc and the Python headers are (CI, developers' Linux machines) the extension must build;
# a broken build must fail here rather than silently fall back to the slow path.
EXPECT_NATIVE = sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")

if os.environ.get("RUNSTREAM_PURE_PYTHON", "") not in ("", "0"):
    pytest.skip("RUNSTREAM_PURE_PYTHON is set: the C path is off", allow_module_level=True)
if ring.NativeRingWriter is None:
    if EXPECT_NATIVE:
        pytest.fail(
            "runstream._ringfast did not build or import on this platform (run `make install`)",
            pytrace=False,
        )
    pytest.skip(
        "no C extension on this platform: the pure-Python path is all there is", allow_module_level=True
    )

from runstream import _ringfast  # noqa: E402  (only once we know it imports)

NativeRingWriter = ring.NativeRingWriter


def test_native_is_the_default_writer_and_run_base() -> None:
    from runstream.run import Run

    assert ring.NATIVE and ring.RingWriter is NativeRingWriter
    assert issubclass(Run, _ringfast.RunCore)
    assert _ringfast.CRC32C_IMPL in ("sse4.2", "armv8-crc", "table")


PROBE = (
    "import runstream.ring as r; from runstream.run import Run; "
    "print(r.NATIVE, r.RingWriter.__name__, Run.__mro__[1].__name__)"
)


def test_pure_python_env_forces_the_python_writer_and_log() -> None:
    env = {**os.environ, "RUNSTREAM_PURE_PYTHON": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "PyRingWriter", "_RunBase"]
    assert out.stderr == ""  # the fallback is silent


# --- CRC-32C ---------------------------------------------------------------------------------


@given(data=st.binary(max_size=600), offset=st.integers(0, 7), start=st.integers(0, 2**32 - 1))
@settings(max_examples=400, deadline=None)
def test_crc32c_matches_the_crc32c_package_at_any_alignment_and_start(
    data: bytes, offset: int, start: int
) -> None:
    view = memoryview(bytearray(8) + data)[8 - offset :]  # the same bytes at every alignment
    want = crc32c_pkg.crc32c(data, start)
    assert _ringfast.crc32c(data, start) == want
    assert _ringfast.crc32c_table(view[offset:], start) == want
    assert _ringfast.crc32c(view[offset:], start) == want
    assert _ringfast.crc32c(data) == crc32c_pkg.crc32c(data)


@given(
    size=st.integers(4096 - 8, 3 * 70_000),
    offset=st.integers(0, 7),
    start=st.integers(0, 2**32 - 1),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_crc32c_of_a_large_payload_three_lanes_joined_matches_one_chain(
    size: int, offset: int, start: int, seed: int
) -> None:
    # From 4 KiB the hardware CRC runs three lanes and joins them (an image payload); a wrong join
    # would fail every media record's check in the sidecar.
    data = random.Random(seed).randbytes(size)
    view = memoryview(bytearray(8) + data)[8 - offset :]
    want = crc32c_pkg.crc32c(data, start)
    assert _ringfast.crc32c(view[offset:], start) == want
    assert _ringfast.crc32c_table(data, start) == want


# --- msgpack of simple rows ------------------------------------------------------------------

scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["x" * 31, "x" * 32, "x" * 255, "x" * 256, "é" * 200, "y" * 65536])
)
edge_ints = st.sampled_from(
    [
        *(0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1),
        *(-1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63)),
    ]
)


@given(row=st.dictionaries(st.text(max_size=40), scalar | edge_ints, max_size=40))
@settings(max_examples=400, deadline=None)
def test_c_packer_writes_msgpacks_bytes_for_rows_of_scalars(row: dict[str, Any]) -> None:
    want = msgpack.Packer(default=rec.item_default, use_bin_type=True).pack(row)
    assert _ringfast.pack_row(row) == want
    assert ormsgpack.packb(row, rec.item_default, ormsgpack.OPT_NON_STR_KEYS) == want


def test_c_packer_handles_map16_sizes() -> None:
    for n in (15, 16, 1000, 65536):
        row = {f"k{i}": i * 0.5 for i in range(n)}
        assert _ringfast.pack_row(row) == msgpack.packb(row, use_bin_type=True)


class MyFloat(float):
    pass


@pytest.mark.parametrize(
    "row",
    [
        {"a": {"b": 1}},  # nested: flattened downstream, packed by ormsgpack
        {"a": [1, 2]},
        {"a": np.float32(0.5)},
        {"a": MyFloat(1.0)},  # subclasses go through ormsgpack's own rules
        {"a": 2**64},  # too large: ormsgpack raises, log names the key
        {"a": -(2**63) - 1},
        {1: 2.0},
        {"\ud800": 1.0},  # not encodable as UTF-8
        {"a": "\udfff"},
        {"a": object()},
    ],
)
def test_c_packer_declines_rows_it_does_not_handle(row: dict[Any, Any]) -> None:
    assert _ringfast.pack_row(row) is None


# --- the writer: native and pure Python side by side ------------------------------------------


class Pair:
    """Two rings written by the two writers, read by two real RingReaders."""

    def __init__(self, capacity: int, overflow: int) -> None:
        self.paths = [ring_file(), ring_file()]
        self.rings = [RingMap.create(p, capacity) for p in self.paths]
        self.writers: list[PyRingWriter] = [
            PyRingWriter(self.rings[0], overflow),
            NativeRingWriter(self.rings[1], overflow),
        ]
        self.readers = [RingReader(RingMap.attach(p)) for p in self.paths]

    def both(self, method: str, *args: Any) -> list[tuple[str, Any]]:
        """Call ``method`` on both writers; what each returned or raised."""
        out: list[tuple[str, Any]] = []
        for w in self.writers:
            try:
                out.append(("ok", getattr(w, method)(*args)))
            except Exception as e:
                out.append((type(e).__name__, str(e)))
        return out

    def read(self, budget: int, release: bool) -> list[list[tuple[Any, ...]]]:
        """What each reader reads; times as their bytes, so NaN compares equal to itself."""
        got = []
        for r in self.readers:
            recs = [x for span in r.poll(budget) for x in rec.iter_records(span.data)]
            if release:
                r.release()
            got.append([(*x[:4], struct.pack("<d", x.time), x.body) for x in recs])
        return got

    def close(self) -> None:
        for r in self.readers:
            r.ring.close()
        for m, p in zip(self.rings, self.paths, strict=True):
            m.close()
            p.unlink()


body_forms = st.sampled_from([bytes, bytearray, memoryview])


class NativeMatchesPython(RuleBasedStateMachine):
    """Any sequence of pushes (fast path, wraps, full ring, overflow, drops), reads and releases
    leaves the two rings byte-identical, control block included, and reads the same records."""

    @initialize(
        capacity=st.sampled_from([MIN_CAPACITY, MIN_CAPACITY + 8, 3 * MIN_CAPACITY // 2]),
        overflow=st.sampled_from([0, 4096, 1 << 20]),
    )
    def setup(self, capacity: int, overflow: int) -> None:
        self.pair = Pair(capacity, overflow)
        self.n = 0

    def teardown(self) -> None:
        if hasattr(self, "pair"):
            self.pair.close()

    @rule(
        size=st.one_of(st.integers(0, 64), st.integers(0, 9000), st.integers(20000, 33000)),
        kind=st.integers(1, 6),
        step=st.integers(-(2**63), 2**63 - 1),
        t=st.floats(),
        form=body_forms,
    )
    def push(self, size: int, kind: int, step: int, t: float, form: type) -> None:
        body = form(body_of(self.n, size))
        self.n += 1
        results = self.pair.both("push", kind, step, t, body)
        assert results[0] == results[1]  # both fine, or both RecordTooLargeError with one message

    @rule(
        sizes=st.lists(st.integers(0, 12000), min_size=0, max_size=10),
        kind=st.integers(1, 10),
        step=st.integers(-(2**63), 2**63 - 1),
    )
    def push_parts(self, sizes: list[int], kind: int, step: int) -> None:
        """A media record's parts: bytes, memoryviews and numpy buffers (the C path takes up to 8
        parts; more go to the Python path): the same bytes as the Python writer's."""
        parts: list[Any] = []
        for i, size in enumerate(sizes):
            body = body_of(self.n * 16 + i, size)
            parts.append([body, memoryview(body), np.frombuffer(body, np.uint8).data][i % 3])
        self.n += 1
        results = self.pair.both("push_parts", kind, step, 2.5, parts)
        assert results[0] == results[1]

    @precondition(lambda self: hasattr(self, "pair") and not self.pair.writers[0].overflow_bytes)
    @rule(
        args=st.sampled_from(
            [
                (256, 0, 0.0),  # kind out of a byte
                (-1, 0, 0.0),
                (3, 2**63, 0.0),  # step out of an i64
                (3, "1", 0.0),
                (3, 1.5, 0.0),
                (3, 0, "now"),
                (True, 0, 0.0),  # odd but accepted types take the slow path, same bytes
                (3, 0, 1),
                (3, np.int64(5), np.float64(2.5)),
            ]
        )
    )
    def push_odd_arguments(self, args: tuple[Any, Any, Any]) -> None:
        results = self.pair.both("push", *args, body_of(self.n, 10))
        self.n += 1
        assert results[0] == results[1]

    @rule(budget=st.integers(1, 200_000), release=st.booleans())
    def read(self, budget: int, release: bool) -> None:
        py, native = self.pair.read(budget, release)
        assert py == native

    @rule()
    def drain_overflow(self) -> None:
        results = self.pair.both("drain_overflow")
        assert results[0] == results[1]

    @precondition(lambda self: hasattr(self, "pair"))
    @invariant()
    def rings_are_byte_identical(self) -> None:
        a, b = self.pair.rings
        assert a.buf == b.buf
        wa, wb = self.pair.writers
        assert (wa._head, wa._tail, wa._seq, wa.overflow_bytes, wa.last_seq) == (
            wb._head,
            wb._tail,
            wb._seq,
            wb.overflow_bytes,
            wb.last_seq,
        )


NativeMatchesPython.TestCase.settings = settings(
    max_examples=80, stateful_step_count=50, deadline=None, suppress_health_check=list(HealthCheck)
)
test_native_writer_matches_python_writer = NativeMatchesPython.TestCase


def test_thousands_of_pushes_through_laps_and_a_full_ring_leave_identical_rings() -> None:
    """The state machine's runs are short; this one goes through a hundred laps."""
    pair = Pair(MIN_CAPACITY, 8192)
    try:
        for i in range(6000):
            size = (i * 7919) % 700 if i % 50 else 5000 + i % 3000
            assert pair.both("push", 1 + i % 6, i - 3000, i / 7, body_of(i, size)) == [("ok", None)] * 2
            if i % 40 == 0:
                py, native = pair.read(6000 + i % 9000, release=i % 3 != 0)
                assert py == native
            if i % 97 == 0:
                assert pair.rings[0].buf == pair.rings[1].buf
        assert pair.rings[0].words[W_DROPPED] > 0  # the overflow filled too
        assert pair.rings[0].buf == pair.rings[1].buf
    finally:
        pair.close()


def test_large_payloads_streamed_into_the_ring_at_every_alignment_match_the_python_writer() -> None:
    # From 64 KiB a part is written with streaming stores, 16-byte aligned from wherever it starts:
    # every start alignment, a tail of every length, through wraps, the same ring bytes.
    pair = Pair(1 << 20, 1 << 22)
    try:
        for i in range(40):
            meta = body_of(i, i % 23)
            payload = memoryview(body_of(1000 + i, 64 * 1024 + (i * 37) % 200))
            parts = [struct.pack("<I", len(meta)), meta, payload]
            assert pair.both("push_parts", 10, i, i / 3, parts) == [("ok", None)] * 2
            py, native = pair.read(1 << 20, release=True)
            assert py == native and len(py) == 1
            assert py[0][5] == b"".join(bytes(p) for p in parts)
        assert pair.rings[0].buf == pair.rings[1].buf
    finally:
        pair.close()


def test_native_records_read_back_intact_through_the_ring_reader() -> None:
    pair = Pair(MIN_CAPACITY, 1 << 20)
    try:
        w = pair.writers[1]
        sent = [(3, i - 5, 1700000000.0 + i / 3, body_of(i, (i * 977) % 3000)) for i in range(300)]
        got: list[tuple[Any, ...]] = []
        for i, (kind, step, t, body) in enumerate(sent):
            w.push(kind, step, t, body)
            if i % 7 == 0:
                got += pair.read(1 << 30, release=True)[1]
        while True:
            w.drain_overflow()
            more = pair.read(1 << 30, release=True)[1]
            got += more
            if not more and not w.overflow_bytes:
                break
        want = [(i + 1, k, 0, s, struct.pack("<d", t), b) for i, (k, s, t, b) in enumerate(sent)]
        assert got == want
        assert pair.rings[1].words[W_DROPPED] == 0
    finally:
        pair.close()


def test_push_on_a_closed_ring_raises_the_same_error_natively_and_in_python() -> None:
    pair = Pair(MIN_CAPACITY, 0)
    for r in pair.readers:
        r.ring.close()
    for m, p in zip(pair.rings, pair.paths, strict=True):
        m.close()  # a writer holds no buffer export: closing is not blocked by it
        p.unlink()
    results = pair.both("push", 3, 0, 0.0, b"x")
    assert results[0] == results[1] and results[0][0] != "ok"


# --- Run.log: the C path against the pure-Python one, end to end -------------------------------

LOG_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import runstream
    run = runstream.init(project="p", mode="offline", dir=sys.argv[1], settings={"silent": True})
    run.log({"loss": 0.5, "n": 3, "ok": True, "none": None, "phase": "train", "big": 2**64 - 1})
    run.log({"nested": {"a": 1.0}, "np": np.float32(0.25)})  # declined by the C packer
    run.log({"a": 1.0}, commit=False)
    run.log({"b": 2.0})
    run.log({"c": 3}, step=10)
    run.log({"d": -(2**63)})
    run.log({"e": 1.5})
    try:
        run.log({"bad": object()})
    except TypeError as e:
        print(json.dumps(str(e)))
    run.log({"huge": 2**64})  # past 64 bits: stored as a float, as W&B stores it
    run.finish()
    back = runstream.read_run(run.dir)
    clock = ("_timestamp", "_runtime")
    h = [{k: v for k, v in row.items() if k not in clock} for row in back.history]
    s = {k: v for k, v in back.summary.items() if k not in clock}
    print(json.dumps({"history": h, "summary": s}, sort_keys=True))
    """
)


@pytest.mark.slow
def test_log_writes_the_same_history_and_errors_natively_and_in_pure_python(tmp_path: Path) -> None:
    outs = []
    for pure in ("", "1"):
        env = {**os.environ, "RUNSTREAM_PURE_PYTHON": pure}
        d = tmp_path / f"pure{pure or 0}"
        d.mkdir()
        p = subprocess.run(
            [sys.executable, "-c", LOG_SCRIPT, str(d)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert p.returncode == 0, p.stderr
        outs.append(p.stdout.splitlines())
    native, pure_py = outs
    assert native == pure_py
    assert "'bad'" in json.loads(native[0])
    hist = json.loads(native[1])["history"]
    assert [r["_step"] for r in hist] == [0, 1, 2, 10, 11, 12]
    assert hist[-1]["huge"] == float(2**64)


MEDIA_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import runstream
    from runstream.format import record as rec
    from runstream.format.journal_read import read_journal
    from runstream.run import Run

    slow = []
    py_log = Run._log_py
    def counting(self, data, *a, **kw):
        slow.append(sorted(data))
        return py_log(self, data, *a, **kw)
    Run._log_py = counting

    rng = np.random.default_rng(7)
    img = rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)
    run = runstream.init(project="p", mode="offline", dir=sys.argv[1], settings={"silent": True})
    run.log({"img": runstream.Image(img), "loss": 0.5, "n": 3})       # the first: makes the packer
    run.log({"img": runstream.Image(img), "loss": 0.25, "ok": True})  # C fast path from here on
    same = runstream.Image(img[:, :, 0], caption="gray \u00e9")
    run.log({"a": same, "b": same, "c": runstream.Image(img, normalize=False), "phase": "x"})
    run.log({"list": [runstream.Image(img)], "x": 1.0})                # a list: the Python path
    run.log({"img": runstream.Image(img), "np": np.float32(1)})        # a numpy scalar: Python
    run.log({"img": runstream.Image(img), "big": 2**64})               # past 64 bits: Python
    run.log({"hist": runstream.Histogram([1, 2, 3]), "img": runstream.Image(img)})  # no _rs_fast
    run.log({"img": runstream.Image(img, caption="x" * 600)})          # a meta too large for C
    run.log({"img": runstream.Image(img)})
    run.finish()
    recs = [
        (r.kind, r.step, r.flags, r.body.hex())
        for r in read_journal(run.dir + "/journal").iter_records()
        if r.kind in (rec.KIND_ROW, rec.KIND_MEDIA)
    ]
    print(json.dumps({"slow": slow, "records": recs}))
    """
)


@pytest.mark.slow
def test_a_media_row_writes_the_same_records_through_the_c_fast_path_as_in_python(tmp_path: Path) -> None:
    outs = []
    for pure in ("", "1"):
        d = tmp_path / f"pure{pure or 0}"
        d.mkdir()
        p = subprocess.run(
            [sys.executable, "-c", MEDIA_SCRIPT, str(d)],
            env={**os.environ, "RUNSTREAM_PURE_PYTHON": pure},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert p.returncode == 0, p.stderr
        outs.append(json.loads(p.stdout))
    native, pure_py = outs
    # Byte for byte the same MEDIA and ROW records (ids, placeholders, meta order, flags).
    assert native["records"] == pure_py["records"]
    kinds = [k for k, *_ in native["records"]]
    assert kinds.count(rec.KIND_ROW) == 9 and kinds.count(rec.KIND_MEDIA) == 12
    # The C path took every row it can take; the Python path, the first (no packer yet) and the
    # rows it must (a list, a numpy scalar, an int past 64 bits, a histogram, a long caption).
    assert native["slow"] == [
        ["img", "loss", "n"],
        ["list", "x"],
        ["img", "np"],
        ["big", "img"],
        ["hist", "img"],
        ["img"],
    ]


@given(
    shape=st.sampled_from([(5, 7), (64, 64, 3), (3, 2000, 4), (40, 41, 3)]),
    view=st.sampled_from(["plain", "channel", "flipped", "strided"]),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_an_image_snapshot_is_a_c_order_copy_whose_crc_is_the_bytes_crc(
    shape: tuple[int, ...], view: str, seed: int
) -> None:
    # log joins this CRC into the MEDIA record's instead of reading the pixels again: a wrong one
    # would make the sidecar refuse every image.
    arr = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    if view == "channel":  # BGR -> RGB by a negative stride, or a transposed gray image
        arr = arr[:, :, ::-1] if arr.ndim == 3 else arr.T
    elif view == "flipped":
        arr = arr[::-1]
    elif view == "strided":
        arr = arr[::2, ::3]
    got = _ringfast.snapshot_image(arr)
    assert got is not None
    payload, got_shape, crc = got
    assert payload == arr.tobytes() and got_shape == arr.shape
    # The register from 0, not inverted: in the crc32c package's terms, start 0xffffffff, then ~.
    assert crc == ~crc32c_pkg.crc32c(payload, 0xFFFFFFFF) & 0xFFFFFFFF


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((4, 4), np.int8),
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
        np.zeros((4,), np.uint8),
        np.zeros((4, 4), np.bool_),
        np.zeros((2, 4, 4, 3), np.uint8),
    ],
)
def test_an_image_snapshot_declines_what_the_python_path_must_check(arr: Any) -> None:
    assert _ringfast.snapshot_image(arr) is None
    assert _ringfast.snapshot_image(b"not an image") is None
