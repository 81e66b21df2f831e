"""TensorBoard summary values into what ``run.log`` takes, the way W&B converts them.

* scalars (``simple_value``, or a float/int tensor of one value from the ``scalars`` plugin or
  none, as torch's ``new_style`` scalars and ``tf.summary.scalar`` write them): a number under
  the same tag;
* histograms (``HistogramProto`` from ``add_histogram``, or the ``histograms`` plugin's
  ``k x 3`` tensor of ``tf.summary.histogram``): a :class:`runstream.Histogram`;
* images (``Summary.Image`` from ``add_image``, or the ``images`` plugin's tensor of
  ``[width, height, png...]``): :class:`runstream.Image`, under the tag with ``/`` replaced by
  ``_`` as W&B does; tags ``name/0``, ``name/1``... become one list under ``name``;
* text (the ``text`` plugin's string tensor): the string;
* every value also sets ``global_step`` (``namespace/global_step`` in a namespace): the event's
  step, as in W&B.

Anything else (audio, graphs, PR curves, hparams...) is counted as skipped, by kind.

Concurrency contract: pure functions, called on the tailing thread or the import command's.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from runstream.tensorboard.event import DTYPES, Event, Histo, Tensor, Value

_NUMERIC_PLUGINS = ("", "scalars")


@dataclass
class Tally:
    """How many values of each kind were converted, and what was skipped and why."""

    imported: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def describe(self) -> str:
        done = ", ".join(f"{n} {k}" for k, n in sorted(self.imported.items())) or "nothing"
        skipped = ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items()))
        return done + (f"; skipped {skipped}" if skipped else "")


def key(tag: str, namespace: str) -> str:
    return f"{namespace}/{tag}" if namespace else tag


def image_key(tag: str, namespace: str) -> str:
    """W&B's history key for images: ``/`` and ``\\`` become ``_`` (the key names a file)."""
    return key(re.sub(r"[/\\]", "_", tag), namespace)


def event_values(event: Event, namespace: str, tally: Tally) -> dict[str, Any] | None:
    """The row ``event`` contributes, or None when it holds nothing to log.

    Args:
        event: A decoded event.
        namespace: Prefix for its keys ("" for none).
        tally: Counts what was converted and what was skipped.
    """
    if event.other:
        if event.other != "file_version":
            tally.skipped[event.other] += 1
        return None
    out: dict[str, Any] = {}
    for v in event.values:
        try:
            _convert(v, namespace, out, tally)
        except (ValueError, TypeError, OSError) as e:  # a value that makes no sense: skip it, counted
            tally.skipped[f"unreadable {v.kind or 'value'} ({type(e).__name__})"] += 1
    if not out:
        return None
    out[key("global_step", namespace)] = event.step
    return out


def _convert(v: Value, namespace: str, out: dict[str, Any], tally: Tally) -> None:
    if v.kind == "simple_value":
        out[key(v.tag, namespace)] = float(v.simple_value)
        tally.imported["scalars"] += 1
    elif v.kind == "histo" and v.histo is not None:
        hist = _histo(v.histo)
        if hist is None:
            tally.skipped["empty histograms"] += 1
            return
        out[key(v.tag, namespace)] = hist
        tally.imported["histograms"] += 1
    elif v.kind == "image":
        _add_images(out, v.tag, namespace, [v.image])
        tally.imported["images"] += 1
    elif v.kind == "tensor" and v.tensor is not None:
        _convert_tensor(v, v.tensor, namespace, out, tally)
    else:
        tally.skipped[v.kind or "empty values"] += 1


def _convert_tensor(v: Value, t: Tensor, namespace: str, out: dict[str, Any], tally: Tally) -> None:
    if v.plugin in _NUMERIC_PLUGINS and t.dtype != 7:
        arr = tensor_array(t)
        if arr.size != 1:
            tally.skipped[f"tensors of shape {list(arr.shape)}"] += 1
            return
        out[key(v.tag, namespace)] = arr.reshape(()).item()
        tally.imported["scalars"] += 1
    elif v.plugin == "histograms":
        hist = _tensor_histogram(tensor_array(t))
        if hist is None:
            tally.skipped["empty histograms"] += 1
            return
        out[key(v.tag, namespace)] = hist
        tally.imported["histograms"] += 1
    elif v.plugin == "images":
        encoded = t.vals.get("string_val", [])[2:]  # the first two are width and height
        if not encoded:
            tally.skipped["empty images"] += 1
            return
        _add_images(out, v.tag, namespace, encoded)
        tally.imported["images"] += len(encoded)
    elif v.plugin == "text":
        strings = t.vals.get("string_val", [])
        out[key(v.tag, namespace)] = "\n".join(s.decode("utf-8", "replace") for s in strings)
        tally.imported["text"] += 1
    else:
        tally.skipped[f"{v.plugin or 'string'} tensors"] += 1


def tensor_array(t: Tensor) -> Any:
    """A ``TensorProto``'s numbers as a numpy array of its shape (TensorFlow's rule: fewer listed
    values than elements repeat the last one).  Raises ``ValueError`` for strings and dtypes
    runstream does not read."""
    import numpy as np

    if t.dtype not in DTYPES or t.dtype == 7:
        raise ValueError(f"tensor dtype {t.dtype} is not a number type")
    np_dtype, vals_name = DTYPES[t.dtype]
    shape = tuple(max(d, 0) for d in t.shape)
    count = int(np.prod(shape)) if shape else 1
    if t.content:
        arr = np.frombuffer(t.content, dtype=np.dtype(np_dtype))
    else:
        vals = t.vals.get(vals_name, [])
        if t.dtype == 19:  # half_val holds the 16-bit patterns as ints
            arr = np.array(vals, dtype="<u2").view("<f2")
        else:
            arr = np.array(vals, dtype=np.dtype(np_dtype))
        if 0 < arr.size < count:
            arr = np.concatenate([arr, np.full(count - arr.size, arr[-1], dtype=arr.dtype)])
    if arr.size != count:
        raise ValueError(f"tensor of shape {list(shape)} holds {arr.size} values")
    return arr.reshape(shape).astype(np.float64 if arr.dtype.kind == "f" else arr.dtype)


def _histo(h: Histo) -> Any:
    """W&B's conversion of a ``HistogramProto``: the buckets' right limits, with the outer edges
    made as wide as their neighbours (TensorFlow's last limit is often DBL_MAX)."""
    from runstream.media import Histogram

    limits, counts = list(h.bucket_limit), list(h.bucket)
    if not counts or len(counts) != len(limits):
        return None
    if len(limits) >= 3:
        first = limits[0] - (limits[1] - limits[0])
        last = limits[-2] + (limits[-2] - limits[-3])
        edges = [first, *limits[:-1], last]
    elif len(limits) == 2:  # too few limits to take a width from: the recorded min and max do
        edges = [min(h.min, limits[0]), limits[0], max(h.max, limits[0])]
    else:
        edges = [h.min, max(h.max, h.min)]
    return Histogram(np_histogram=_rebin(counts, edges))


def _tensor_histogram(arr: Any) -> Any:
    """The ``histograms`` plugin's tensor: one ``[left, right, count]`` row per bucket."""
    from runstream.media import Histogram

    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        return None
    edges = [float(arr[0][0]), *(float(r[1]) for r in arr)]
    counts = [float(r[2]) for r in arr]
    return Histogram(np_histogram=_rebin(counts, edges))


def _rebin(counts: list[float], edges: list[float]) -> tuple[list[float], list[float]]:
    """At most ``MAX_BINS`` buckets (runstream's limit, W&B's too): neighbours are merged, where
    W&B drops such a histogram."""
    from runstream.media.histogram import MAX_BINS

    if len(counts) <= MAX_BINS:
        return counts, edges
    group = -(-len(counts) // MAX_BINS)
    merged = [sum(counts[i : i + group]) for i in range(0, len(counts), group)]
    return merged, [*edges[::group][: len(merged)], edges[-1]]


def _add_images(out: dict[str, Any], tag: str, namespace: str, encoded: list[bytes]) -> None:
    """Images under W&B's key; ``tag/<n>`` suffixes (one image of a batch each) join one list."""
    images = [_image(b) for b in encoded]
    base, _, idx = tag.rpartition("/")
    if base and idx.isdigit():
        existing = out.setdefault(image_key(base, namespace), [])
        if isinstance(existing, list):
            existing.extend(images)
        return
    out[image_key(tag, namespace)] = images[0] if len(images) == 1 else images


def _image(encoded: bytes) -> Any:
    """A :class:`runstream.Image` from encoded bytes (PNG, JPEG...): decoded here, on the tailing
    thread, so that logging it only copies pixels."""
    from PIL import Image as PILImage

    from runstream.media import Image

    with PILImage.open(io.BytesIO(encoded)) as im:
        im.load()
        return Image(im)
