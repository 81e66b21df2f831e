"""The record format (the unit of the ring and of a batch): encode, damage, decode."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runstream.format import record as rec

record_st = st.tuples(
    st.sampled_from([rec.KIND_RUN, rec.KIND_CONFIG, rec.KIND_ROW, rec.KIND_SUMMARY, rec.KIND_EXIT]),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.binary(max_size=300),
)


def build(items: list[tuple[int, int, float, bytes]]) -> tuple[bytes, list[rec.Record], list[int]]:
    parts, want, ends = [], [], []
    end = 0
    for seq, (kind, step, t, body) in enumerate(items, start=1):
        data = rec.encode(seq, kind, step, t, body)
        parts.append(data)
        end += len(data)
        ends.append(end)
        want.append(rec.Record(seq, kind, 0, step, t, body))
    return b"".join(parts), want, ends


@given(items=st.lists(record_st, max_size=30))
@settings(max_examples=200, deadline=None)
def test_batch_round_trips_every_record_in_order(items: list[tuple[int, int, float, bytes]]) -> None:
    data, want, _ = build(items)
    assert list(rec.iter_records(data)) == want
    assert all(len(rec.encode(1, k, s, t, b)) % rec.ALIGN == 0 for k, s, t, b in items)


@given(items=st.lists(record_st, min_size=1, max_size=30), data=st.data())
@settings(max_examples=300, deadline=None)
def test_decoder_stops_at_the_first_damaged_record_and_returns_the_prefix(
    items: list[tuple[int, int, float, bytes]], data: st.DataObject
) -> None:
    buf, want, ends = build(items)
    damaged = bytearray(buf)
    cut = data.draw(st.integers(0, len(buf)), label="cut")
    flips = data.draw(st.lists(st.integers(0, len(buf) - 1), max_size=3), label="flips")
    for f in flips:
        damaged[f] ^= data.draw(st.integers(1, 255), label="xor")
    damaged = damaged[:cut]
    first_bad = min([cut, *flips])
    got = list(rec.iter_records(bytes(damaged)))
    intact = [w for w, e in zip(want, ends, strict=True) if e <= first_bad]
    # every record wholly before the first damage is returned; nothing returned was not written
    assert got[: len(intact)] == intact
    assert got == want[: len(got)]


def test_empty_and_tiny_buffers_decode_to_nothing() -> None:
    assert list(rec.iter_records(b"")) == []
    assert list(rec.iter_records(b"\x00" * 39)) == []
    assert list(rec.iter_records(b"\x00" * 64)) == []  # zero bytes are not a valid record


body_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(row=st.dictionaries(st.text(max_size=12), body_values, max_size=12))
@settings(max_examples=300, deadline=None)
def test_the_hot_path_packer_writes_the_same_bytes_as_msgpack(row: dict[str, object]) -> None:
    """``log`` packs with ormsgpack for speed; readers decode with msgpack: the bytes must agree."""
    import msgpack
    import ormsgpack

    want = msgpack.Packer(default=rec.item_default, use_bin_type=True).pack(row)
    assert ormsgpack.packb(row, rec.item_default, ormsgpack.OPT_NON_STR_KEYS) == want
