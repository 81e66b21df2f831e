"""The sidecar's media stage: MEDIA records written by the SDK, damaged, and read back by the
stage (docs/media.md, "The MEDIA record").  Whatever the bytes, the stage hands on a run of valid
records with the same seqs, and every media value of the row is a pointer or a counted error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runstream
from runstream.format import record as rec
from runstream.format.ring_layout import W_MEDIA_FAILED, W_MEDIA_FREED, W_MEDIA_STAGED
from runstream.media.pack import MediaPacker
from runstream_ingest.sidecar.media.stage import MediaStage, safe_key
from runstream_ingest.sidecar.ring_reader import Span


class Words(dict[int, int]):
    def __missing__(self, key: int) -> int:
        return 0


def sdk_records(run_dir: Path, words: Words, row: dict[str, Any], step: int = 0) -> list[rec.Record]:
    """What the SDK pushes for ``row``: its MEDIA records, then the row."""
    pushed: list[tuple[int, int, float, bytes]] = []

    def push(kind: int, step: int, t: float, parts: list[Any]) -> None:
        pushed.append((kind, step, t, b"".join(parts)))

    packer = MediaPacker(run_dir, push, words, 8 << 20, 1 << 30, lambda cfg: None)
    body = packer.pack_row(row, step, 1.0)
    pushed.append((rec.KIND_ROW, step, 1.0, body))
    return [rec.Record(i + 1, k, 0, s, t, b) for i, (k, s, t, b) in enumerate(pushed)]


def span_of(records: list[rec.Record]) -> Span:
    data = b"".join(rec.encode(r.seq, r.kind, r.step, r.time, r.body, r.flags) for r in records)
    control = [r for r in records if r.kind != rec.KIND_ROW]
    return Span(data, len(records), records[0].seq, records[-1].seq, control)


def stage_for(tmp_path: Path, words: Words) -> tuple[MediaStage, list[str]]:
    uploads: list[str] = []
    return MediaStage(tmp_path, words, uploads.append), uploads


def test_a_row_of_media_becomes_pointers_and_uploads(tmp_path: Path) -> None:
    words = Words()
    img = runstream.Image(np.full((4, 4, 3), 7, np.uint8), caption="c")
    records = sdk_records(tmp_path, words, {"img": img, "loss": 0.5, "imgs": [img, img]})
    stage, uploads = stage_for(tmp_path, words)
    out = list(rec.iter_records(stage.rewrite(span_of(records)).data))
    assert [r.seq for r in out] == [r.seq for r in records]
    assert all(r.flags & rec.FLAG_MEDIA_DONE for r in out if r.kind == rec.KIND_MEDIA)
    row = out[-1].value()
    assert row["loss"] == 0.5 and row["img"]["_type"] == "image-file" and row["img"]["caption"] == "c"
    assert row["imgs"]["_type"] == "images/separated" and row["imgs"]["count"] == 2
    # files are named by key, step and content: the list's two identical images are one file
    assert set(uploads) == {row["img"]["path"], *row["imgs"]["filenames"]} and len(set(uploads)) == 2
    assert not stage.waiting


def test_a_staged_payload_is_freed_only_once_journaled(tmp_path: Path) -> None:
    words = Words()
    frames = np.random.default_rng(0).integers(0, 255, (8, 3, 256, 256), dtype=np.uint8)  # 1.5 MB
    records = sdk_records(tmp_path, words, {"v": runstream.Video(frames)})
    staged = list((tmp_path / "media-staging").glob("*"))
    assert len(staged) == 1 and words[W_MEDIA_STAGED] == frames.nbytes, "past 1 MiB a payload is staged"
    stage, _ = stage_for(tmp_path, words)
    stage.rewrite(span_of(records))
    assert staged[0].exists() and words[W_MEDIA_FREED] == 0
    stage.journaled()
    assert not staged[0].exists() and words[W_MEDIA_FREED] == words[W_MEDIA_STAGED]


def test_a_row_waits_in_the_next_span(tmp_path: Path) -> None:
    words = Words()
    records = sdk_records(tmp_path, words, {"img": runstream.Image(np.zeros((2, 2), np.uint8))})
    stage, _ = stage_for(tmp_path, words)
    stage.rewrite(span_of(records[:-1]))
    assert stage.waiting, "a batch must not be cut between the media and its row"
    (row,) = rec.iter_records(stage.rewrite(span_of(records[-1:])).data)
    assert row.value()["img"]["_type"] == "image-file" and not stage.waiting


def test_keys_become_safe_paths() -> None:
    assert safe_key("/a/../b/./c") == "a/_/b/_/c"
    assert safe_key("val/img?x") == "val/img_x"
    assert safe_key("") == "_"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=400), flip=st.integers(min_value=0, max_value=255))
def test_damaged_media_records_are_counted_never_fatal(tmp_path: Path, cut: int, flip: int) -> None:
    words = Words()
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    img = runstream.Image(pixels, masks={"m": {"mask_data": np.eye(4)}})
    t = runstream.Table(columns=["a", "img"], data=[[1, img]])
    records = sdk_records(tmp_path, words, {"img": img, "t": t, "x": 1})
    damaged = []
    for r in records:
        body = bytearray(r.body)
        if r.kind == rec.KIND_MEDIA and cut < len(body):
            body[cut] ^= flip or 0xFF
        damaged.append(r._replace(body=bytes(body)))
    stage, _ = stage_for(tmp_path, words)
    out = list(rec.iter_records(stage.rewrite(span_of(damaged)).data))
    assert [r.seq for r in out] == [r.seq for r in records]
    row = out[-1].value()
    assert row["x"] == 1
    for key in ("img", "t"):
        value = row[key]
        assert isinstance(value, dict) and "_type" in value
        assert ("error" in value) or ("path" in value)
    errors = sum(1 for r in out if r.kind == rec.KIND_MEDIA and "error" in r.value())
    assert words[W_MEDIA_FAILED] == errors == stage.failed
