"""``runstream.Image``: pixels (an array, a tensor, a PIL image, a figure) or an image file.

Nothing is encoded here: the pixels travel raw to the sidecar, which writes the PNG
(docs/media.md, "Image").  The constructor checks what it was given, so a wrong shape fails in
the line that made it, and copies the pixels, so the caller may reuse its buffer at once.
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
import ormsgpack

from runstream import ring as _ring
from runstream.media.base import FileSource, Media, array_meta, as_array


def _py_snapshot(data: np.ndarray[Any, Any]) -> tuple[bytes, tuple[int, ...], None] | None:
    """``_ringfast.snapshot_image`` without the C extension (and without the CRC)."""
    image_shape = data.ndim == 2 or (data.ndim == 3 and data.shape[2] in (3, 4))
    if data.dtype == np.uint8 and image_shape and data.size:
        return data.tobytes(), data.shape, None
    return None


_snapshot: Any = _py_snapshot
if _ring.NATIVE:
    from runstream import _ringfast

    _snapshot = _ringfast.snapshot_image
# (shape, caption, normalize) -> the packed fixed meta of a fast-path image; see _static_meta.
_STATIC: dict[tuple[Any, ...], tuple[bytes, int]] = {}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MODES = ("L", "LA", "RGB", "RGBA", "P", "I", "F", "1", "CMYK", "YCbCr", "I;16")


def _is_figure(obj: Any) -> bool:
    """A matplotlib figure or axes, or the ``pyplot`` module itself (W&B logs its current figure)."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__ == "matplotlib.pyplot"
    return type(obj).__module__.startswith("matplotlib")


def figure_pixels(fig: Any) -> np.ndarray[Any, Any]:
    """Rasterise a matplotlib figure (or the ``pyplot`` module: its current figure) to RGBA.

    The one piece of image work done in the training process: a figure is a live Python object
    that only matplotlib can draw.  The PNG is still written by the sidecar."""
    if getattr(fig, "__name__", "") == "matplotlib.pyplot":
        fig = fig.gcf()
    figure = getattr(fig, "figure", fig)  # an Axes or SubFigure: its figure
    canvas = getattr(figure, "canvas", None)
    if canvas is None or not hasattr(canvas, "draw"):
        raise TypeError(f"cannot draw a {type(fig).__name__}: not a matplotlib figure")
    if not hasattr(canvas, "buffer_rgba"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.array(canvas.buffer_rgba(), dtype=np.uint8, copy=True)


class Image(Media):
    """An image to log: ``run.log({"sample": runstream.Image(array, caption="...")})``.

    Args:
        data_or_path: A numpy array (``H x W``, ``H x W x C`` with C in 1, 3, 4; uint8 as it is,
            floats in [0, 1] or any range, rescaled as W&B does), a torch tensor (``C x H x W`` or
            ``H x W``, normalised to its min..max), a PIL image, a matplotlib figure or the
            ``pyplot`` module, or the path of a PNG, JPEG, BMP or GIF file.
        mode: A PIL mode for the pixels (``"L"``, ``"RGB"``, ``"RGBA"``...); guessed from the
            channels when ``None``.
        caption: Shown under the image.
        grouping: W&B's grouping number, kept in the pointer.
        classes: Accepted for W&B compatibility (class sets live in ``masks``/``boxes`` labels).
        boxes: ``{layer: {"box_data": [{"position": {...}, "class_id", "box_caption",
            "scores", "domain"}], "class_labels": {id: name}}}``, drawn over the image.
        masks: ``{layer: {"mask_data": 2-D int array, "class_labels": {id: name}}}`` or
            ``{layer: {"path": png}}``, drawn over the image.
        file_type: ``"png"`` (the default) or ``"jpg"`` for the file the sidecar writes.
        normalize: For tensors: rescale to 0..255 from the tensor's range (W&B's default).

    Raises:
        ValueError: A shape no image has, a file that does not exist or is not an image, a mask
            that is not 2-D or not the image's size, malformed boxes.
        TypeError: Data that is not an image at all.

    Building one copies the pixels (a few microseconds for 256x256x3); it never encodes.
    """

    _log_type = "image-file"

    def __init__(
        self,
        data_or_path: Any,
        mode: str | None = None,
        caption: str | None = None,
        grouping: int | None = None,
        classes: Any = None,
        boxes: Mapping[str, Any] | None = None,
        masks: Mapping[str, Any] | None = None,
        file_type: str | None = None,
        normalize: bool = True,
    ) -> None:
        data = data_or_path
        if (  # the common case, in a few lines: an 8-bit H x W [x 3|4] array and perhaps a caption
            type(data) is np.ndarray
            and mode is None
            and not (grouping or boxes or masks or file_type)
            and (snap := _snapshot(data)) is not None
        ):
            # A copy (the caller may refill its buffer right after ``log``), made and checked in C
            # with the CRC its MEDIA record needs: ``log`` then only copies it into the ring.
            payload, shape, crc = snap
            self.caption = None if caption is None else str(caption)
            self.grouping: int | None = None
            self._file: FileSource | None = None
            self._snap = (payload, shape)
            self._chw = False
            self._normalize = bool(normalize)
            self.mode = None
            self.format = "png"
            self.masks = self.boxes = {}
            self._rs_fast = (*self._static_meta(shape), payload, crc)
            return
        self.caption = None if caption is None else str(caption)
        self.grouping = grouping
        self._file = None
        self._pixels = None
        self._chw = False
        self._normalize = bool(normalize)
        if mode is not None and mode not in MODES:
            raise ValueError(f"runstream.Image: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        self.mode = mode
        if file_type not in (None, "png", "jpg", "jpeg", "bmp"):
            raise ValueError(f"runstream.Image: file_type must be png, jpg or bmp, not {file_type!r}")
        self.format = {"jpeg": "jpg"}.get(file_type or "png", file_type or "png")
        if isinstance(data, (str, os.PathLike)):
            self._file = FileSource(data, "Image", IMAGE_EXTS)
            self.format = self._file.ext.lstrip(".").replace("jpeg", "jpg")
        elif isinstance(data, Image):
            self._file, self._pixels, self._chw = data._file, data._pixels, data._chw
            self.mode = mode or data.mode
            self.format = data.format
        elif type(data).__module__.startswith("PIL."):
            if data.mode in ("P", "PA"):  # palette indices mean nothing without the palette
                data = data.convert("RGBA")
            self.mode = mode or data.mode
            self._pixels = np.array(data, copy=True)
        elif _is_figure(data):
            self._pixels = figure_pixels(data)
            self.mode = "RGBA"
        else:
            is_tensor = type(data).__module__.startswith("torch")
            # A copy: the caller may refill its buffer (or a CPU tensor it shares) right after ``log``.
            self._pixels = np.array(as_array(data, "Image"), copy=True)
            self._chw = is_tensor
            self._check_shape()
        self.masks = _check_masks(masks, self._size())
        self.boxes = _check_boxes(boxes)

    # The pixels: an array, or for the fast path's snapshot ``(bytes, shape)`` an array over
    # those bytes, made when first needed (the Python log path, masks, ``Image(image)``).
    _px: np.ndarray[Any, Any] | None = None
    _snap: tuple[bytes, tuple[int, ...]] | None = None

    @property
    def _pixels(self) -> np.ndarray[Any, Any] | None:
        px = self._px
        if px is None and self._snap is not None:
            payload, shape = self._snap
            px = self._px = np.frombuffer(payload, np.uint8).reshape(shape)
        return px

    @_pixels.setter
    def _pixels(self, value: np.ndarray[Any, Any] | None) -> None:
        self._px, self._snap = value, None

    def _static_meta(self, shape: tuple[int, ...]) -> tuple[bytes, int]:
        """The fast path's ``_rs_fast`` head: ``_meta``'s fields packed, without the map header
        (one per shape, caption and flag: a loop logs the same kind of image every step)."""
        key = (shape, self.caption, self._normalize)
        got = _STATIC.get(key)
        if got is None:
            meta = self._meta()[0]
            packed = ormsgpack.packb(meta)
            assert len(meta) < 16 and packed[0] == 0x80 | len(meta)  # a fixmap: a one-byte header
            if len(_STATIC) >= 64:
                _STATIC.clear()
            got = _STATIC[key] = (packed[1:], len(meta))
        return got

    def _check_shape(self) -> None:
        arr = self._pixels
        assert arr is not None
        while arr.ndim > 3 and arr.shape[0] == 1:  # a batch of one
            arr = arr[0]
        if arr.ndim == 3 and self._chw and arr.shape[0] in (1, 3, 4):
            pass
        elif arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
            self._chw = False
        elif not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
            raise ValueError(
                f"runstream.Image: an array of shape {tuple(arr.shape)} is not an image; expected "
                "H x W, H x W x C with C in 1, 3, 4 (or C x H x W for a tensor)"
            )
        if 0 in arr.shape:
            raise ValueError(f"runstream.Image: an array of shape {tuple(arr.shape)} has no pixels")
        self._pixels = np.ascontiguousarray(arr)

    def _size(self) -> tuple[int, int] | None:
        """(height, width) when known here (files are measured by the sidecar)."""
        arr = self._pixels
        if arr is None:
            return None
        if self._chw and arr.ndim == 3:
            return int(arr.shape[1]), int(arr.shape[2])
        return int(arr.shape[0]), int(arr.shape[1])

    def _meta(self) -> tuple[dict[str, Any], list[Any]]:
        meta: dict[str, Any] = {"type": "image", "format": self.format}
        if self.caption is not None:
            meta["caption"] = self.caption
        if self.grouping is not None:
            meta["grouping"] = self.grouping
        if self.mode is not None:
            meta["mode"] = self.mode
        parts: list[Any] = []
        if self._file is not None:
            meta["file"] = str(self._file.path)
            meta["ext"] = self._file.ext
        else:
            assert self._pixels is not None
            meta.update(array_meta(self._pixels), chw=self._chw, normalize=self._normalize)
            parts.append(self._pixels.data.cast("B"))
        if self.masks:
            mmeta: dict[str, Any] = {}
            for layer, m in self.masks.items():
                entry: dict[str, Any] = {"class_labels": m.get("class_labels")}
                if "path" in m:
                    entry["file"] = m["path"]
                else:
                    arr = m["mask_data"]
                    entry.update(array_meta(arr), nbytes=arr.nbytes)
                    parts.append(arr.data.cast("B"))
                mmeta[layer] = entry
            meta["masks"] = mmeta
        if self.boxes:
            meta["boxes"] = self.boxes
        return meta, parts


def _check_masks(masks: Mapping[str, Any] | None, size: tuple[int, int] | None) -> dict[str, Any]:
    if not masks:
        return {}
    if not isinstance(masks, Mapping):
        raise TypeError(f"runstream.Image: masks must be a dict of layer -> mask, not {type(masks).__name__}")
    out: dict[str, Any] = {}
    for layer, m in masks.items():
        if not isinstance(m, Mapping) or not ("mask_data" in m or "path" in m):
            raise ValueError(f"runstream.Image: mask {layer!r} needs a 'mask_data' array or a 'path'")
        labels = m.get("class_labels")
        if labels is not None:
            if not isinstance(labels, Mapping):
                raise TypeError(f"runstream.Image: mask {layer!r}: class_labels must be a dict of int -> str")
            labels = {int(k): str(v) for k, v in labels.items()}
        if "path" in m:
            src = FileSource(m["path"], f"Image mask {layer!r}", (".png",))
            out[str(layer)] = {"path": str(src.path), "class_labels": labels}
            continue
        arr = as_array(m["mask_data"], f"Image mask {layer!r}")
        if arr.ndim != 2:
            raise ValueError(f"runstream.Image: mask {layer!r} must be 2-D, not of shape {tuple(arr.shape)}")
        if size is not None and tuple(arr.shape) != size:
            raise ValueError(
                f"runstream.Image: mask {layer!r} has shape {tuple(arr.shape)}; "
                f"the image is {size[0]} x {size[1]}"
            )
        arr = np.array(
            arr, dtype=np.uint8 if arr.max(initial=0) < 256 and arr.min(initial=0) >= 0 else arr.dtype
        )
        if labels is None:
            labels = {int(c): f"class_{int(c)}" for c in np.unique(arr)}
        out[str(layer)] = {"mask_data": np.ascontiguousarray(arr), "class_labels": labels}
    return out


_POSITIONS = ({"middle", "width", "height"}, {"minX", "maxX", "minY", "maxY"})


def _check_boxes(boxes: Mapping[str, Any] | None) -> dict[str, Any]:
    if not boxes:
        return {}
    if not isinstance(boxes, Mapping):
        raise TypeError(
            f"runstream.Image: boxes must be a dict of layer -> boxes, not {type(boxes).__name__}"
        )
    out: dict[str, Any] = {}
    for layer, b in boxes.items():
        if not isinstance(b, Mapping) or not isinstance(b.get("box_data"), (list, tuple)):
            raise ValueError(f"runstream.Image: boxes {layer!r} need a 'box_data' list")
        data = []
        for i, box in enumerate(b["box_data"]):
            pos = box.get("position") if isinstance(box, Mapping) else None
            if not isinstance(pos, Mapping) or not any(p <= set(pos) for p in _POSITIONS):
                raise ValueError(
                    f"runstream.Image: box {i} of {layer!r} needs a position with middle, width, height "
                    "or with minX, maxX, minY, maxY"
                )
            entry = {
                k: v
                for k, v in box.items()
                if k in ("position", "class_id", "box_caption", "scores", "domain")
            }
            entry["position"] = {
                k: (list(map(float, v)) if k == "middle" else float(v)) for k, v in pos.items()
            }
            if "class_id" in entry:
                entry["class_id"] = int(entry["class_id"])
            if "scores" in entry:
                entry["scores"] = {str(k): float(v) for k, v in dict(entry["scores"]).items()}
            data.append(entry)
        labels = b.get("class_labels")
        labels = {str(int(k)): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else None
        out[str(layer)] = {"box_data": data, "class_labels": labels}
    return out
