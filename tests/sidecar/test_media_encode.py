"""The sidecar's media encoder (docs/media.md): what the SDK sends becomes W&B's files and pointers.

Records are made by the SDK's own media classes where they can be (``_meta``), so the two sides of
the MEDIA record contract are tested together; the files are read back with Pillow, ``wave`` and
``json``, as a user (or the dashboard) reads them."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
import shutil
import wave
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import runstream
from runstream_ingest.sidecar.media.encode import MediaError, encode
from runstream_ingest.sidecar.media.encode_image import PNG_LEVEL


class FakeOut:
    """A ``MediaOut`` that writes real files under ``root/files`` as the sidecar names them."""

    def __init__(self, root: Path) -> None:
        self.files = root / "files"
        self.staging = root / "media-staging"
        self.staging.mkdir(parents=True, exist_ok=True)
        self.pointers: dict[int, dict[str, Any]] = {}
        self.written: list[str] = []

    def write(self, subdir: str, key: str, step: int, data: bytes, ext: str) -> dict[str, Any]:
        assert isinstance(data, bytes)
        sha = hashlib.sha256(data).hexdigest()
        rel = f"{subdir}/{key}_{step}_{sha[:20]}{ext}"
        path = self.files / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.written.append(rel)
        return {"path": rel, "sha256": sha, "size": len(data)}

    def resolve(self, media_id: int) -> dict[str, Any] | None:
        return self.pointers.get(media_id)

    def staged(self, name: str) -> bytes:
        return (self.staging / name).read_bytes()

    def read(self, ptr: dict[str, Any]) -> bytes:
        return (self.files / str(ptr["path"])).read_bytes()


@pytest.fixture
def out(tmp_path: Path) -> FakeOut:
    return FakeOut(tmp_path)


def run(out: FakeOut, meta: dict[str, Any], payload: bytes = b"") -> dict[str, Any]:
    meta = {"id": 1, "key": "k", "step": 3, **meta}
    return encode(meta, memoryview(payload), out)


def record(out: FakeOut, media: Any, mid: int = 1) -> tuple[dict[str, Any], bytes]:
    """The MEDIA record the SDK makes of ``media`` (its file staged as ``MediaPacker`` does)."""
    meta, parts = media._meta()
    meta.update(id=mid, key="k", step=3)
    if "file" in meta:
        src = Path(meta.pop("file"))
        name = f"1-{mid}{meta.get('ext', '')}"
        shutil.copyfile(src, out.staging / name)
        meta["staged"], meta["staged_size"] = name, src.stat().st_size
    return meta, b"".join(bytes(p) for p in parts)


def log(out: FakeOut, media: Any, mid: int = 1) -> dict[str, Any]:
    meta, payload = record(out, media, mid)
    ptr = encode(meta, memoryview(payload), out)
    out.pointers[mid] = ptr
    return ptr


def pixels(out: FakeOut, ptr: dict[str, Any]) -> Image.Image:
    img = Image.open(io.BytesIO(out.read(ptr)))
    img.load()
    return img


def check_file(out: FakeOut, ptr: dict[str, Any], subdir: str, ext: str) -> None:
    data = out.read(ptr)
    assert ptr["path"].startswith(subdir + "/k_3_") and ptr["path"].endswith(ext)
    assert ptr["sha256"] == hashlib.sha256(data).hexdigest() and ptr["size"] == len(data)
    assert ptr["sha256"][:20] in ptr["path"]


# --- images --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "mode"), [((6, 5), "L"), ((6, 5, 3), "RGB"), ((6, 5, 4), "RGBA")])
def test_uint8_pixels_round_trip_exactly_through_png(out: FakeOut, shape: tuple[int, ...], mode: str) -> None:
    arr = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    ptr = log(out, runstream.Image(arr, caption="epoch 3", grouping=2))
    img = pixels(out, ptr)
    assert img.format == "PNG" and img.mode == mode
    np.testing.assert_array_equal(np.asarray(img), arr)
    check_file(out, ptr, "media/images", ".png")
    assert {k: ptr[k] for k in ("_type", "format", "width", "height", "caption", "grouping")} == {
        "_type": "image-file",
        "format": "png",
        "width": 5,
        "height": 6,
        "caption": "epoch 3",
        "grouping": 2,
    }


def test_one_channel_is_gray(out: FakeOut) -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    img = pixels(out, log(out, runstream.Image(arr)))
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), arr[..., 0])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 127, 255]),  # [0, 1] floats scaled, truncated as W&B's int32 cast
        ([-1.0, 0.0, 1.0], [0, 127, 255]),  # a range below 0 shifted to 0..1 first
        ([0.0, 100.0, 300.0], [0, 100, 255]),  # 0..255 floats kept, clipped
        ([0, 1, 1], [0, 255, 255]),  # int 0/1 (not uint8) scaled like floats, as W&B does
    ],
)
def test_non_uint8_values_follow_wandb(out: FakeOut, values: list[float], expected: list[int]) -> None:
    arr = np.array([values], dtype=np.float32 if isinstance(values[0], float) else np.int64)
    img = pixels(out, log(out, runstream.Image(arr)))
    assert np.asarray(img).tolist() == [expected]


def test_uint8_is_never_rescaled(out: FakeOut) -> None:
    arr = np.array([[0, 1], [1, 0]], dtype=np.uint8)  # W&B would scale this by 255; runstream keeps it
    np.testing.assert_array_equal(np.asarray(pixels(out, log(out, runstream.Image(arr)))), arr)


def test_chw_layout_is_transposed(out: FakeOut) -> None:
    chw = np.random.default_rng(2).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    ptr = run(
        out,
        {
            "type": "image",
            "format": "png",
            "shape": [3, 4, 5],
            "dtype": "|u1",
            "chw": True,
            "normalize": False,
        },
        chw.tobytes(),
    )
    assert (ptr["width"], ptr["height"]) == (5, 4)
    np.testing.assert_array_equal(np.asarray(pixels(out, ptr)), chw.transpose(1, 2, 0))


def test_torch_tensor_is_normalized_to_its_range(out: FakeOut) -> None:
    torch = pytest.importorskip("torch")
    t = torch.tensor([[[-2.0, 0.0], [1.0, 2.0]]] * 3)  # 3 x 2 x 2, range -2..2
    meta, payload = runstream.Image(t)._meta()
    assert meta["chw"] and meta["normalize"]
    img = pixels(out, run(out, meta, b"".join(bytes(p) for p in payload)))
    assert img.mode == "RGB" and img.size == (2, 2)
    # torchvision make_grid(normalize=True): (x - min) / (max - min), then mul(255).byte()
    assert np.asarray(img)[..., 0].tolist() == [[0, 127], [191, 255]]


def test_jpg_and_bmp(out: FakeOut) -> None:
    arr = np.full((4, 4, 4), 200, dtype=np.uint8)  # RGBA: JPEG has no alpha, so it is dropped
    jp = log(out, runstream.Image(arr, file_type="jpg"))
    assert jp["format"] == "jpg" and pixels(out, jp).format == "JPEG" and pixels(out, jp).mode == "RGB"
    check_file(out, jp, "media/images", ".jpg")
    bp = log(out, runstream.Image(arr[..., :3], file_type="bmp"))
    np.testing.assert_array_equal(np.asarray(pixels(out, bp)), arr[..., :3])


def test_pil_modes_kept(out: FakeOut) -> None:
    deep = Image.fromarray(np.array([[0, 1000], [40000, 65535]], dtype=np.uint16))  # 16-bit depth map
    img = pixels(out, log(out, runstream.Image(deep)))
    assert np.asarray(img).astype(int).tolist() == [[0, 1000], [40000, 65535]]
    bits = Image.fromarray(np.array([[True, False]]))
    assert np.asarray(pixels(out, log(out, runstream.Image(bits)))).astype(bool).tolist() == [[True, False]]


def test_masks_and_boxes(out: FakeOut) -> None:
    arr = np.zeros((4, 6, 3), dtype=np.uint8)
    mask = np.array([[0, 1, 2, 0, 0, 0]] * 4, dtype=np.uint8)
    boxes = {
        "box_data": [{"position": {"minX": 0.1, "maxX": 0.5, "minY": 0.2, "maxY": 0.6}, "class_id": 1}],
        "class_labels": {1: "cat"},
    }
    img = runstream.Image(
        arr, masks={"pred": {"mask_data": mask, "class_labels": {1: "cat", 2: "dog"}}}, boxes={"b": boxes}
    )
    ptr = log(out, img)
    mp = ptr["masks"]["pred"]
    check_file(out, mp, "media/images/mask", ".mask.png")
    assert mp["_type"] == "mask" and mp["class_labels"] == {"1": "cat", "2": "dog"}
    m = pixels(out, mp)
    assert m.mode == "L"
    np.testing.assert_array_equal(np.asarray(m), mask)
    bp = ptr["boxes"]["b"]
    check_file(out, bp, "media/metadata/boxes2D", ".boxes2D.json")
    stored = json.loads(out.read(bp))
    assert stored == {"box_data": bp["box_data"], "class_labels": {"1": "cat"}}
    assert (
        bp["_type"] == "boxes2D" and bp["box_data"][0]["class_id"] == 1 and bp["class_labels"] == {"1": "cat"}
    )


def test_mask_file_is_kept(out: FakeOut, tmp_path: Path) -> None:
    mfile = tmp_path / "m.png"
    Image.fromarray(np.eye(3, dtype=np.uint8)).save(mfile)
    ptr = log(out, runstream.Image(np.zeros((3, 3), np.uint8), masks={"gt": {"path": str(mfile)}}))
    assert out.read(ptr["masks"]["gt"]) == mfile.read_bytes()


def test_file_sources_keep_their_bytes(out: FakeOut, tmp_path: Path) -> None:
    src = tmp_path / "photo.jpeg"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (7, 9, 3), dtype=np.uint8)).save(src)
    ptr = log(out, runstream.Image(str(src), caption="c"))
    assert out.read(ptr) == src.read_bytes()
    assert (ptr["format"], ptr["width"], ptr["height"], ptr["caption"]) == ("jpg", 9, 7, "c")
    check_file(out, ptr, "media/images", ".jpeg")

    gif = tmp_path / "clip.gif"
    frames = [Image.new("RGB", (5, 4), (i * 50, 0, 0)) for i in range(3)]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    vp = log(out, runstream.Video(str(gif)), 2)
    assert out.read(vp) == gif.read_bytes() and (vp["width"], vp["height"]) == (5, 4)
    assert vp["_type"] == "video-file"

    wav = tmp_path / "a.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 4000)
    ap = log(out, runstream.Audio(str(wav)), 3)
    assert out.read(ap) == wav.read_bytes() and (ap["sample_rate"], ap["duration"]) == (8000, 0.5)


def test_large_payload_staged_without_ext(out: FakeOut) -> None:
    arr = np.random.default_rng(4).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    (out.staging / "1-1.bin").write_bytes(arr.tobytes())
    meta = {"type": "image", "format": "png", "shape": [8, 8, 3], "dtype": "|u1", "staged": "1-1.bin"}
    np.testing.assert_array_equal(np.asarray(pixels(out, run(out, meta))), arr)


def test_list_of_images(out: FakeOut) -> None:
    a = np.zeros((4, 5, 3), np.uint8)
    log(out, runstream.Image(a, caption="first", masks={"m": {"mask_data": np.zeros((4, 5), np.uint8)}}), 1)
    log(out, runstream.Image(a), 2)
    ptr = run(out, {"type": "list", "of": "image", "items": [1, 99, 2]}, b"")  # 99: unknown, left out
    assert {k: v for k, v in ptr.items() if k != "all_masks"} == {
        "_type": "images/separated",
        "width": 5,
        "height": 4,
        "format": "png",
        "count": 2,
        "filenames": [out.pointers[1]["path"], out.pointers[2]["path"]],
        "captions": ["first", None],
    }
    assert ptr["all_masks"][0]["m"]["_type"] == "mask" and ptr["all_masks"][1] is None
    assert "all_boxes" not in ptr
    with pytest.raises(MediaError, match="none of the 2 image items"):
        run(out, {"type": "list", "of": "image", "items": [98, 99]})


def test_lists_of_other_media(out: FakeOut) -> None:
    log(out, runstream.Audio(np.zeros(800, np.float32), sample_rate=8000, caption="a"), 1)
    log(out, runstream.Audio(np.zeros(400, np.float32), sample_rate=4000), 2)
    ap = run(out, {"type": "list", "of": "audio", "items": [1, 2]})
    assert ap["_type"] == "audio" and ap["count"] == 2 and ap["audio"] == [out.pointers[1], out.pointers[2]]
    assert (ap["sampleRates"], ap["durations"], ap["captions"]) == ([8000, 4000], [0.1, 0.1], ["a", ""])
    log(out, runstream.Video(np.zeros((2, 1, 4, 4), np.uint8)), 3)
    assert run(out, {"type": "list", "of": "video", "items": [3]}) == {
        "_type": "videos",
        "count": 1,
        "videos": [out.pointers[3]],
        "captions": False,
    }
    log(out, runstream.Html("<b>x</b>"), 4)
    assert run(out, {"type": "list", "of": "html", "items": [4]}) == {
        "_type": "html",
        "count": 1,
        "html": [out.pointers[4]],
    }
    log(out, runstream.Object3D(np.zeros((2, 3))), 5)
    op = run(out, {"type": "list", "of": "object3D", "items": [5]})
    assert op["filenames"] == [out.pointers[5]["path"].removeprefix("media/object3D/")]
    assert op["objects"] == [out.pointers[5]] and op["count"] == 1


# --- video, audio, html, object3D, plotly, molecule, table --------------------------------------
def test_gif_frames(out: FakeOut) -> None:
    frames = np.random.default_rng(5).integers(0, 256, (5, 3, 8, 10), dtype=np.uint8)
    ptr = log(out, runstream.Video(frames, fps=10, caption="v"))
    check_file(out, ptr, "media/videos", ".gif")
    assert (ptr["_type"], ptr["width"], ptr["height"], ptr["caption"]) == ("video-file", 10, 8, "v")
    gif = Image.open(io.BytesIO(out.read(ptr)))
    assert getattr(gif, "n_frames", 1) == 5 and gif.size == (10, 8) and gif.info["duration"] == 100


def test_video_batch_is_tiled(out: FakeOut) -> None:
    frames = np.full((3, 2, 1, 4, 6), 255, dtype=np.uint8)  # 3 videos: padded to 4, a 1 x 4 grid
    ptr = log(out, runstream.Video(frames))
    assert (ptr["width"], ptr["height"]) == (24, 4)
    first = np.asarray(Image.open(io.BytesIO(out.read(ptr))).convert("L"))
    assert first[:, :18].min() == 255 and first[:, 18:].max() == 0


def test_mp4_needs_imageio_ffmpeg(out: FakeOut) -> None:
    if importlib.util.find_spec("imageio_ffmpeg") is not None:
        pytest.skip("imageio-ffmpeg is installed here")
    meta = {"type": "video", "format": "mp4", "fps": 4.0, "shape": [1, 3, 2, 2], "dtype": "|u1"}
    with pytest.raises(MediaError, match="imageio-ffmpeg"):
        run(out, meta, bytes(12))


def test_wav(out: FakeOut) -> None:
    x = np.sin(np.linspace(0, 20, 1600)).astype(np.float32) * 1.5  # beyond +-1: clipped
    ptr = log(out, runstream.Audio(x, sample_rate=16000, caption="s"))
    check_file(out, ptr, "media/audio", ".wav")
    assert (ptr["_type"], ptr["sample_rate"], ptr["duration"], ptr["caption"]) == (
        "audio-file",
        16000,
        0.1,
        "s",
    )
    with wave.open(io.BytesIO(out.read(ptr))) as w:
        assert (w.getframerate(), w.getnframes(), w.getnchannels(), w.getsampwidth()) == (16000, 1600, 1, 2)
        pcm = np.frombuffer(w.readframes(1600), "<i2")
    np.testing.assert_array_equal(
        pcm, np.round(np.clip(x.astype(np.float64), -1, 1) * 32767).astype(np.int16)
    )

    stereo = np.array([[1, -1], [32767, -32768], [0, 5]], dtype=np.int16)
    with wave.open(io.BytesIO(out.read(log(out, runstream.Audio(stereo, sample_rate=8000), 2)))) as w:
        assert w.getnchannels() == 2
        np.testing.assert_array_equal(np.frombuffer(w.readframes(3), "<i2").reshape(3, 2), stereo)


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        (
            "<html><head><title>t</title></head></html>",
            '<html><head><base target="_blank"><title>t</title></head></html>',
        ),
        ("<html><body>b</body></html>", '<html><head><base target="_blank"></head><body>b</body></html>'),
        ("<b>hi</b>", '<base target="_blank"><b>hi</b>'),
    ],
)
def test_html_inject(out: FakeOut, html: str, expected: str) -> None:
    ptr = log(out, runstream.Html(html))
    check_file(out, ptr, "media/html", ".html")
    assert ptr["_type"] == "html-file" and out.read(ptr).decode() == expected
    assert out.read(log(out, runstream.Html(html, inject=False), 2)).decode() == html


def test_object3d(out: FakeOut, tmp_path: Path) -> None:
    pts = np.array([[0.0, 1.0, 2.0], [3.5, -1.0, 0.25]])
    ptr = log(out, runstream.Object3D(pts, caption="cloud"))
    check_file(out, ptr, "media/object3D", ".pts.json")
    assert ptr["_type"] == "object3D-file" and ptr["caption"] == "cloud"
    assert json.loads(out.read(ptr)) == pts.tolist()
    scene = runstream.Object3D.from_point_cloud(pts, boxes=[{"corners": [[0, 0, 0]] * 8, "label": "x"}])
    assert json.loads(out.read(log(out, scene, 2)))["boxes"][0]["label"] == "x"
    glb = tmp_path / "m.glb"
    glb.write_bytes(b"glTF-binary")
    fp = log(out, runstream.Object3D(str(glb)), 3)
    assert out.read(fp) == b"glTF-binary" and fp["path"].endswith(".glb")


def test_plotly_and_molecule(out: FakeOut, tmp_path: Path) -> None:
    ptr = run(out, {"type": "plotly"}, b'{"data": [], "layout": {}}')
    check_file(out, ptr, "media/plotly", ".plotly.json")
    assert ptr["_type"] == "plotly-file" and json.loads(out.read(ptr)) == {"data": [], "layout": {}}
    pdb = tmp_path / "m.pdb"
    pdb.write_text("ATOM      1  N   ALA A   1\n")
    mp = log(out, runstream.Molecule(str(pdb), caption="ala"), 2)
    check_file(out, mp, "media/molecule", ".pdb")
    assert mp["_type"] == "molecule-file" and out.read(mp) == pdb.read_bytes() and mp["caption"] == "ala"


def test_table_with_media_cells(out: FakeOut) -> None:
    img = log(out, runstream.Image(np.zeros((2, 2), np.uint8)), 7)
    rows = [[1, "cat", {"_rs_media": 7}], [2, math.nan, {"_rs_media": 8}]]  # 8: lost -> null
    meta = {"type": "table", "columns": ["i", "label", "img"], "log_mode": "IMMUTABLE", "rows_cut": 5}
    ptr = run(out, meta, msgpack.packb(rows))
    check_file(out, ptr, "media/table", ".table.json")
    assert {k: ptr[k] for k in ("_type", "ncols", "nrows", "log_mode", "rows_cut")} == {
        "_type": "table-file",
        "ncols": 3,
        "nrows": 2,
        "log_mode": "IMMUTABLE",
        "rows_cut": 5,
    }
    assert json.loads(out.read(ptr)) == {
        "columns": ["i", "label", "img"],
        "data": [[1, "cat", img], [2, "NaN", None]],
    }


# --- bad data ------------------------------------------------------------------------------------
RGB = {"type": "image", "format": "png", "shape": [2, 2, 3], "dtype": "|u1"}


@pytest.mark.parametrize(
    ("meta", "payload", "match"),
    [
        (RGB, bytes(11), "needs 12 bytes; the payload has 11"),
        (RGB, bytes(13), "payload has 13 bytes; the meta describes 12"),
        ({**RGB, "shape": [2, 2, 5]}, bytes(20), r"shape \[2, 2, 5\]"),
        ({**RGB, "shape": [2, -2, 3]}, bytes(12), "bad shape"),
        ({**RGB, "shape": [0, 2, 3]}, b"", "shape"),
        ({**RGB, "dtype": "<c16"}, bytes(192), "not one of numbers"),
        ({**RGB, "dtype": "nope"}, bytes(12), "unknown dtype"),
        ({**RGB, "mode": "XYZ"}, bytes(12), "unknown mode"),
        ({**RGB, "mode": "RGBA"}, bytes(12), "mode 'RGBA' has 4 channels; the pixels have 3"),
        ({**RGB, "format": "tiff"}, bytes(12), "unknown format"),
        ({"type": "sculpture"}, b"", "unknown media type 'sculpture'"),
        ({"type": "image", "ext": ".png", "staged": "junk.png"}, b"", "not an image Pillow can read"),
        (
            {"type": "image", "ext": ".png", "staged": "gone.png"},
            b"",
            "staged file 'gone.png' cannot be read",
        ),
        ({"type": "video", "shape": [2, 5, 4, 4], "dtype": "|u1"}, bytes(160), "not a video|expected time"),
        (
            {"type": "video", "shape": [1, 1, 2, 2], "dtype": "|u1", "format": "avi"},
            bytes(4),
            "unknown format",
        ),
        ({"type": "audio", "shape": [4], "dtype": "<f4"}, bytes(16), "bad sample_rate"),
        ({"type": "audio", "shape": [2, 100], "dtype": "<i2", "sample_rate": 8}, bytes(400), "100 channels"),
        ({"type": "html", "inject": True}, b"\xff\xfe", "not UTF-8"),
        ({"type": "object3D", "shape": [2, 5], "dtype": "<f8"}, bytes(80), "points of shape"),
        ({"type": "object3D", "shape": [1, 3], "dtype": "<f8"}, np.array([1, np.nan, 0]).tobytes(), "NaN"),
        ({"type": "plotly"}, b"{not json", "not JSON"),
        ({"type": "table", "columns": ["a"]}, b"\xc1", "rows cannot be read"),
        ({"type": "table", "columns": ["a"]}, msgpack.packb({"a": 1}), "not a list of lists"),
        ({"type": "list", "of": "sculpture", "items": [1]}, b"", "unknown item type"),
        ({"type": "molecule"}, b"", "no staged file"),
    ],
)
def test_bad_data_raises_media_error(out: FakeOut, meta: dict[str, Any], payload: bytes, match: str) -> None:
    (out.staging / "junk.png").write_bytes(b"not a png")
    with pytest.raises(MediaError, match=match):
        run(out, meta, payload)
    assert out.written == []


def test_bad_mask_writes_nothing(out: FakeOut) -> None:
    mask: dict[str, Any] = {"class_labels": None, "shape": [3, 3], "dtype": "|u1", "nbytes": 9}
    meta = {**RGB, "masks": {"m": mask}}
    with pytest.raises(MediaError, match="mask 'm' has shape"):
        run(out, meta, bytes(12 + 9))
    with pytest.raises(MediaError, match="needs 4 bytes; the payload has 3"):
        run(out, {**meta, "masks": {"m": {**mask, "shape": [2, 2]}}}, bytes(12 + 3))
    assert out.written == []


def test_failures_of_out_pass_through(out: FakeOut) -> None:
    class Full(FakeOut):
        def write(self, subdir: str, key: str, step: int, data: bytes, ext: str) -> dict[str, Any]:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        run(Full(out.files.parent), RGB, bytes(12))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    c=st.sampled_from([None, 3, 4]),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_uint8_image_round_trips(out: FakeOut, h: int, w: int, c: int | None, seed: int) -> None:
    shape = (h, w) if c is None else (h, w, c)
    arr = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    ptr = log(out, runstream.Image(arr))
    assert (ptr["width"], ptr["height"]) == (w, h)
    np.testing.assert_array_equal(np.asarray(pixels(out, ptr)), arr)


def test_png_level_is_a_fast_one() -> None:
    assert 1 <= PNG_LEVEL <= 6


@settings(max_examples=80, deadline=None)
@given(
    h=st.integers(1, 33),
    w=st.integers(1, 33),
    c=st.sampled_from([None, 2, 3, 4]),
    seed=st.integers(0, 2**32 - 1),
)
def test_runstreams_own_png_writer_is_read_back_exactly_by_pillow(
    h: int, w: int, c: int | None, seed: int
) -> None:
    from runstream_ingest.sidecar.media.encode_image import png_bytes

    shape = (h, w) if c is None else (h, w, c)
    arr = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    with Image.open(io.BytesIO(png_bytes(arr))) as im:
        assert im.mode == {None: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c]
        assert np.array_equal(np.asarray(im), arr)
