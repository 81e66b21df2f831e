"""TensorBoard into runstream with the real writers (torch.utils.tensorboard, tensorboardX, and
TensorBoard's own event-file writer for tf.summary's tensor format): live with
``init(sync_tensorboard=True)``, and after the fact with ``runstream import-tensorboard``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

import runstream

pytestmark = pytest.mark.usefixtures("finish_active_run")

STEPS = 5


def pixels(step: int) -> np.ndarray[Any, Any]:
    """A distinct 3 x 6 x 8 (CHW) uint8 image per step."""
    return np.random.default_rng(step).integers(0, 255, (3, 6, 8), dtype=np.uint8)


def weights(step: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(100 + step).normal(loc=step, size=200)


def write_steps(writer: Any, prefix: str = "") -> None:
    for step in range(STEPS):
        writer.add_scalar(f"{prefix}loss", 1.0 / (step + 1), step)
        writer.add_histogram(f"{prefix}weights", weights(step), step)
        writer.add_image(f"{prefix}sample", pixels(step), step)


def png_pixels(run_dir: str, pointer: dict[str, Any]) -> np.ndarray[Any, Any]:
    path = Path(run_dir) / "files" / pointer["path"]
    with PILImage.open(path) as im:
        return np.asarray(im)


def check_rows(run_dir: str, history: list[dict[str, Any]], ns: str = "", first_step: int = 0) -> None:
    """The rows hold the written values at their TensorBoard step."""
    rows = [r for r in history if f"{ns}loss" in r]
    assert [r[f"{ns}global_step"] for r in rows] == list(range(STEPS))
    for step, row in enumerate(rows):
        assert row["_step"] == first_step + step
        assert row[f"{ns}loss"] == pytest.approx(1.0 / (step + 1), rel=1e-6)  # float32 on disk
        hist = row[f"{ns}weights"]
        assert hist["_type"] == "histogram" and sum(hist["values"]) == 200
        mean = (
            sum(
                c * (a + b) / 2
                for c, a, b in zip(hist["values"], hist["bins"], hist["bins"][1:], strict=False)
            )
            / 200
        )
        assert mean == pytest.approx(weights(step).mean(), abs=0.2)
        image = row[f"{ns}sample"]
        assert image["_type"] == "image-file" and (image["width"], image["height"]) == (8, 6)
        assert np.array_equal(png_pixels(run_dir, image), pixels(step).transpose(1, 2, 0))


SYNC_SCRIPT = """
import sys
import runstream

run = runstream.init(project="tb", mode="offline", dir=sys.argv[1], sync_tensorboard=True)
# Imported after init: the writer class is patched by the import hook as it loads.
if sys.argv[2] == "torch":
    from torch.utils.tensorboard import SummaryWriter
else:
    from tensorboardX import SummaryWriter
from tests.integrations.test_tensorboard import write_steps

writer = SummaryWriter(sys.argv[3])
write_steps(writer)
if sys.argv[4] == "close":
    writer.close()
# else: finish flushes the writer and reads its file to the end
run.finish()
print(run.dir)
"""


@pytest.mark.parametrize(("library", "close"), [("torch", "close"), ("tensorboardX", "open")])
def test_a_summary_writer_in_a_synced_run_lands_in_its_history(
    tmp_path: Path, library: str, close: str
) -> None:
    r = subprocess.run(
        [sys.executable, "-c", SYNC_SCRIPT, str(tmp_path), library, str(tmp_path / "tb"), close],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = r.stdout.strip().splitlines()[-1]
    data = runstream.read_run(run_dir)
    check_rows(run_dir, data.history)
    assert data.history_rows == STEPS and data.dropped == 0
    assert data.summary["loss"] == pytest.approx(0.2)


def test_rows_reach_the_run_during_training_not_only_at_finish(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter  # imported before init: patched at init

    run = runstream.init(project="tb", mode="offline", dir=tmp_path, sync_tensorboard=True)
    writer = SummaryWriter(str(tmp_path / "tb"))
    for step in range(3):
        writer.add_scalar("loss", float(step), step)
    writer.flush()
    sync = run._tensorboard  # type: ignore[attr-defined]
    for _ in range(100):  # the tail thread reads the flushed file within its poll interval
        if len(sync._ready) >= 3:
            break
        import time

        time.sleep(0.05)
    writer.add_scalar("loss", 3.0, 3)  # the next writer call on this thread logs what is ready
    assert run.step == 2  # steps 0 and 1 committed, step 2 pending
    writer.close()
    run.finish()
    data = runstream.read_run(run.dir)
    assert [(r["_step"], r["loss"]) for r in data.history] == [(s, float(s)) for s in range(4)]


def test_two_log_dirs_under_root_logdir_are_namespaced_and_nothing_is_dropped(tmp_path: Path) -> None:
    from tensorboardX import SummaryWriter

    root = tmp_path / "tb"
    runstream.tensorboard.patch(root_logdir=str(root))
    try:
        run = runstream.init(project="tb", mode="offline", dir=tmp_path)
        train = SummaryWriter(str(root / "train"))
        write_steps(train)
        train.close()
        val = SummaryWriter(str(root / "val"))
        for step in range(STEPS):  # starts again at 0: behind the run's step
            val.add_scalar("loss", 10.0 + step, step)
        val.close()
        run.finish()
    finally:
        runstream.tensorboard.unpatch()
    data = runstream.read_run(run.dir)
    check_rows(run.dir, data.history, ns="train/")
    val_rows = [r for r in data.history if "val/loss" in r]
    assert [(r["val/global_step"], r["val/loss"]) for r in val_rows] == [(s, 10.0 + s) for s in range(STEPS)]
    assert all(r["_step"] >= STEPS - 1 for r in val_rows)  # logged at the run's own step
    assert data.dropped == 0 and "_runstream/step_regressions" not in data.summary


def write_tf2_style(logdir: Path) -> None:
    """Events as ``tf.summary`` (TF2) writes them: tensors tagged by plugin, through TensorBoard's
    own event-file writer (TensorFlow itself is not installed)."""
    import io

    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.histogram.summary_v2 import histogram_pb
    from tensorboard.plugins.scalar.summary_v2 import scalar_pb
    from tensorboard.plugins.text.summary_v2 import text_pb
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util

    w = EventFileWriter(str(logdir))
    for step in range(STEPS):
        png = io.BytesIO()
        PILImage.fromarray(pixels(step).transpose(1, 2, 0)).save(png, format="PNG")
        image = summary_pb2.Summary.Value(
            tag="sample",
            metadata=summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="images")
            ),
            tensor=tensor_util.make_tensor_proto([b"8", b"6", png.getvalue()]),
        )
        summaries = [
            scalar_pb("loss", np.float32(1.0 / (step + 1))),
            histogram_pb("weights", weights(step), buckets=20),
            text_pb("note", f"step {step}"),
            summary_pb2.Summary(value=[image]),
        ]
        for s in summaries:
            w.add_event(event_pb2.Event(step=step, wall_time=1000.0 + step, summary=s))
    w.close()


def import_tensorboard(
    logdir: Path, out: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    mode = [] if env else ["--mode", "offline"]
    return subprocess.run(
        [sys.executable, "-m", "runstream.cli.main", "import-tensorboard", str(logdir), *mode,
         "--dir", str(out), "--project", "imported", *args],
        check=False, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_import_tensorboard_creates_a_run_with_the_same_data_and_shows_progress(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    logs = tmp_path / "logs"
    writer = SummaryWriter(str(logs / "train"))
    write_steps(writer)
    writer.close()
    write_tf2_style(logs / "tf2")

    r = import_tensorboard(logs, tmp_path / "out", "--name", "from-tb")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "100.0%" in r.stderr and "2/2 files" in r.stderr
    assert "10 histograms" in r.stderr and "10 images" in r.stderr and "5 text" in r.stderr
    data = runstream.read_run(tmp_path / "out")
    assert data.run["name"] == "from-tb" and data.run["project"] == "imported"
    assert data.run["state"] == "finished"
    run_dir = str(data.path)
    check_rows(run_dir, data.history, ns="train/")
    check_rows(run_dir, data.history, ns="tf2/")  # merged by step: one row per step for both
    assert data.history_rows == STEPS
    assert [r["tf2/note"] for r in data.history] == [f"step {s}" for s in range(STEPS)]


def test_a_truncated_event_file_imports_everything_before_the_cut(tmp_path: Path) -> None:
    from tensorboardX import SummaryWriter

    logs = tmp_path / "logs"
    writer = SummaryWriter(str(logs))
    write_steps(writer)
    writer.close()
    (event_file,) = logs.glob("*tfevents*")
    event_file.write_bytes(event_file.read_bytes()[:-7])  # the last record (step 4's image) cut

    r = import_tensorboard(logs, tmp_path / "out")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cut short" in r.stderr and "1 damaged records" in r.stderr
    data = runstream.read_run(tmp_path / "out")
    assert [r["global_step"] for r in data.history] == list(range(STEPS))
    assert [r["loss"] for r in data.history] == pytest.approx([1.0 / (s + 1) for s in range(STEPS)])
    assert [("sample" in r) for r in data.history] == [True] * (STEPS - 1) + [False]
    assert all(r["weights"]["_type"] == "histogram" for r in data.history)


def test_import_tensorboard_refuses_a_directory_without_event_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = import_tensorboard(tmp_path / "empty", tmp_path / "out")
    assert r.returncode == 2
    assert "no event files" in r.stderr and str(tmp_path / "empty") in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_run_without_sync_tensorboard_loads_none_of_it(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, runstream
        run = runstream.init(project="tb", mode="offline", dir={str(tmp_path)!r})
        run.log({{"a": 1}})
        run.finish()
        assert "runstream.tensorboard" not in sys.modules, "loaded without being asked for"
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr[-3000:]


def test_patch_on_an_active_run_watches_root_logdir_for_tf_summary_files(tmp_path: Path) -> None:
    run = runstream.init(project="tb", mode="offline", dir=tmp_path)
    runstream.tensorboard.patch(root_logdir=str(tmp_path / "tf"))  # no Python writer to patch
    try:
        write_tf2_style(tmp_path / "tf" / "eval")  # as tf.summary writes, from outside any patch
        run.finish()
    finally:
        runstream.tensorboard.unpatch()
    data = runstream.read_run(run.dir)
    check_rows(run.dir, data.history, ns="eval/")
    assert [r["eval/note"] for r in data.history] == [f"step {s}" for s in range(STEPS)]


def test_after_patch_a_writer_made_before_init_is_followed(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    runstream.tensorboard.patch()
    try:
        writer = SummaryWriter(str(tmp_path / "tb"))  # before init, as W&B's patch() allows
        run = runstream.init(project="tb", mode="offline", dir=tmp_path)
        write_steps(writer)
        run.finish()
        writer.close()
    finally:
        runstream.tensorboard.unpatch()
    data = runstream.read_run(run.dir)
    check_rows(run.dir, data.history)


def test_a_second_run_does_not_take_in_the_first_runs_event_files(tmp_path: Path) -> None:
    from tensorboardX import SummaryWriter

    first = runstream.init(project="tb", mode="offline", dir=tmp_path / "a", sync_tensorboard=True)
    writer = SummaryWriter(str(tmp_path / "tb"))
    writer.add_scalar("loss", 1.0, 0)
    first.finish()
    writer.close()
    second = runstream.init(project="tb", mode="offline", dir=tmp_path / "b", sync_tensorboard=True)
    second.log({"own": 1})
    second.finish()
    assert [r["loss"] for r in runstream.read_run(first.dir).history] == [1.0]
    assert [
        sorted(k for k in r if not k.startswith("_")) for r in runstream.read_run(second.dir).history
    ] == [["own"]]


def test_import_tensorboard_online_puts_the_run_on_the_server(tmp_path: Path, server: Any) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "logs"))
    for step in range(STEPS):
        writer.add_scalar("loss", 1.0 / (step + 1), step)
    writer.close()
    r = import_tensorboard(
        tmp_path / "logs", tmp_path / "out", "--id", "tbimport", env={"RUNSTREAM_HOST": server.url}
    )
    assert r.returncode == 0, r.stderr[-3000:]
    local = runstream.read_run(tmp_path / "out")
    on_server = runstream.Api(server.url).run(f"{local.run['entity']}/imported/tbimport")
    rows = list(on_server.scan_history(keys=["loss", "global_step"]))
    assert [(row["_step"], row["global_step"]) for row in rows] == [(s, s) for s in range(STEPS)]
    assert [row["loss"] for row in rows] == pytest.approx([1.0 / (s + 1) for s in range(STEPS)])
