"""One MEDIA record's payload encoded into files, and W&B's pointer to them (docs/media.md).

``encode(meta, payload, out)`` turns what the SDK sent -- raw pixels, frames, samples, text,
points, table rows, or the name of a staged file -- into the file W&B would have written
(PNG/JPEG/BMP, GIF, WAV, HTML, JSON), hands its bytes to ``out.write`` (which names it
``files/<subdir>/<key>_<step>_<sha20><ext>``) and returns the pointer dict W&B puts in history
(``{"_type": "image-file", "path", "sha256", "size", ...}``).  Images live in ``encode_image``.

Bad data raises ``MediaError`` whose message says what was wrong; nothing else escapes for bad
data (exceptions from ``out`` itself pass through as they are).

Pure functions: any thread.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import tempfile
import wave
from collections.abc import Callable
from typing import Any, Protocol

import msgpack
import numpy as np
import orjson

from runstream.format.fold import json_safe

PLACEHOLDER = "_rs_media"


class MediaError(Exception):
    """A MEDIA record whose data cannot be encoded; the message says why."""


class MediaOut(Protocol):
    """Where ``encode`` puts files, and what it may look up."""

    def write(self, subdir: str, key: str, step: int, data: bytes, ext: str) -> dict[str, Any]:
        """Writes ``files/<subdir>/<key>_<step>_<sha256[:20]><ext>``; returns ``{"path":
        "media/...", "sha256": hex, "size": n}``."""
        ...

    def resolve(self, media_id: int) -> dict[str, Any] | None:
        """The pointer of an earlier MEDIA record (table cells, list items), or None if unknown."""
        ...

    def staged(self, name: str) -> bytes:
        """The bytes of a staged file (``meta["staged"]``); raises OSError if gone."""
        ...


class _OutFailed(Exception):
    """Carries an exception raised by ``out`` past the catch-all that wraps encoder bugs."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Sink:
    """``out`` with its own failures marked, so they are not mistaken for bad data."""

    def __init__(self, out: MediaOut) -> None:
        self._out = out

    def write(self, subdir: str, key: str, step: int, data: bytes, ext: str) -> dict[str, Any]:
        try:
            return self._out.write(subdir, key, step, data, ext)
        except Exception as e:
            raise _OutFailed(e) from e

    def resolve(self, media_id: int) -> dict[str, Any] | None:
        try:
            return self._out.resolve(media_id)
        except Exception as e:
            raise _OutFailed(e) from e

    def staged(self, name: str) -> bytes:
        try:
            return self._out.staged(name)
        except OSError as e:  # the spill file is gone: the data with it
            raise MediaError(f"the staged file {name!r} cannot be read: {e}") from None
        except Exception as e:
            raise _OutFailed(e) from e


def encode(meta: dict[str, Any], payload: memoryview, out: MediaOut) -> dict[str, Any]:
    """Encode one MEDIA record's payload into file(s) via ``out.write``; return W&B's pointer.

    Raises:
        MediaError: Bad data: a payload that does not match its meta, an unknown type, dtype or
            mode, an undecodable file.  The message says which.
    """
    kind = meta.get("type")
    fn: Callable[[dict[str, Any], memoryview, _Sink], dict[str, Any]]
    if kind == "image":
        # Imported here: encode_image uses this module's helpers.
        from runstream_ingest.sidecar.media.encode_image import encode_image

        fn = encode_image
    elif isinstance(kind, str) and kind in _ENCODERS:
        fn = _ENCODERS[kind]
    else:
        raise MediaError(f"unknown media type {kind!r}")
    try:
        return fn(meta, payload, _Sink(out))
    except MediaError:
        raise
    except _OutFailed as e:
        raise e.error from None
    except Exception as e:  # Pillow, numpy, msgpack on data they refuse: still bad data
        raise MediaError(f"{kind}: {type(e).__name__}: {e}") from e


# --- helpers shared with encode_image ------------------------------------------------------------
def source(meta: dict[str, Any], payload: memoryview, out: _Sink) -> memoryview:
    """The record's data: the staged file when the meta names one, else the payload."""
    if isinstance(meta.get("staged"), str):
        return memoryview(out.staged(meta["staged"]))
    mv = memoryview(payload)
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


def array(meta: dict[str, Any], buf: memoryview, what: str, offset: int = 0) -> np.ndarray[Any, Any]:
    """The array ``meta`` ("shape", "dtype") describes, read from ``buf`` at ``offset`` (no copy)."""
    try:
        dt = np.dtype(meta.get("dtype"))
    except (TypeError, ValueError):
        raise MediaError(f"{what}: unknown dtype {meta.get('dtype')!r}") from None
    if meta.get("dtype") is None or dt.kind not in "biuf" or dt.fields or dt.subdtype:
        raise MediaError(f"{what}: dtype {meta.get('dtype')!r} is not one of numbers")
    shape = meta.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise MediaError(f"{what}: bad shape {shape!r}")
    count = math.prod(shape)
    need = count * dt.itemsize
    have = buf.nbytes - offset
    if have < need:
        raise MediaError(f"{what}: shape {shape} of {dt.str} needs {need} bytes; the payload has {have}")
    return np.frombuffer(buf, dt, count, offset).reshape(shape)


def exact(buf: memoryview, used: int, what: str) -> None:
    """Bytes left over mean the meta does not describe the payload."""
    if buf.nbytes != used:
        raise MediaError(f"{what}: the payload has {buf.nbytes} bytes; the meta describes {used}")


def put(
    out: _Sink, meta: dict[str, Any], subdir: str, data: bytes, ext: str, log_type: str
) -> dict[str, Any]:
    """Write one file; its pointer ``{"_type", "path", "sha256", "size", "caption"?}``."""
    key, step = meta.get("key"), meta.get("step")
    if not isinstance(key, str) or type(step) is not int:
        raise MediaError(f"the record has no key/step (key {key!r}, step {step!r})")
    ptr = {"_type": log_type, **out.write(subdir, key, step, data, ext)}
    if meta.get("caption") is not None:
        ptr["caption"] = meta["caption"]
    return ptr


def file_ext(meta: dict[str, Any]) -> str:
    ext = meta.get("ext")
    if not isinstance(ext, str) or (ext and not ext.startswith(".")) or "/" in ext:
        raise MediaError(f"bad file extension {ext!r}")
    return ext.lower()


# --- video ---------------------------------------------------------------------------------------
_FFMPEG_CODECS = {"mp4": "libx264", "webm": "libvpx", "ogg": "libtheora"}


def _video(meta: dict[str, Any], payload: memoryview, out: _Sink) -> dict[str, Any]:
    if "ext" in meta:  # a file: kept as it is; a GIF's size is cheap to read, the others' not
        from runstream_ingest.sidecar.media.encode_image import measure

        ext = file_ext(meta)
        data = bytes(source(meta, payload, out))
        size = measure(data, "video file") if ext == ".gif" else None
        ptr = put(out, meta, "media/videos", data, ext, "video-file")
        if size is not None:
            ptr["width"], ptr["height"] = size
        return ptr
    buf = source(meta, payload, out)
    arr = array(meta, buf, "video")
    exact(buf, arr.nbytes, "video")
    if arr.ndim not in (4, 5) or arr.shape[-3] not in (1, 3, 4) or 0 in arr.shape:
        raise MediaError(
            f"video: frames of shape {list(arr.shape)}; expected time x channel x height x width "
            "(channel 1, 3 or 4) or batch x time x C x H x W"
        )
    if arr.dtype != np.uint8:
        with np.errstate(invalid="ignore", over="ignore"):
            arr = arr.astype(np.uint8)  # W&B casts, it does not rescale
    frames = _tile(arr)
    fps = meta.get("fps", 4)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < 1000:
        raise MediaError(f"video: bad fps {fps!r}")
    fmt = str(meta.get("format", "gif")).lower()
    if fmt == "gif":
        data = _gif(frames, float(fps))
    elif fmt in _FFMPEG_CODECS:
        frames = _even(frames)
        data = _ffmpeg(frames, float(fps), fmt)
    else:
        raise MediaError(f"video: unknown format {fmt!r}; expected gif, mp4, webm or ogg")
    ptr = put(out, meta, "media/videos", data, "." + fmt, "video-file")
    ptr["width"], ptr["height"] = int(frames.shape[2]), int(frames.shape[1])
    return ptr


def _tile(video: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """(B,)T,C,H,W -> T,H,W,C with the batch in a grid, padded to a power of two (W&B's
    ``Video._prepare_video``, from tensorboardX; its padding is uint8 here, not float)."""
    if video.ndim == 4:
        video = video[None]
    b, t, c, h, w = video.shape
    if b & (b - 1):
        pad = (1 << b.bit_length()) - b
        video = np.concatenate((video, np.zeros((pad, t, c, h, w), np.uint8)), axis=0)
    rows = 2 ** ((b.bit_length() - 1) // 2)
    cols = video.shape[0] // rows
    video = video.reshape(rows, cols, t, c, h, w).transpose(2, 0, 4, 1, 5, 3)
    return np.ascontiguousarray(video.reshape(t, rows * h, cols * w, c))


def _gif(frames: np.ndarray[Any, Any], fps: float) -> bytes:
    from PIL import Image

    images = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
    buf = io.BytesIO()
    # Pillow merges identical consecutive frames (adding their durations): the same playback.
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buf.getvalue()


def _even(frames: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """RGB frames with even sides: what yuv420p encoders accept, without ffmpeg rescaling them."""
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    frames = frames[..., :3]
    _, h, w, _ = frames.shape
    return np.ascontiguousarray(np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))))


def _ffmpeg(frames: np.ndarray[Any, Any], fps: float, fmt: str) -> bytes:
    try:
        ffmpeg: Any = importlib.import_module("imageio_ffmpeg")
    except ImportError:
        raise MediaError(
            f"video: format {fmt!r} needs the imageio-ffmpeg package where the sidecar runs "
            "(pip install imageio-ffmpeg), or log format='gif'"
        ) from None
    _, h, w, _ = frames.shape
    with tempfile.TemporaryDirectory(prefix="runstream-video-") as d:
        path = os.path.join(d, "video." + fmt)
        writer = ffmpeg.write_frames(
            path, (w, h), fps=fps, codec=_FFMPEG_CODECS[fmt], macro_block_size=1, pix_fmt_out="yuv420p"
        )
        writer.send(None)
        for f in frames:
            writer.send(f)
        writer.close()
        with open(path, "rb") as fh:
            return fh.read()


# --- audio ---------------------------------------------------------------------------------------
def _audio(meta: dict[str, Any], payload: memoryview, out: _Sink) -> dict[str, Any]:
    if "ext" in meta:  # a file: kept as it is; a WAV's rate and length are in its header
        ext = file_ext(meta)
        data = bytes(source(meta, payload, out))
        ptr = put(out, meta, "media/audio", data, ext, "audio-file")
        if ext == ".wav":
            try:
                with wave.open(io.BytesIO(data)) as w:
                    ptr["sample_rate"], ptr["duration"] = w.getframerate(), w.getnframes() / w.getframerate()
            except (wave.Error, EOFError, ZeroDivisionError):
                pass  # not PCM (or not a WAV) but kept: the browser may still play it
        return ptr
    rate = meta.get("sample_rate")
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise MediaError(f"audio: bad sample_rate {rate!r}")
    buf = source(meta, payload, out)
    arr = array(meta, buf, "audio")
    exact(buf, arr.nbytes, "audio")
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise MediaError(f"audio: samples of shape {list(arr.shape)}; expected N or N x channels")
    channels = 1 if arr.ndim == 1 else arr.shape[1]
    if channels > 64:  # a channels x N array passed the wrong way round
        raise MediaError(f"audio: {channels} channels (shape {list(arr.shape)}); expected samples x channels")
    pcm = _pcm16(arr)
    wav = io.BytesIO()
    with wave.open(wav, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    ptr = put(out, meta, "media/audio", wav.getvalue(), ".wav", "audio-file")
    ptr["sample_rate"], ptr["duration"] = rate, arr.shape[0] / rate
    return ptr


def _pcm16(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Samples as little-endian 16-bit PCM (what W&B's soundfile writes): floats are full scale at
    +-1, integers at their type's range (unsigned ones offset, as 8-bit WAV is)."""
    if arr.dtype.kind == "f":
        f: np.ndarray[Any, Any] = np.clip(np.nan_to_num(arr.astype(np.float64)), -1.0, 1.0)
        return np.round(f * 32767).astype("<i2")
    if arr.dtype.kind == "b":
        return arr.astype("<i2") * 32767
    x: np.ndarray[Any, Any] = arr.astype(np.int64)
    if arr.dtype.name in ("int8", "uint8", "int16", "uint16", "int32"):
        if arr.dtype.kind == "u":
            x -= 1 << (arr.dtype.itemsize * 8 - 1)
        shift = arr.dtype.itemsize * 8 - 16
        x = x >> shift if shift > 0 else x << -shift
    elif x.size and (x.min() < -32768 or x.max() > 32767):
        # 64-bit (or uint32) samples are usually small ints from a Python list; scale only if not
        f = x.astype(np.float64)
        x = np.round(f * (32767 / np.abs(f).max())).astype(np.int64)
    return x.astype("<i2")


# --- text and JSON -------------------------------------------------------------------------------
def _html(meta: dict[str, Any], payload: memoryview, out: _Sink) -> dict[str, Any]:
    try:
        text = bytes(source(meta, payload, out)).decode("utf-8")
    except UnicodeDecodeError as e:
        raise MediaError(f"html: not UTF-8 text: {e}") from None
    if meta.get("inject", True):
        text = inject_head(text)
    return put(out, meta, "media/html", text.encode("utf-8"), ".html", "html-file")


def inject_head(html: str) -> str:
    """W&B's ``Html.inject_head``: links open outside the dashboard's frame.  Without W&B's
    stylesheet link: the file must not fetch anything from the network."""
    base = '<base target="_blank">'
    if "<head>" in html:
        before, after = html.split("<head>", 1)
        return (before + "<head>" + base + after).strip()
    if "<html>" in html:
        before, after = html.split("<html>", 1)
        return (before + "<html><head>" + base + "</head>" + after).strip()
    return (base + html).strip()


def _object3d(meta: dict[str, Any], payload: memoryview, out: _Sink) -> dict[str, Any]:
    if "ext" in meta:
        data, ext = bytes(source(meta, payload, out)), file_ext(meta)
    elif "scene" in meta:
        if not isinstance(meta["scene"], dict):
            raise MediaError("object3D: the scene is not a map")
        data, ext = orjson.dumps(json_safe(meta["scene"])), ".pts.json"
    else:
        buf = source(meta, payload, out)
        arr = array(meta, buf, "object3D")
        exact(buf, arr.nbytes, "object3D")
        if arr.ndim != 2 or arr.shape[1] not in (3, 4, 6):
            raise MediaError(
                f"object3D: points of shape {list(arr.shape)}; expected N x 3 (xyz), N x 4 (xyz, "
                "category) or N x 6 (xyz, rgb)"
            )
        pts = arr.astype(np.float64)
        if not np.isfinite(pts).all():  # JSON has no NaN: the viewer would not load the file
            raise MediaError("object3D: the points contain NaN or infinity")
        data, ext = orjson.dumps(pts, option=orjson.OPT_SERIALIZE_NUMPY), ".pts.json"
    return put(out, meta, "media/object3D", data, ext, "object3D-file")


def _plotly(meta: dict[str, Any], payload: memoryview, out: _Sink) -> dict[str, Any]:
    data = bytes(source(meta, payload, out))
    try:
        json.loads(data)
    except ValueError as e:
        raise MediaError(f"plotly: the figure is not JSON: {e}") from None
    return put(out, meta, "media/plotly", data, ".plotly.json", "plotly-file")


def _molecule(meta: dict[str, Any], payload: memoryview, out: _Sink) -> dict[str, Any]:
    if "ext" not in meta or "staged" not in meta:
        raise MediaError("molecule: the record names no staged file")
    data = bytes(source(meta, payload, out))
    return put(out, meta, "media/molecule", data, file_ext(meta), "molecule-file")


def _table(meta: dict[str, Any], payload: memoryview, out: _Sink) -> dict[str, Any]:
    columns = meta.get("columns")
    if not isinstance(columns, list):
        raise MediaError(f"table: bad columns {columns!r}")
    try:
        rows = msgpack.unpackb(bytes(source(meta, payload, out)), raw=False, strict_map_key=False)
    except Exception as e:
        raise MediaError(f"table: the rows cannot be read: {type(e).__name__}: {e}") from None
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise MediaError("table: the rows are not a list of lists")
    for row in rows:
        for i, cell in enumerate(row):
            if isinstance(cell, dict) and len(cell) == 1 and PLACEHOLDER in cell:
                row[i] = out.resolve(cell[PLACEHOLDER])  # the media cell's pointer, as W&B's artifacts keep
    data = orjson.dumps(json_safe({"columns": columns, "data": rows}))
    ptr = put(out, meta, "media/table", data, ".table.json", "table-file")
    ptr.pop("caption", None)
    ptr.update(ncols=len(columns), nrows=len(rows), log_mode=meta.get("log_mode", "IMMUTABLE"))
    if "rows_cut" in meta:
        ptr["rows_cut"] = meta["rows_cut"]
    return ptr


# --- lists ---------------------------------------------------------------------------------------
def _list(meta: dict[str, Any], payload: memoryview, out: _Sink) -> dict[str, Any]:
    of, ids = meta.get("of"), meta.get("items")
    if of not in _LISTS:
        raise MediaError(f"list: unknown item type {of!r}")
    if not isinstance(ids, list):
        raise MediaError(f"list: bad items {ids!r}")
    want = f"{of}-file"
    items = []
    for i in ids:
        p = out.resolve(i) if isinstance(i, int) else None
        # Items that failed (an error pointer) or were lost are left out; the others still show.
        if p is not None and p.get("_type") == want and "path" in p:
            items.append(p)
    if not items:
        raise MediaError(f"list: none of the {len(ids)} {of} items could be found")
    return _LISTS[of](items)


def _images(items: list[dict[str, Any]]) -> dict[str, Any]:
    first = items[0]
    ptr: dict[str, Any] = {
        "_type": "images/separated",
        "width": first.get("width"),
        "height": first.get("height"),
        "format": first.get("format"),
        "count": len(items),
        "filenames": [p["path"] for p in items],
    }
    if first.get("caption") is not None:
        ptr["captions"] = [p.get("caption") for p in items]
    for field, name in (("masks", "all_masks"), ("boxes", "all_boxes")):
        groups = [p.get(field) for p in items]
        if any(g is not None for g in groups):
            ptr[name] = groups
    return ptr


def _videos(items: list[dict[str, Any]]) -> dict[str, Any]:
    captions: Any = [p.get("caption") for p in items] if items[0].get("caption") is not None else False
    return {"_type": "videos", "count": len(items), "videos": items, "captions": captions}


def _audios(items: list[dict[str, Any]]) -> dict[str, Any]:
    ptr: dict[str, Any] = {
        "_type": "audio",
        "count": len(items),
        "audio": items,
        "sampleRates": [p.get("sample_rate") for p in items],
        "durations": [p.get("duration") for p in items],
    }
    if any(p.get("caption") is not None for p in items):
        ptr["captions"] = [p.get("caption") or "" for p in items]
    return ptr


def _htmls(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"_type": "html", "count": len(items), "html": items}


def _objects(items: list[dict[str, Any]]) -> dict[str, Any]:
    names = [p["path"].removeprefix("media/object3D/") for p in items]  # W&B: relative to the folder
    return {"_type": "object3D", "count": len(items), "filenames": names, "objects": items}


_LISTS: dict[str, Callable[[list[dict[str, Any]]], dict[str, Any]]] = {
    "image": _images,
    "video": _videos,
    "audio": _audios,
    "html": _htmls,
    "object3D": _objects,
}

_ENCODERS: dict[str, Callable[[dict[str, Any], memoryview, _Sink], dict[str, Any]]] = {
    "video": _video,
    "audio": _audio,
    "html": _html,
    "object3D": _object3d,
    "plotly": _plotly,
    "molecule": _molecule,
    "table": _table,
    "list": _list,
}
