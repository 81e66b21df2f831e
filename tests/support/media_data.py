"""A run's worth of W&B media for the web UI's media tests (tests/e2e/test_web_media.py).

``build(src)`` writes the media files under ``src/media/...`` (PNG images and masks, a boxes2D JSON,
a table, a GIF, a WAV, HTML, a point cloud, a plotly figure and custom charts' tables) and returns
a ``Plan``: the history rows holding W&B's pointer dicts to them (docs/media.md; the shapes are
W&B's), the run config with ``_wandb.visualize``, and the facts a test checks the page against.
``SCRIPT`` is a training script that logs the plan with a real online ``runstream.init`` run (its
id the script's argument) and uploads the files with ``run.save(..., policy="now")``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

ENTITY, PROJECT = "acme", "media"
RUNS = ("media1", "media2")  # the same plan logged twice: the second is for the compare view
STEPS = 5
IMG_W, IMG_H = 40, 30
# The image logged at step i is filled with COLORS[i]; its caption is CAPTION % i.
COLORS = [(200, 30, 30), (30, 160, 60), (40, 70, 210), (230, 200, 20), (120, 40, 160)]
CAPTION = "epoch %d"
MASK_LABELS = {"0": "background", "1": "cat", "2": "dog"}
BOX_LABELS = {"1": "cat", "2": "dog"}
BOX_CAPTION = "dog 0.93"
TABLE_ROWS = 45
HIST_BINS = 10
CLASSES = ["ant", "bee", "cow"]
SAMPLE_RATE = 8000
N_POINTS = 200
ENCODE_ERROR = "cannot identify image file"
BARS = [["ant", 3.0], ["bee", 7.0], ["cow", 5.0]]
HIST_VALUES = 50


@dataclass
class Plan:
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per step 0..STEPS-1
    config: dict[str, Any] = field(default_factory=dict)
    table: dict[str, Any] = field(default_factory=dict)  # {"columns", "data"} of "preds"
    hist: list[dict[str, Any]] = field(default_factory=list)  # the histogram of each step
    confusion: dict[tuple[str, str], int] = field(default_factory=dict)


def _file(src: Path, rel: str, body: bytes) -> dict[str, Any]:
    p = src / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(body)
    return {"path": rel, "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _sha20(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:20]


def _image(src: Path, key: str, step: int, rgb: tuple[int, int, int], caption: str | None) -> dict[str, Any]:
    body = _png(Image.new("RGB", (IMG_W, IMG_H), rgb))
    ptr = _file(src, f"media/images/{key}_{step}_{_sha20(body)}.png", body)
    out = {"_type": "image-file", **ptr, "format": "png", "width": IMG_W, "height": IMG_H}
    if caption is not None:
        out["caption"] = caption
    return out


def _mask(src: Path, key: str, step: int) -> dict[str, Any]:
    m = Image.new("L", (IMG_W, IMG_H), 0)
    m.paste(1, (0, 0, IMG_W // 2, IMG_H))  # left half: cat
    m.paste(2, (30, 20, 40, 30))  # bottom-right corner: dog
    body = _png(m)
    ptr = _file(src, f"media/images/mask/{key}_{step}_{_sha20(body)}.mask.png", body)
    return {"_type": "mask", **ptr, "class_labels": MASK_LABELS}


def _boxes(src: Path, key: str, step: int) -> dict[str, Any]:
    data = {
        "box_data": [
            # pixels: x 4..16, y 3..15 of the 40 x 30 image
            {"position": {"minX": 4, "maxX": 16, "minY": 3, "maxY": 15}, "domain": "pixel", "class_id": 1},
            # fractions (the default domain), with a caption and scores
            {"position": {"middle": [0.75, 0.5], "width": 0.3, "height": 0.4}, "class_id": 2,
             "box_caption": BOX_CAPTION, "scores": {"conf": 0.93}},
        ],
        "class_labels": BOX_LABELS,
    }  # fmt: skip
    body = json.dumps(data).encode()
    ptr = _file(src, f"media/metadata/boxes2D/{key}_{step}_{_sha20(body)}.boxes2D.json", body)
    return {"_type": "boxes2D", **ptr}


def _gif(src: Path, step: int) -> dict[str, Any]:
    frames = [Image.new("RGB", (32, 24), (i * 60, 100, 200 - i * 60)) for i in range(4)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=250, loop=0)
    body = buf.getvalue()
    return {
        "_type": "video-file",
        **_file(src, f"media/videos/clip_{step}_{_sha20(body)}.gif", body),
        "width": 32,
        "height": 24,
    }


def _wav(src: Path, step: int) -> dict[str, Any]:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        samples = (int(8000 * math.sin(2 * math.pi * 440 * i / SAMPLE_RATE)) for i in range(SAMPLE_RATE // 2))
        w.writeframes(b"".join(s.to_bytes(2, "little", signed=True) for s in samples))
    body = buf.getvalue()
    return {
        "_type": "audio-file",
        **_file(src, f"media/audio/speech_{step}_{_sha20(body)}.wav", body),
        "caption": "a tone",
    }


def _json_file(src: Path, rel_dir: str, key: str, step: int, ext: str, obj: Any, typ: str) -> dict[str, Any]:
    body = json.dumps(obj).encode()
    return {"_type": typ, **_file(src, f"media/{rel_dir}/{key}_{step}_{_sha20(body)}.{ext}", body)}


def _table(src: Path, key: str, step: int, columns: list[str], data: list[list[Any]]) -> dict[str, Any]:
    ptr = _json_file(src, "table", key, step, "table.json", {"columns": columns, "data": data}, "table-file")
    return {**ptr, "ncols": len(columns), "nrows": len(data), "log_mode": "IMMUTABLE"}


def build(src: Path) -> Plan:
    plan = Plan()
    for step in range(STEPS):
        img = _image(src, "samples/img", step, COLORS[step], CAPTION % step)
        img["masks"] = {"seg": _mask(src, "samples/img", step)}
        img["boxes"] = {"det": _boxes(src, "samples/img", step)}
        counts = [int(100 * math.exp(-((b - step) ** 2) / 4)) for b in range(HIST_BINS)]
        hist = {"_type": "histogram", "values": counts, "bins": [float(b) for b in range(HIST_BINS + 1)]}
        plan.hist.append(hist)
        plan.rows.append({"samples/img": img, "weights": hist, "loss": 1.0 / (step + 1)})
    # A value the sidecar could not encode: W&B's pointer type with the error instead of a file.
    plan.rows[0]["broken"] = {"_type": "image-file", "error": ENCODE_ERROR}
    # The other media once, at the last step: a list of images, a table, video, audio, HTML,
    # a point cloud, a plotly figure and custom charts.
    last = plan.rows[-1]
    thumbs = [_image(src, "preds_cell", i, (10 * i, 0, 0), None) for i in range(3)]
    columns = ["id", "score", "label", "img"]
    data = [[i, round((i * 37 % 101) / 101, 4), CLASSES[i % 3], thumbs[i % 3]] for i in range(TABLE_ROWS)]
    plan.table = {"columns": columns, "data": data}
    last["preds"] = _table(src, "preds", STEPS - 1, columns, data)
    lst = [_image(src, "batch", STEPS - 1, (0, 0, 50 * i), f"item {i}") for i in range(3)]
    last["batch"] = {
        "_type": "images/separated", "count": 3, "width": IMG_W, "height": IMG_H, "format": "png",
        "filenames": [x["path"] for x in lst], "captions": [x["caption"] for x in lst],
    }  # fmt: skip
    last["clip"] = _gif(src, STEPS - 1)
    last["speech"] = _wav(src, STEPS - 1)
    page = "<html><head></head><body><h1>Hello media</h1><script>document.title='ran'</script></body></html>"
    last["page"] = {
        "_type": "html-file",
        **_file(src, f"media/html/page_{STEPS - 1}_{_sha20(page.encode())}.html", page.encode()),
    }
    pts = [[math.cos(i / 10), math.sin(i / 10), i / N_POINTS, 255, (i * 5) % 256, 0] for i in range(N_POINTS)]
    last["cloud"] = _json_file(src, "object3D", "cloud", STEPS - 1, "pts.json", pts, "object3D-file")
    fig = {
        "data": [
            {"type": "scatter", "mode": "lines", "name": "sin", "x": list(range(20)),
             "y": [math.sin(i / 3) for i in range(20)]},
            {"type": "bar", "name": "bars", "x": list(range(20)), "y": [i % 4 for i in range(20)]},
        ],
        "layout": {"title": {"text": "A plotly figure"}},
    }  # fmt: skip
    last["fig"] = _json_file(src, "plotly", "fig", STEPS - 1, "plotly.json", fig, "plotly-file")
    # Custom charts: a PR curve (area under curve) and a confusion matrix, W&B's panel specs.
    pr = [
        [c, round(1 - r / 20 * (k + 1) / 4, 3), round(r / 20, 3)]
        for k, c in enumerate(CLASSES)
        for r in range(21)
    ]
    last["pr_table"] = _table(src, "pr_table", STEPS - 1, ["class", "precision", "recall"], pr)
    cm = []
    for a_i, a in enumerate(CLASSES):
        for p_i, p in enumerate(CLASSES):
            n = 10 if a_i == p_i else a_i + p_i
            cm.append([a, p, n])
            plan.confusion[(a, p)] = n
    last["cm_table"] = _table(src, "cm_table", STEPS - 1, ["Actual", "Predicted", "nPredictions"], cm)
    vis = {
        "pr": {"panel_type": "Vega2", "panel_config": {
            "panelDefId": "wandb/area-under-curve/v0",
            "fieldSettings": {"x": "recall", "y": "precision", "class": "class"},
            "stringSettings": {"title": "Precision-Recall Curve", "x-axis-title": "Recall",
                               "y-axis-title": "Precision"}}},
        "cm": {"panel_type": "Vega2", "panel_config": {
            "panelDefId": "wandb/confusion_matrix/v1",
            "fieldSettings": {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
            "stringSettings": {"title": "Confusion Matrix Curve"}}},
    }  # fmt: skip
    # The other chart types, each from a small table of its own.
    xy = [[x, x * (k + 1), s] for k, s in enumerate(("a", "b")) for x in range(5)]
    others: dict[str, tuple[str, dict[str, str], list[str], list[list[Any]]]] = {
        "lines": ("wandb/line/v0", {"x": "x", "y": "y", "stroke": "s"}, ["x", "y", "s"], xy),
        "dots": ("wandb/scatter/v0", {"x": "x", "y": "y"}, ["x", "y", "s"], xy),
        "bars": ("wandb/bar/v0", {"label": "label", "value": "value"}, ["label", "value"], BARS),
        "spread": ("wandb/histogram/v0", {"value": "v"}, ["v"], [[v / 10] for v in range(HIST_VALUES)]),
        "series": (
            "wandb/lineseries/v0",
            {"step": "step", "lineKey": "lineKey", "lineVal": "lineVal"},
            ["step", "lineKey", "lineVal"],
            [[x, f"line_{k}", x + k] for k in range(2) for x in range(4)],
        ),
    }
    for key, (def_id, fields, cols, rows) in others.items():
        last[f"{key}_table"] = _table(src, f"{key}_table", STEPS - 1, cols, rows)
        config = {"panelDefId": def_id, "fieldSettings": fields, "stringSettings": {"title": key}}
        vis[key] = {"panel_type": "Vega2", "panel_config": config}
    plan.config = {"lr": 0.01, "_wandb": {"visualize": vis}}
    return plan


SCRIPT = f"""
import json, sys, runstream
plan = json.load(open("plan.json"))
run = runstream.init(project={PROJECT!r}, entity={ENTITY!r}, id=sys.argv[1], config=plan["config"])
run.save("src/media/**", base_path="src", policy="now")
for row in plan["rows"]:
    run.log(row)
run.finish()
"""


def write_plan(workdir: Path) -> Plan:
    """The media under ``workdir/src``, the plan as ``workdir/plan.json`` and the script as
    ``workdir/train.py``."""
    plan = build(workdir / "src")
    (workdir / "plan.json").write_text(json.dumps({"rows": plan.rows, "config": plan.config}))
    (workdir / "train.py").write_text(SCRIPT)
    return plan


# The same kinds of media through the SDK's own objects (runstream.Image, Histogram, Table, Audio):
# the sidecar encodes them and uploads the files.  Step i's image is filled with COLORS[i].
SDK_RUN = "sdkmedia"
SDK_SCRIPT = f"""
import numpy as np, runstream
colors = {COLORS!r}
run = runstream.init(project={PROJECT!r}, entity={ENTITY!r}, id={SDK_RUN!r})
for i in range({STEPS}):
    a = np.zeros(({IMG_H}, {IMG_W}, 3), dtype=np.uint8)
    a[:] = colors[i]
    m = np.zeros(({IMG_H}, {IMG_W}), dtype=np.uint8)
    m[:, : {IMG_W} // 2] = 1
    pos = {{"minX": 0.1, "maxX": 0.4, "minY": 0.1, "maxY": 0.5}}
    box = {{"position": pos, "class_id": 1, "box_caption": "kitty"}}
    img = runstream.Image(
        a,
        caption={CAPTION!r} % i,
        masks={{"seg": {{"mask_data": m, "class_labels": {{0: "bg", 1: "cat"}}}}}},
        boxes={{"det": {{"box_data": [box], "class_labels": {{1: "cat"}}}}}},
    )
    table = runstream.Table(columns=["n", "sq"], data=[[n, n * n] for n in range({TABLE_ROWS})])
    run.log({{
        "sdk/img": img,
        "sdk/hist": runstream.Histogram(np.arange(100) + 10 * i),
        "sdk/table": table,
        "sdk/tone": runstream.Audio(np.sin(np.arange({SAMPLE_RATE}) / 10), sample_rate={SAMPLE_RATE}),
    }})
run.finish()
"""
