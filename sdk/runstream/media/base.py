"""What every logged media object shares, and the MEDIA record that carries one to the sidecar.

A media object (``Image``, ``Video``, ``Table``...) holds what the user gave it -- an array, a
file, a string -- and nothing encoded: encoding (PNG, GIF, WAV, JSON) happens in the sidecar
(docs/media.md).  When the row holding it is committed, ``runstream.media.pack`` turns each
object into one MEDIA record pushed just before the row, and leaves ``{"_rs_media": id}`` in the
row in its place; the sidecar encodes the payload, files it under ``files/media/...`` and puts
W&B's pointer dict in the row instead.

The MEDIA record's body, as the SDK writes it (docs/media.md, "The MEDIA record")::

    body    := meta_len:u32 meta payload
    meta    := msgpack map: {"id", "type", "key", "step", ...the type's fields}
    payload := the raw bytes the meta describes (pixels, samples...), or nothing when the meta
               names a staged file ("staged") instead

Objects are plain values: safe to build on any thread, logged from the run's thread.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

META_LEN = struct.Struct("<I")
PLACEHOLDER = "_rs_media"  # the row's stand-in for a media object, until the sidecar replaces it


class Media:
    """Base of the logged media types.  Subclasses set ``_log_type`` (W&B's ``_type`` of the
    pointer, e.g. ``"image-file"``) and implement ``_meta``."""

    _log_type = "file"
    # ``(static, npairs, payload, crc)`` when the object's MEDIA record body is fixed at
    # construction: ``static`` the msgpack of its meta's ``npairs`` key/value pairs (no map
    # header), ``payload`` its bytes, ``crc`` their CRC-32C register from 0 (or None).  ``log``'s C
    # fast path (sdk/runstream/_ringfast_media.h) then writes the record without calling
    # ``_meta``; the bytes must be what ``_meta`` gives.  None: the Python path.
    _rs_fast: tuple[bytes, int, Any, int | None] | None = None

    def _meta(self) -> tuple[dict[str, Any], list[Any]]:
        """(meta fields, payload parts): the parts are bytes-like objects sent after the meta, in
        order; the meta says how many bytes each holds where it matters."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<runstream.{type(self).__name__}>"


class FileSource:
    """A media object made from a file on disk: the file is staged (hard-linked, or copied) when
    the row is logged, so the user may delete or rewrite it right after ``log``."""

    def __init__(self, path: str | os.PathLike[str], what: str, exts: tuple[str, ...] | None = None) -> None:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"runstream.{what}: {str(path)!r} is not a file")
        ext = "".join(p.suffixes[-2:]) if p.name.endswith(".pts.json") else p.suffix
        if exts is not None and ext.lower() not in exts:
            raise ValueError(
                f"runstream.{what}: {p.name!r} has extension {ext or '(none)'}; "
                f"expected one of {', '.join(exts)}"
            )
        self.path = p.resolve()
        self.ext = ext.lower()


def array_meta(arr: np.ndarray[Any, Any]) -> dict[str, Any]:
    """The meta fields that let the sidecar rebuild ``arr`` from its bytes."""
    return {"shape": list(arr.shape), "dtype": arr.dtype.str}


def as_array(data: Any, what: str) -> np.ndarray[Any, Any]:
    """A C-contiguous numpy array from a numpy array, a torch tensor (detached, on the CPU) or a
    nested list; a clear error for anything else."""
    if type(data).__module__.startswith("torch"):
        data = data.detach().cpu().numpy()
    try:
        arr = np.ascontiguousarray(data)
    except Exception as e:
        raise TypeError(f"runstream.{what}: cannot read {type(data).__name__} as an array: {e}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"runstream.{what}: expected numbers, got an array of dtype {arr.dtype}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    return arr
