"""The other media types: ``Video``, ``Audio``, ``Html``, ``Object3D``, ``Plotly``, ``Molecule``.

As for ``Image``, each holds raw data (frames, samples, text, points) or a file, checked and
copied when made; the sidecar writes the file (docs/media.md).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from runstream.media.base import FileSource, Media, array_meta, as_array

VIDEO_EXTS = (".gif", ".mp4", ".webm", ".ogg")
AUDIO_EXTS = (".wav", ".mp3", ".flac", ".ogg")
OBJECT3D_EXTS = (".obj", ".gltf", ".glb", ".babylon", ".stl", ".pts.json")
MOLECULE_EXTS = (".pdb", ".pqr", ".mmcif", ".mcif", ".cif", ".sdf", ".sd", ".gro", ".mol2", ".mmtf")


def _is_path(data: Any) -> bool:
    return isinstance(data, (str, os.PathLike))


class _Captioned(Media):
    caption: str | None = None
    _file: FileSource | None = None

    def _base_meta(self, kind: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"type": kind}
        if self.caption is not None:
            meta["caption"] = self.caption
        if self._file is not None:
            meta["file"] = str(self._file.path)
            meta["ext"] = self._file.ext
        return meta


class Video(_Captioned):
    """A video to log: frames as an array, or a video file.

    Args:
        data_or_path: A ``time x channel x height x width`` array (or ``batch x time x C x H x
            W``, tiled into a grid), uint8 (other dtypes are cast, as W&B does), with 1, 3 or 4
            channels; a numpy array or tensor.  Or the path of a gif, mp4, webm or ogg file.
        caption: Shown with the video.
        fps: Frames per second for an array (4 by default).
        format: ``"gif"`` (the default) for an array; ``"mp4"``/``"webm"`` need the optional
            ``imageio-ffmpeg`` package where the sidecar runs.

    Raises:
        ValueError: An array of another shape, an unknown format, a missing file.
    """

    _log_type = "video-file"

    def __init__(
        self, data_or_path: Any, caption: str | None = None, fps: int | None = None, format: str | None = None
    ) -> None:
        self.caption = None if caption is None else str(caption)
        self.fps = 4 if fps is None else fps
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or self.fps <= 0:
            raise ValueError(f"runstream.Video: fps must be a positive number, not {fps!r}")
        fmt = (format or "gif").lower().lstrip(".")
        if "." + fmt not in VIDEO_EXTS:
            raise ValueError(f"runstream.Video: format must be one of gif, mp4, webm, ogg, not {format!r}")
        self.format = fmt
        self._frames: np.ndarray[Any, Any] | None = None
        if _is_path(data_or_path):
            self._file = FileSource(data_or_path, "Video", VIDEO_EXTS)
            self.format = self._file.ext.lstrip(".")
            return
        if fmt in ("mp4", "webm", "ogg"):
            import importlib.util

            if importlib.util.find_spec("imageio_ffmpeg") is None:
                raise ValueError(
                    f"runstream.Video: format={fmt!r} for frames needs the imageio-ffmpeg package; "
                    "install it, or log format='gif'"
                )
        arr = np.array(as_array(data_or_path, "Video"), copy=True)
        if arr.ndim not in (4, 5) or arr.shape[-3] not in (1, 3, 4) or 0 in arr.shape:
            raise ValueError(
                f"runstream.Video: an array of shape {tuple(arr.shape)} is not a video; expected "
                "time x channel x height x width (channel 1, 3 or 4), or batch x time x C x H x W"
            )
        self._frames = arr

    def _meta(self) -> tuple[dict[str, Any], list[Any]]:
        meta = self._base_meta("video")
        meta["format"] = self.format
        if self._frames is None:
            return meta, []
        meta.update(array_meta(self._frames), fps=float(self.fps))
        return meta, [self._frames.data.cast("B")]


class Audio(_Captioned):
    """Audio to log: samples with their rate, or an audio file.

    Args:
        data_or_path: A 1-D array of samples (or ``samples x channels``), floats in [-1, 1] or
            integers; or the path of a wav, mp3, flac or ogg file.
        sample_rate: Samples per second; required for an array.
        caption: Shown with the player.

    Raises:
        ValueError: An array without ``sample_rate``, of more than 2 dimensions, or empty.
    """

    _log_type = "audio-file"

    def __init__(self, data_or_path: Any, sample_rate: int | None = None, caption: str | None = None) -> None:
        self.caption = None if caption is None else str(caption)
        self.sample_rate = sample_rate
        self._samples: np.ndarray[Any, Any] | None = None
        if _is_path(data_or_path):
            self._file = FileSource(data_or_path, "Audio", AUDIO_EXTS)
            return
        if sample_rate is None:
            raise ValueError("runstream.Audio: sample_rate is required for raw audio data")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"runstream.Audio: sample_rate must be a positive int, not {sample_rate!r}")
        arr = np.array(as_array(data_or_path, "Audio"), copy=True)
        if arr.ndim not in (1, 2) or arr.size == 0:
            raise ValueError(
                f"runstream.Audio: samples of shape {tuple(arr.shape)}; "
                "expected a 1-D array (or samples x channels)"
            )
        self._samples = arr

    def duration(self) -> float | None:
        """Seconds of audio, for arrays."""
        if self._samples is None or not self.sample_rate:
            return None
        return len(self._samples) / self.sample_rate

    def _meta(self) -> tuple[dict[str, Any], list[Any]]:
        meta = self._base_meta("audio")
        if self._samples is None:
            return meta, []
        meta.update(array_meta(self._samples), sample_rate=self.sample_rate)
        return meta, [self._samples.data.cast("B")]


class Html(_Captioned):
    """HTML to log, shown in a sandboxed frame.

    Args:
        data: A string of HTML, a file-like object, or the path of an .html file.
        inject: Add ``<base target="_blank">`` to the head so links open outside the frame.
    """

    _log_type = "html-file"

    def __init__(self, data: Any, inject: bool = True, data_is_not_path: bool = False) -> None:
        self.inject = bool(inject)
        if hasattr(data, "read"):
            data = data.read()
        if isinstance(data, bytes):
            data = data.decode("utf-8", errors="replace")
        if _is_path(data) and not data_is_not_path and (not isinstance(data, str) or os.path.isfile(data)):
            FileSource(data, "Html", (".html", ".htm"))
            with open(data, encoding="utf-8", errors="replace") as f:
                data = f.read()
        if not isinstance(data, str):
            raise TypeError(
                f"runstream.Html: expected a str of HTML, a file or a path, not {type(data).__name__}"
            )
        self.html = data

    def _meta(self) -> tuple[dict[str, Any], list[Any]]:
        return {"type": "html", "inject": self.inject}, [self.html.encode("utf-8")]


class Object3D(_Captioned):
    """A 3-D object: a point cloud or a mesh file.

    Args:
        data_or_path: An ``N x 3`` (xyz), ``N x 4`` (xyz, category 1-14) or ``N x 6`` (xyz, rgb)
            array; a ``{"type": "lidar/beta", "points": ..., "boxes": ..., "vectors": ...}``
            scene; or an obj, gltf, glb, babylon, stl or pts.json file.
        caption: Shown with the viewer.

    Raises:
        ValueError: Another array shape, a scene of another type, an unsupported file.
    """

    _log_type = "object3D-file"

    def __init__(self, data_or_path: Any, caption: str | None = None, **kwargs: Any) -> None:
        self.caption = None if caption is None else str(caption)
        self._points: np.ndarray[Any, Any] | None = None
        self._scene: dict[str, Any] | None = None
        data = data_or_path
        if _is_path(data):
            self._file = FileSource(data, "Object3D", OBJECT3D_EXTS)
            return
        if isinstance(data, Mapping):
            if data.get("type") != "lidar/beta":
                raise ValueError(
                    f"runstream.Object3D: a scene must have type 'lidar/beta', not {data.get('type')!r}"
                )
            if "points" not in data:
                raise ValueError("runstream.Object3D: a scene needs 'points'")
            self._scene = {
                "type": "lidar/beta",
                "points": as_array(data["points"], "Object3D").astype(np.float64).tolist(),
                "boxes": _plain(data.get("boxes", [])),
                "vectors": _plain(data.get("vectors", [])),
            }
            return
        arr = as_array(data, "Object3D")
        if arr.ndim != 2 or arr.shape[1] not in (3, 4, 6):
            raise ValueError(
                f"runstream.Object3D: points of shape {tuple(arr.shape)}; expected N x 3 (xyz), "
                "N x 4 (xyz, category) or N x 6 (xyz, rgb)"
            )
        self._points = np.array(arr, dtype=np.float64, copy=True)

    @classmethod
    def from_point_cloud(
        cls, points: Any, boxes: Any, vectors: Any = None, point_cloud_type: str = "lidar/beta"
    ) -> Object3D:
        """A scene of points with 3-D boxes (``{"corners": 8 x [x, y, z], "label", "color"}``)."""
        return cls({"type": point_cloud_type, "points": points, "boxes": boxes, "vectors": vectors or []})

    def _meta(self) -> tuple[dict[str, Any], list[Any]]:
        meta = self._base_meta("object3D")
        if self._points is not None:
            meta.update(array_meta(self._points))
            return meta, [self._points.data.cast("B")]
        if self._scene is not None:
            meta["scene"] = self._scene
        return meta, []


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


class Plotly(Media):
    """A plotly figure, kept as its JSON and drawn by the dashboard.

    Args:
        val: A ``plotly.graph_objects.Figure`` (or anything with ``to_plotly_json``/``to_json``).
    """

    _log_type = "plotly-file"

    def __init__(self, val: Any) -> None:
        if hasattr(val, "to_json"):
            self.json = val.to_json()
        elif hasattr(val, "to_plotly_json"):
            import json

            self.json = json.dumps(_plain(val.to_plotly_json()))
        else:
            raise TypeError(f"runstream.Plotly: expected a plotly figure, not {type(val).__name__}")

    @classmethod
    def make_plot_media(cls, val: Any) -> Media:
        """A plotly figure as ``Plotly``; a matplotlib figure as an ``Image`` (runstream's choice:
        drawn as the user sees it, where W&B tries a lossy conversion to plotly)."""
        if type(val).__module__.startswith("plotly"):
            return cls(val)
        from runstream.media.image import Image

        return Image(val)

    def _meta(self) -> tuple[dict[str, Any], list[Any]]:
        return {"type": "plotly"}, [self.json.encode("utf-8")]


class Molecule(_Captioned):
    """A molecule file (pdb, pqr, mmcif, cif, sdf, gro, mol2, mmtf), kept with the run."""

    _log_type = "molecule-file"

    def __init__(self, data_or_path: Any, caption: str | None = None, **kwargs: Any) -> None:
        self.caption = None if caption is None else str(caption)
        if isinstance(data_or_path, io.IOBase) or not _is_path(data_or_path):
            raise TypeError("runstream.Molecule: give the path of a molecule file")
        self._file = FileSource(data_or_path, "Molecule", MOLECULE_EXTS)

    def _meta(self) -> tuple[dict[str, Any], list[Any]]:
        return self._base_meta("molecule"), []
