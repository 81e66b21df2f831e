"""The checked-in gRPC code matches proto/ (``scripts/gen_proto.py --check``), and the checker does
notice when it does not: it is run on a copy of the tree whose proto was changed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

PROTO = Path("proto/runstream/v1/ingest.proto")
WIRE = Path("ingest/runstream_ingest/wire")
GENERATED = ("ingest_pb2.py", "ingest_pb2.pyi", "ingest_pb2_grpc.py")


def gen_proto(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "gen_proto.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_checked_in_generated_code_is_up_to_date() -> None:
    r = gen_proto(ROOT, "--check")
    assert r.returncode == 0, f"generated code is stale; run `scripts/gen_proto.py`:\n{r.stdout}{r.stderr}"
    assert "up to date" in r.stdout
    # The gRPC module imports its messages relatively, so it never shadows the `runstream` SDK.
    grpc_code = (ROOT / WIRE / "ingest_pb2_grpc.py").read_text()
    assert "from . import ingest_pb2" in grpc_code and "from runstream.v1" not in grpc_code


def _copy_tree(dst: Path) -> Path:
    """The generator, the proto and the generated code, laid out as in the repo."""
    (dst / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "gen_proto.py", dst / "scripts" / "gen_proto.py")
    shutil.copytree(ROOT / "proto", dst / "proto")
    (dst / WIRE).mkdir(parents=True)
    for name in GENERATED:
        shutil.copy2(ROOT / WIRE / name, dst / WIRE / name)
    return dst


def test_check_fails_on_a_changed_proto_until_the_code_is_regenerated(tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path / "repo")
    assert gen_proto(tree, "--check").returncode == 0, "a faithful copy is up to date"

    proto = tree / PROTO
    text = proto.read_text()
    old = "message Heartbeat {\n  double time = 1;\n}"
    assert old in text
    proto.write_text(text.replace(old, "message Heartbeat {\n  double time = 1;\n  string note = 2;\n}"))

    stale = gen_proto(tree, "--check")
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert "stale generated code" in stale.stderr
    assert "+" in stale.stdout and "note" in stale.stdout, "the diff shows what changed"
    assert (tree / WIRE / "ingest_pb2.pyi").read_text() == (ROOT / WIRE / "ingest_pb2.pyi").read_text(), (
        "--check must not write"
    )

    regen = gen_proto(tree)
    assert regen.returncode == 0, regen.stdout + regen.stderr
    assert "note" in (tree / WIRE / "ingest_pb2.pyi").read_text()
    assert gen_proto(tree, "--check").returncode == 0


def test_check_fails_when_a_generated_file_is_missing(tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path / "repo")
    (tree / WIRE / "ingest_pb2_grpc.py").unlink()
    r = gen_proto(tree, "--check")
    assert r.returncode == 1 and "ingest_pb2_grpc.py" in r.stderr, r.stdout + r.stderr
