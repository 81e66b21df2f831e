"""The few fields of TensorBoard's ``Event`` protobuf that runstream reads, decoded by hand.

The schema is TensorFlow's public one (tensorflow/core/util/event.proto,
tensorflow/core/framework/summary.proto, tensor.proto, tensor_shape.proto); docs/tensorboard.md
lists the fields used.  A tiny wire-format reader instead of generated code keeps protobuf out of
the training process (``import runstream`` stays light) and tolerates unknown fields, as protobuf
does.  Everything here is pure: bytes in, dataclasses out; malformed input raises ``ValueError``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# TensorFlow DataType values (types.proto) that can hold numbers or strings read here: numpy's
# dtype string for tensor_content, and the *_val field that holds them otherwise.
DTYPES: dict[int, tuple[str, str]] = {
    1: ("<f4", "float_val"),  # DT_FLOAT
    2: ("<f8", "double_val"),  # DT_DOUBLE
    3: ("<i4", "int_val"),  # DT_INT32
    4: ("u1", "int_val"),  # DT_UINT8
    5: ("<i2", "int_val"),  # DT_INT16
    6: ("i1", "int_val"),  # DT_INT8
    7: ("", "string_val"),  # DT_STRING
    9: ("<i8", "int64_val"),  # DT_INT64
    10: ("?", "bool_val"),  # DT_BOOL
    17: ("<u2", "int_val"),  # DT_UINT16
    19: ("<f2", "half_val"),  # DT_HALF
    22: ("<u4", "uint32_val"),  # DT_UINT32
    23: ("<u8", "uint64_val"),  # DT_UINT64
}


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("protobuf: varint runs past the end")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("protobuf: varint longer than 10 bytes")


def fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, Any]]:
    """Each ``(field number, wire type, value)`` of a message: an int for varints, the raw 8 or 4
    bytes for fixed fields, a memoryview for length-delimited ones."""
    mv = memoryview(buf)
    pos = 0
    while pos < len(mv):
        key, pos = _varint(mv, pos)
        num, wt = key >> 3, key & 7
        value: Any
        if wt == _VARINT:
            value, pos = _varint(mv, pos)
        elif wt == _I64:
            value, pos = mv[pos : pos + 8], pos + 8
        elif wt == _LEN:
            n, pos = _varint(mv, pos)
            value, pos = mv[pos : pos + n], pos + n
        elif wt == _I32:
            value, pos = mv[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"protobuf: wire type {wt} (field {num}) is not supported")
        if pos > len(mv):
            raise ValueError(f"protobuf: field {num} runs past the end of its message")
        yield num, wt, value


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _repeated(wt: int, value: Any, fmt: str, size: int) -> list[Any]:
    """A repeated scalar field's values: packed (one length-delimited run) or one at a time."""
    if wt == _LEN:
        return list(struct.unpack(f"<{len(value) // size}{fmt}", value[: len(value) // size * size]))
    return list(struct.unpack(f"<{fmt}", value))


def _repeated_varint(wt: int, value: Any) -> list[int]:
    if wt != _LEN:
        return [int(value)]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


@dataclass
class Histo:
    """``HistogramProto``: ``bucket[i]`` values fell at or below ``bucket_limit[i]`` (and above
    the limit before it)."""

    min: float = 0.0
    max: float = 0.0
    num: float = 0.0
    bucket_limit: list[float] = field(default_factory=list)
    bucket: list[float] = field(default_factory=list)


@dataclass
class Tensor:
    """``TensorProto``: a dtype, a shape, and values either packed in ``content`` or listed in
    the field for the dtype (``vals``: that field's values)."""

    dtype: int = 0
    shape: list[int] = field(default_factory=list)
    content: bytes = b""
    vals: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class Value:
    """One ``Summary.Value``: a tag and one of a simple value, an image, a histogram or a tensor
    (``kind`` says which; ``"other"`` for audio and the obsolete kinds)."""

    tag: str = ""
    kind: str = ""
    plugin: str = ""  # metadata.plugin_data.plugin_name
    simple_value: float = 0.0
    image: bytes = b""  # Summary.Image.encoded_image_string
    histo: Histo | None = None
    tensor: Tensor | None = None


@dataclass
class Event:
    """An ``Event``: when, at which step, and its summary values (empty for the file-version
    event, graphs, session logs and the other kinds runstream does not read)."""

    wall_time: float = 0.0
    step: int = 0
    values: list[Value] = field(default_factory=list)
    other: str = ""  # the kind of a non-summary event ("file_version", "graph_def"...), if any


_EVENT_OTHER = {
    3: "file_version",
    4: "graph_def",
    6: "log_message",
    7: "session_log",
    8: "run_metadata",
    9: "meta_graph",
}


def parse_event(buf: bytes | memoryview) -> Event:
    """Decode one event record.  Raises ``ValueError`` when it is not a well-formed Event."""
    ev = Event()
    for num, wt, value in fields(buf):
        if num == 1 and wt == _I64:
            ev.wall_time = struct.unpack("<d", value)[0]
        elif num == 2 and wt == _VARINT:
            ev.step = _signed(value)
        elif num == 5 and wt == _LEN:
            ev.values.extend(_parse_summary(value))
        elif num in _EVENT_OTHER:
            ev.other = _EVENT_OTHER[num]
    return ev


def _parse_summary(buf: memoryview) -> Iterator[Value]:
    for num, wt, value in fields(buf):
        if num == 1 and wt == _LEN:
            yield _parse_value(value)


def _parse_value(buf: memoryview) -> Value:
    v = Value()
    for num, wt, value in fields(buf):
        if (num == 1 and wt == _LEN) or (num == 7 and wt == _LEN and not v.tag):
            v.tag = bytes(value).decode("utf-8", "replace")
        elif num == 2 and wt == _I32:
            v.kind, v.simple_value = "simple_value", struct.unpack("<f", value)[0]
        elif num == 4 and wt == _LEN:
            v.kind = "image"
            for n2, w2, x in fields(value):
                if n2 == 4 and w2 == _LEN:
                    v.image = bytes(x)
        elif num == 5 and wt == _LEN:
            v.kind, v.histo = "histo", _parse_histo(value)
        elif num == 8 and wt == _LEN:
            v.kind, v.tensor = "tensor", _parse_tensor(value)
        elif num in (3, 6):
            v.kind = "audio" if num == 6 else "other"
        elif num == 9 and wt == _LEN:
            for n2, w2, x in fields(value):
                if n2 == 1 and w2 == _LEN:  # plugin_data
                    for n3, w3, y in fields(x):
                        if n3 == 1 and w3 == _LEN:
                            v.plugin = bytes(y).decode("utf-8", "replace")
    return v


def _parse_histo(buf: memoryview) -> Histo:
    h = Histo()
    for num, wt, value in fields(buf):
        if num in (1, 2, 3) and wt == _I64:
            setattr(h, ("min", "max", "num")[num - 1], struct.unpack("<d", value)[0])
        elif num == 6:
            h.bucket_limit.extend(_repeated(wt, value, "d", 8))
        elif num == 7:
            h.bucket.extend(_repeated(wt, value, "d", 8))
    return h


# TensorProto field number -> (name, how to read one value).
_TENSOR_VALS = {
    5: ("float_val", "f"),
    6: ("double_val", "d"),
    7: ("int_val", "signed"),
    8: ("string_val", "bytes"),
    10: ("int64_val", "signed"),
    11: ("bool_val", "varint"),
    13: ("half_val", "varint"),
    16: ("uint32_val", "varint"),
    17: ("uint64_val", "varint"),
}


def _parse_tensor(buf: memoryview) -> Tensor:
    t = Tensor()
    for num, wt, value in fields(buf):
        if num == 1 and wt == _VARINT:
            t.dtype = value
        elif num == 2 and wt == _LEN:
            for n2, w2, dim in fields(value):
                if n2 == 2 and w2 == _LEN:
                    size = 0
                    for n3, w3, x in fields(dim):
                        if n3 == 1 and w3 == _VARINT:
                            size = _signed(x)
                    t.shape.append(size)
        elif num == 4 and wt == _LEN:
            t.content = bytes(value)
        elif num in _TENSOR_VALS:
            name, how = _TENSOR_VALS[num]
            out = t.vals.setdefault(name, [])
            if how == "bytes":
                out.append(bytes(value))
            elif how in ("f", "d"):
                out.extend(_repeated(wt, value, how, 4 if how == "f" else 8))
            elif how == "signed":  # int32 and int64 alike: negatives are 64-bit two's complement
                out.extend(_signed(v) for v in _repeated_varint(wt, value))
            else:
                out.extend(_repeated_varint(wt, value))
    return t
