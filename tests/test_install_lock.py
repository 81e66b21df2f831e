"""Installs are reproducible, and the runtime floors are honest.

* constraints.txt pins, exactly, everything ``make install`` puts in the venv, and ``make install``
  installs through it: a new release on the package index cannot change what the tests run with.
* The generated gRPC code refuses to import under a grpcio or protobuf older than the ones that
  generated it (its version stamps), so pyproject.toml's floors are exactly those stamps: a lower
  floor would let pip install a combination that fails at import.
* ``scripts/gen_proto.py --check`` tells a real change of the proto from another tool release.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.format.test_proto_generated import gen_proto

# Python 3.11+; the lock is made with 3.11 (its header says so) and pins packages that need it, so
# there is no 3.10 test environment for these tests to run in.
tomllib = pytest.importorskip("tomllib")

# The repository: the nearest folder above that holds pyproject.toml, wherever in tests/ this file lives.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
LOCK = ROOT / "constraints.txt"
WIRE = Path("ingest/runstream_ingest/wire")
PROTO = Path("proto/runstream/v1/ingest.proto")
GENERATED = ("ingest_pb2.py", "ingest_pb2.pyi", "ingest_pb2_grpc.py")
# What `make install` must always install from the lock as well (the editable build uses them).
BOOTSTRAP = ("pip", "setuptools", "wheel")


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def project_requirements() -> list[Requirement]:
    project = pyproject()["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["test"]]]


def lock_pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        assert m, f"constraints.txt line {line!r} is not an exact `name==version` pin"
        pins[canonicalize_name(m[1])] = Version(m[2])
    return pins


def grpc_stamp() -> Version:
    code = (ROOT / WIRE / "ingest_pb2_grpc.py").read_text()
    m = re.search(r"^GRPC_GENERATED_VERSION = '([^']+)'$", code, re.M)
    assert m, "ingest_pb2_grpc.py has no GRPC_GENERATED_VERSION"
    return Version(m[1])


def protobuf_stamp() -> Version:
    code = (ROOT / WIRE / "ingest_pb2.py").read_text()
    m = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),\s*''",
        code,
    )
    assert m, "ingest_pb2.py has no ValidateProtobufRuntimeVersion(PUBLIC, major, minor, patch, '')"
    checked = Version(".".join(m.groups()))
    comment = re.search(r"^# Protobuf Python Version: (\S+)$", code, re.M)
    assert comment and Version(comment[1]) == checked, "the gencode comment and its import check disagree"
    return checked


def floor(name: str) -> Version:
    """The version after ``>=`` in pyproject's runtime dependency on ``name``."""
    (req,) = [r for r in project_requirements() if canonicalize_name(r.name) == name]
    floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
    assert len(floors) == 1, f"{req} should have exactly one `>=` floor"
    return floors[0]


# --- the floors ---------------------------------------------------------------------------------


def test_the_runtime_floors_are_what_the_generated_code_demands() -> None:
    assert floor("grpcio") == grpc_stamp(), (
        f"pyproject.toml says grpcio>={floor('grpcio')}, but wire/ingest_pb2_grpc.py refuses any grpcio "
        f"older than {grpc_stamp()} (GRPC_GENERATED_VERSION): make the floor grpcio>={grpc_stamp()}"
    )
    assert floor("protobuf") == protobuf_stamp(), (
        f"pyproject.toml says protobuf>={floor('protobuf')}, but wire/ingest_pb2.py refuses any protobuf "
        f"older than its gencode version {protobuf_stamp()}: make the floor protobuf>={protobuf_stamp()}"
    )


def test_the_locked_grpcio_tools_is_the_one_that_generated_the_checked_in_code() -> None:
    tools = [r for r in project_requirements() if canonicalize_name(r.name) == "grpcio-tools"]
    assert [str(s) for r in tools for s in r.specifier] == [f"=={grpc_stamp()}"], (
        "the test extra pins grpcio-tools exactly, to the version that stamped wire/: a newer one "
        "would restamp the code (and so raise the floors) on the next `make proto`"
    )
    assert lock_pins()["grpcio-tools"] == grpc_stamp()


def test_the_locked_generator_reproduces_the_checked_in_code_byte_for_byte() -> None:
    installed = Version(metadata.version("grpcio-tools"))
    if installed != lock_pins()["grpcio-tools"]:
        pytest.skip(f"grpcio-tools {installed} is installed, not the locked one: `make install`")
    r = gen_proto(ROOT, "--check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "note:" not in r.stdout, (
        f"the locked generator's stamps differ from the checked-in ones:\n{r.stdout}"
    )


def test_the_generated_code_imports_without_a_warning_under_the_installed_runtimes() -> None:
    # A fresh interpreter: the import (and protobuf's version check, which may warn) happens once.
    r = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import runstream_ingest.wire.ingest_pb2_grpc"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr


FLOOR_CHECK = """
import concurrent.futures

import google.protobuf
import grpc

from runstream_ingest.wire import ingest_pb2 as pb, ingest_pb2_grpc as pb_grpc


class Echo(pb_grpc.IngestServicer):
    def Stream(self, request_iterator, context):
        for m in request_iterator:
            yield pb.ServerMessage(ack=pb.Ack(seq=m.batch.last_seq))


server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
pb_grpc.add_IngestServicer_to_server(Echo(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    batches = [pb.ClientMessage(batch=pb.Batch(first_seq=1, last_seq=n)) for n in (3, 7)]
    acks = [r.ack.seq for r in pb_grpc.IngestStub(channel).Stream(iter(batches), timeout=30)]
server.stop(None)
assert acks == [3, 7], acks
print("grpcio", grpc.__version__, "protobuf", google.protobuf.__version__)
"""


@pytest.mark.slow
def test_the_generated_code_works_with_the_floor_grpcio_and_protobuf(tmp_path: Path) -> None:
    """The floors are real: in a venv with exactly grpcio and protobuf at pyproject's floors (from the
    package index, or pip's cache), the generated code imports without a warning and streams over a
    loopback channel."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    pins = [f"grpcio=={floor('grpcio')}", f"protobuf=={floor('protobuf')}"]
    # Wheels only, and no dependencies: exactly these two versions, whatever else the index serves.
    pip = [sys.executable, "-m", "pip", "--python", str(py), "--disable-pip-version-check"]
    install = subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--only-binary=:all:", *pins],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    # Only the generated code, in its package, so nothing else of the project's is imported.
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / WIRE, src / "runstream_ingest" / "wire", ignore=shutil.ignore_patterns("__pycache__")
    )
    (src / "runstream_ingest" / "__init__.py").write_text("")
    r = subprocess.run(
        [str(py), "-W", "error", "-c", FLOOR_CHECK],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(src)},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["grpcio", str(floor("grpcio")), "protobuf", str(floor("protobuf"))]


# --- the lock -----------------------------------------------------------------------------------


def test_every_requirement_is_pinned_in_the_lock_at_a_version_it_accepts() -> None:
    pins = lock_pins()
    build = [Requirement(r) for r in pyproject()["build-system"]["requires"]]
    for req in [*project_requirements(), *build]:
        if req.marker is not None and not req.marker.evaluate({"extra": "test"}):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a requirement but constraints.txt does not pin it: `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, which `{req}` does not accept: `make lock`"
        )
    for name in BOOTSTRAP:
        assert name in pins, f"constraints.txt must pin {name}: `make install` installs it first"


def test_the_lock_says_how_it_was_made() -> None:
    header = "".join(line for line in LOCK.read_text().splitlines(True) if line.startswith("#"))
    assert "make lock" in header and "pip freeze" in header
    assert "runstream" not in lock_pins(), "the project itself is installed editable, not pinned"


def make(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Without the flags of an outer `make test` (MAKEFLAGS): this make must do only what it is told.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(
        ["make", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_make_install_installs_everything_through_the_lock() -> None:
    # -n prints the recipe without running it (the nested `make deb` is given -n too); -B prints it
    # even where the venv is already installed.
    r = make("-n", "-B", "install", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    pip_installs = [line for line in r.stdout.splitlines() if "pip install" in line]
    assert len(pip_installs) >= 2, r.stdout
    for line in pip_installs:
        assert f"-c {LOCK.name}" in line, f"this install is not constrained by the lock: {line}"
    assert re.search(r"pip install .*\bpip setuptools wheel\b", pip_installs[0]), (
        "the locked pip, setuptools and wheel come first"
    )
    (editable,) = [line for line in pip_installs if " -e " in line]
    assert "--no-build-isolation" in editable, "the editable build uses the locked setuptools"


def test_a_new_lock_reinstalls(tmp_path: Path) -> None:
    """``make -q`` on the stamp: up to date after an install, out of date once the lock changes."""
    shutil.copy2(ROOT / "Makefile", tmp_path / "Makefile")
    for name in ("pyproject.toml", "setup.py", LOCK.name):
        (tmp_path / name).write_text("")
        os.utime(tmp_path / name, (1_000_000, 1_000_000))
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / ".installed").write_text("")
    os.utime(tmp_path / ".venv" / ".installed", (2_000_000, 2_000_000))

    def up_to_date() -> bool:
        q = make("-q", ".venv/.installed", cwd=tmp_path)
        assert q.returncode in (0, 1), q.stderr
        return q.returncode == 0

    assert up_to_date()
    os.utime(tmp_path / LOCK.name, (3_000_000, 3_000_000))
    assert not up_to_date(), "the install stamp must depend on constraints.txt"
