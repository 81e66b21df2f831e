"""Images for ``encode``: pixels to PNG/JPEG/BMP with W&B's value rules, image files measured and
kept, masks written as PNGs and boxes as JSON (docs/media.md).

Pure functions: any thread.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import orjson
from PIL import Image

from runstream.format.fold import json_safe
from runstream_ingest.sidecar.media.encode import MediaError, _Sink, array, exact, file_ext, put, source

# zlib level for PNGs.  Measured on this machine (Pillow 13), per image:
#   256x256x3 random:        level 1: 197 KB, 6.9 ms   level 6 (Pillow's default): 197 KB, 7.0 ms
#   256x256x3 blurred noise: level 1:  91 KB, 5.0 ms   level 4:  76 KB, 10 ms   level 6: 77 KB, 32 ms
#   256x256x3 gradient:      level 1: 1.4 KB, 1.1 ms   level 6: 0.9 KB, 1.4 ms
#   400x300 RGBA plot:       level 1:  18 KB, 2.6 ms   level 6:  16 KB, 4.0 ms   level 9: 15 KB, 18 ms
# Level 1 costs at most ~20% in size and is up to 6x faster: the sidecar must keep up with training.
PNG_LEVEL = 1

_BANDS = {
    "1": 1,
    "L": 1,
    "P": 1,
    "I": 1,
    "F": 1,
    "I;16": 1,
    "LA": 2,
    "RGB": 3,
    "YCbCr": 3,
    "RGBA": 4,
    "CMYK": 4,
}
_NATURAL = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
# Pillow's encoder name and the modes it writes, per format.
_SAVE = {
    "png": ("PNG", {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}),
    "jpg": ("JPEG", {"L", "RGB", "CMYK"}),
    "bmp": ("BMP", {"1", "L", "P", "RGB", "RGBA"}),
}


def encode_image(meta: dict[str, Any], payload: memoryview, out: _Sink) -> dict[str, Any]:
    """An image record: its file, its masks' and boxes' files; W&B's ``image-file`` pointer."""
    masks_meta, boxes_meta = meta.get("masks") or {}, meta.get("boxes") or {}
    if not isinstance(masks_meta, dict) or not isinstance(boxes_meta, dict):
        raise MediaError("image: masks and boxes must be maps of layer -> layer")
    img: Image.Image | None = None
    if "ext" in meta:  # a file: its bytes kept as they are, its size read from its header
        ext = file_ext(meta)
        data = bytes(source(meta, payload, out))
        width, height = measure(data, "image file")
        fmt = ext.lstrip(".").replace("jpeg", "jpg")
        rest, used = memoryview(payload).cast("B"), 0  # array masks travel in the record itself
    else:
        fmt = str(meta.get("format") or "png").lower().replace("jpeg", "jpg")
        if fmt not in _SAVE:
            raise MediaError(f"image: unknown format {fmt!r}; expected png, jpg or bmp")
        ext = "." + fmt
        rest = source(meta, payload, out)
        pixels = array(meta, rest, "image")
        used = pixels.nbytes
        img = to_pil(pixels, meta, fmt)
        width, height = img.size
    # Everything is read and checked before the first file is written: a bad record leaves none.
    masks = []
    for layer, m in masks_meta.items():
        png, used = _mask(str(layer), m, rest, used, (height, width))
        masks.append((str(layer), png, m.get("class_labels")))
    exact(rest, used, "image (pixels and masks)")
    boxes = [(str(layer), *_boxes(str(layer), b)) for layer, b in boxes_meta.items()]
    if img is not None:
        data = save(img, fmt)

    ptr = put(out, meta, "media/images", data, ext, "image-file")
    ptr.update(format=fmt, width=width, height=height)
    if meta.get("grouping") is not None:
        ptr["grouping"] = meta["grouping"]
    where = {"key": meta.get("key"), "step": meta.get("step")}  # no caption on masks and boxes
    if masks:
        ptr["masks"] = {}
        for layer, png, labels in masks:
            mp = put(out, where, "media/images/mask", png, ".mask.png", "mask")
            if isinstance(labels, dict):  # runstream extra: the dashboard names classes without the config
                mp["class_labels"] = {str(k): str(v) for k, v in labels.items()}
            ptr["masks"][layer] = mp
    if boxes:
        ptr["boxes"] = {}
        for layer, body, box_data, labels in boxes:
            bp = put(out, where, "media/metadata/boxes2D", body, ".boxes2D.json", "boxes2D")
            bp["box_data"] = box_data  # runstream extras: the dashboard draws them without a second fetch
            if labels is not None:
                bp["class_labels"] = labels
            ptr["boxes"][layer] = bp
    return ptr


def measure(data: bytes, what: str) -> tuple[int, int]:
    """(width, height) of an image file, from its header only."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception as e:
        raise MediaError(f"{what}: not an image Pillow can read: {e}") from None


def to_pil(arr: np.ndarray[Any, Any], meta: dict[str, Any], fmt: str) -> Image.Image:
    """The pixels as a PIL image, values mapped to 0..255 as W&B maps them."""
    mode = meta.get("mode")
    if mode is not None and mode not in _BANDS:
        raise MediaError(f"image: unknown mode {mode!r}")
    if arr.size == 0:
        raise MediaError(f"image: pixels of shape {list(arr.shape)} hold no pixel")
    if meta.get("chw"):  # a torch tensor: C x H x W (or H x W)
        if arr.ndim == 3:
            arr = arr.transpose(1, 2, 0)
        arr = _tensor_uint8(arr, bool(meta.get("normalize", True)))
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (2, 3, 4))) or 0 in arr.shape:
        raise MediaError(
            f"image: pixels of shape {list(arr.shape)}; expected H x W or H x W x C with C in 1, 3, 4"
        )
    channels = 1 if arr.ndim == 2 else int(arr.shape[-1])
    mode = mode or _NATURAL[channels]
    if _BANDS[mode] != channels:
        raise MediaError(f"image: mode {mode!r} has {_BANDS[mode]} channels; the pixels have {channels}")
    if mode == "1":  # a PIL 1-bit image arrives as bools
        return Image.fromarray(np.ascontiguousarray(arr != 0))
    if mode in ("I", "I;16") and arr.dtype.kind in "iu" and fmt == "png":
        # A 16-bit image (depth maps...): kept 16-bit, as W&B keeps a PIL image, not clipped to 255
        return Image.fromarray(np.ascontiguousarray(np.clip(arr, 0, 65535).astype(np.uint16)))
    u8 = np.ascontiguousarray(arr if arr.dtype == np.uint8 else to_uint8(arr))
    if mode in ("CMYK", "YCbCr"):
        return Image.frombytes(mode, (u8.shape[1], u8.shape[0]), u8.tobytes())
    # "P" and "F" arrive without their palette / as floats: shown as gray levels
    return Image.fromarray(u8)


def to_uint8(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """W&B's ``Image.to_uint8`` for arrays that are not uint8: a range below 0 is shifted to 0..1,
    a range within 0..1 scaled to 0..255 (truncating, as W&B's int32 cast), then clipped."""
    x: np.ndarray[Any, Any] = arr.astype(np.float64)
    x[~np.isfinite(x)] = 0.0  # NaN would make the whole image undefined
    lo = x.min()
    if lo < 0:
        span = np.ptp(x)
        x = (x - lo) / span if span > 0 else np.zeros_like(x)
    if x.max() <= 1.0:
        x = np.trunc(x * 255)
    u8: np.ndarray[Any, Any] = np.clip(x, 0, 255).astype(np.uint8)
    return u8


def _tensor_uint8(arr: np.ndarray[Any, Any], normalize: bool) -> np.ndarray[Any, Any]:
    """W&B's tensor rule: torchvision ``make_grid(normalize=True)`` maps min..max to 0..1
    (``max(max - min, 1e-5)`` as the divisor), then ``mul(255).clamp(0, 255).byte()``."""
    if not normalize and arr.dtype == np.uint8:
        return arr
    x: np.ndarray[Any, Any] = arr.astype(np.float64)
    x[~np.isfinite(x)] = 0.0
    if normalize:
        lo, hi = x.min(), x.max()
        x = (x - lo) / max(hi - lo, 1e-5)
    u8: np.ndarray[Any, Any] = np.clip(np.trunc(x * 255), 0, 255).astype(np.uint8)
    return u8


_PNG_COLOR = {"L": 0, "LA": 4, "RGB": 2, "RGBA": 6}  # mode -> PNG colour type (8 bits a channel)


def png_bytes(arr: np.ndarray[Any, Any], level: int = PNG_LEVEL) -> bytes:
    """An 8-bit grey, grey+alpha, RGB or RGBA array (H x W or H x W x C) as a PNG file.

    Written here rather than by Pillow for speed: every row gets the "Up" filter (one numpy
    subtraction) where Pillow tries five filters per row.  2-3x faster at zlib level 1 (3.8 ms
    instead of 7.2 ms for 256 x 256 x 3 random pixels), for files at most ~13% larger.  zlib
    releases the GIL, so the media pool's threads encode side by side.
    """
    assert arr.dtype == np.uint8 and arr.ndim in (2, 3), "8-bit pixels, H x W [x C]"
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    rows = np.ascontiguousarray(arr).reshape(h, w * c)
    scan = np.empty((h, w * c + 1), np.uint8)  # each scanline: filter type byte, then the row
    scan[0, 0] = 0  # "None": the first row has nothing above it
    scan[0, 1:] = rows[0]
    scan[1:, 0] = 2  # "Up": the byte minus the byte above, mod 256
    np.subtract(rows[1:], rows[:-1], out=scan[1:, 1:], dtype=np.uint8)
    color = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    header = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return b"".join(
        [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header), _chunk(b"IDAT", zlib.compress(scan.data, level)),
         _chunk(b"IEND", b"")]
    )  # fmt: skip


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def save(img: Image.Image, fmt: str) -> bytes:
    """The image encoded; converted first where the format cannot hold its mode."""
    if fmt == "png" and img.mode in _PNG_COLOR:
        return png_bytes(np.asarray(img))
    name, modes = _SAVE[fmt]
    if img.mode not in modes:
        bands = img.getbands()
        alpha = "A" in bands and "RGBA" in modes
        img = img.convert("RGBA" if alpha else "L" if len(bands) <= 2 else "RGB")
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, name, compress_level=PNG_LEVEL)
    else:
        img.save(buf, name)
    return buf.getvalue()


def _mask(layer: str, m: Any, buf: memoryview, offset: int, size: tuple[int, int]) -> tuple[bytes, int]:
    """A mask's PNG bytes, and the payload offset after it."""
    if not isinstance(m, dict):
        raise MediaError(f"image: mask {layer!r} is not a map")
    if "file" in m:  # the user's PNG, kept as it is
        try:
            with open(str(m["file"]), "rb") as f:
                png = f.read()
        except OSError as e:
            raise MediaError(f"image: mask {layer!r}: cannot read {m['file']!r}: {e}") from None
        w, h = measure(png, f"image: mask {layer!r}")
        if (h, w) != size:
            raise MediaError(f"image: mask {layer!r} is {h} x {w}; the image is {size[0]} x {size[1]}")
        return png, offset
    arr = array(m, buf, f"image: mask {layer!r}", offset)
    if m.get("nbytes", arr.nbytes) != arr.nbytes:
        raise MediaError(
            f"image: mask {layer!r}: nbytes {m.get('nbytes')} but shape and dtype give {arr.nbytes}"
        )
    if arr.shape != size:
        raise MediaError(
            f"image: mask {layer!r} has shape {list(arr.shape)}; the image is {size[0]} x {size[1]}"
        )
    out = io.BytesIO()
    with np.errstate(invalid="ignore", over="ignore"):
        out.write(png_bytes(np.ascontiguousarray(arr.astype(np.uint8))))
    return out.getvalue(), offset + arr.nbytes


def _boxes(layer: str, b: Any) -> tuple[bytes, list[Any], dict[str, Any] | None]:
    """A box layer's JSON file (W&B's: the layer's dict), its boxes and its labels."""
    if not isinstance(b, dict) or not isinstance(b.get("box_data"), list):
        raise MediaError(f"image: boxes {layer!r} need a 'box_data' list")
    labels = b.get("class_labels")
    if labels is not None and not isinstance(labels, dict):
        raise MediaError(f"image: boxes {layer!r}: class_labels must be a map")
    layer_dict: dict[str, Any] = {"box_data": b["box_data"]}
    if labels is not None:
        labels = {str(k): v for k, v in labels.items()}
        layer_dict["class_labels"] = labels
    return orjson.dumps(json_safe(layer_dict)), b["box_data"], labels
