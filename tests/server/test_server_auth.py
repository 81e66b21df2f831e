"""API keys on a real ``runstream server --auth`` (docs/auth.md, docs/protocol.md, docs/http-api.md).

Keys are made and revoked with the CLI against the running server's data dir, as an operator
would.  Streams are raw gRPC; the last test is a real training script streaming online.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

import runstream
from runstream.format.api_key import key_id, new_key
from runstream_ingest.wire import ingest_pb2 as pb
from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc
from tests.server.test_ingest_protocol import (
    Duplex,
    acks,
    batch_msg,
    http_get,
    open_msg,
    refusal,
    stream,
    uid,
)
from tests.support.procs import poll, sidecar_processes
from tests.support.server import ServerProc, start_server

TEAM_A, TEAM_B, PROJECT = "team-a", "team-b", "p"
Metadata = list[tuple[str, str]]


def keys_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``runstream server keys ARGS --data-dir DIR``, as an operator runs it next to the server."""
    cmd = [sys.executable, "-m", "runstream.cli.main", "server", "keys", *args, "--data-dir", str(data_dir)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, f"{' '.join(args)} exited {r.returncode}:\n{r.stderr}"
    return r


def create_key(data_dir: Path, entity: str) -> str:
    key = keys_cli(data_dir, "create", "--entity", entity).stdout.strip()
    assert key.startswith("rsk_") and len(key) == 43, "create prints the key alone on stdout"
    return key


def open_run(run_id: str, entity: str = TEAM_A) -> pb.ClientMessage:
    return open_msg(run_id, entity=entity, project=PROJECT)


def bearer(key: str) -> Metadata:
    return [("authorization", f"Bearer {key}")]


class AuthServer:
    def __init__(self, srv: ServerProc) -> None:
        self.srv = srv
        self.key_a = create_key(srv.data_dir, TEAM_A)
        self.key_b = create_key(srv.data_dir, TEAM_B)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
        self.stub = pb_grpc.IngestStub(self.channel)

    def http(self, path: str, key: str | None = None, header: str = "authorization") -> tuple[int, Any]:
        headers = {} if key is None else {header: f"Bearer {key}" if header == "authorization" else key}
        status, _, body = http_get(self.srv.url + path, headers)
        return status, body

    def rows(self, entity: str, run_id: str) -> int:
        status, body = self.http(f"/api/v1/runs/{entity}/{PROJECT}/{run_id}", self.key_a)
        assert status == 200, body
        return int(body["rows"])


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    srv = start_server(tmp_path_factory.mktemp("auth-server"), "--auth")
    try:
        a = AuthServer(srv)
        try:
            yield a
        finally:
            a.channel.close()
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, srv.log()[-4000:]


def _changed(key: str) -> str:
    """The key with one character changed: fails its checksum."""
    return key[:10] + ("A" if key[10] != "A" else "B") + key[11:]


BAD_METADATA: dict[str, Callable[[AuthServer], Metadata]] = {
    "no-key": lambda a: [],
    "unknown-key": lambda a: bearer(new_key()),  # well formed, valid checksum, never issued
    "mangled-key": lambda a: bearer(_changed(a.key_a)),
    "not-a-key": lambda a: bearer("hunter2"),
    "empty-bearer": lambda a: [("authorization", "Bearer ")],
    "basic-scheme": lambda a: [("authorization", f"Basic {a.key_a}")],
    "two-different-keys": lambda a: [*bearer(a.key_a), ("x-runstream-api-key", a.key_b)],
}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_a_stream_without_a_valid_key_is_unauthenticated_and_creates_nothing(
    auth: AuthServer, case: str
) -> None:
    metadata = BAD_METADATA[case](auth)
    run_id = uid()
    err = refusal(auth.stub, [open_run(run_id), batch_msg(1, 2)], metadata)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, f"{err.code()}: {err.details()}"
    for _, value in metadata:
        secret = value.split()[-1] if value.strip() else ""
        assert len(secret) < 8 or secret not in err.details(), "the refusal must not echo the key"
    status, _ = auth.http(f"/api/v1/runs/{TEAM_A}/{PROJECT}/{run_id}", auth.key_a)
    assert status == 404


def test_a_key_of_another_entity_is_permission_denied(auth: AuthServer) -> None:
    run_id = uid()
    err = refusal(auth.stub, [open_run(run_id, TEAM_B), batch_msg(1, 2)], bearer(auth.key_a))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, f"{err.code()}: {err.details()}"
    assert key_id(auth.key_a) in err.details() and auth.key_a not in err.details()
    status, _ = auth.http(f"/api/v1/runs/{TEAM_B}/{PROJECT}/{run_id}", auth.key_b)
    assert status == 404


@pytest.mark.parametrize("header", ["authorization", "x-runstream-api-key"])
def test_a_good_key_streams(auth: AuthServer, header: str) -> None:
    run_id = uid()
    metadata = bearer(auth.key_a) if header == "authorization" else [(header, auth.key_a)]
    answers = stream(
        auth.stub,
        [open_run(run_id), batch_msg(1, 3), batch_msg(4, 5)],
        metadata,
    )
    assert acks(answers) == [3, 5]
    assert auth.rows(TEAM_A, run_id) == 5


def test_revoking_a_key_ends_an_open_stream_at_its_next_batch(auth: AuthServer) -> None:
    key = create_key(auth.srv.data_dir, TEAM_A)
    run_id = uid()
    with Duplex(auth.stub, bearer(key)) as s:
        s.send(open_run(run_id))
        assert s.recv().WhichOneof("msg") == "opened"
        s.send(batch_msg(1, 2))
        assert s.recv().ack.seq == 2
        out = keys_cli(auth.srv.data_dir, "revoke", key_id(key)).stdout
        assert "revoked" in out and key not in out
        s.send(batch_msg(3, 4))
        with pytest.raises(grpc.RpcError) as info:
            s.recv()
    err = info.value
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, f"{err.code()}: {err.details()}"
    assert "revoked" in err.details()
    # What was acked stays; nothing after the revocation was stored; the key opens nothing more.
    assert auth.rows(TEAM_A, run_id) == 2
    again = refusal(auth.stub, [open_run(run_id)], bearer(key))
    assert again.code() == grpc.StatusCode.UNAUTHENTICATED
    assert auth.http(f"/api/v1/runs/{TEAM_A}/{PROJECT}/{run_id}", key)[0] == 401


def test_http_api_needs_a_key_of_the_runs_entity(auth: AuthServer) -> None:
    run_id = uid()
    assert acks(stream(auth.stub, [open_run(run_id), batch_msg(1, 3)], bearer(auth.key_a))) == [3]
    for path in (
        f"/api/v1/runs/{TEAM_A}/{PROJECT}/{run_id}",
        f"/api/v1/runs/{TEAM_A}/{PROJECT}/{run_id}/history",
        f"/api/v1/runs/{TEAM_A}/{PROJECT}",
        f"/api/v1/projects/{TEAM_A}",
    ):
        status, body = auth.http(path)
        assert status == 401 and set(body) == {"error", "message"}, body
        assert body["error"] == "UNAUTHENTICATED" and "API key" in body["message"]
        status, body = auth.http(path, new_key())
        assert status == 401 and body["error"] == "UNAUTHENTICATED", body
        status, body = auth.http(path, auth.key_b)
        assert status == 403 and body["error"] == "PERMISSION_DENIED", body
        assert auth.key_b not in body["message"]
        assert auth.http(path, auth.key_a)[0] == 200
        assert auth.http(path, auth.key_a, header="x-runstream-api-key")[0] == 200
    status, info = auth.http("/api/v1/info")
    assert status == 200, "discovery needs no key"
    assert info["auth"] is True


# --- end to end ----------------------------------------------------------------------------------
TRAIN = """\
import json, sys
import runstream

run = runstream.init(entity="team-a", project="p", config={"lr": 0.1})
for i in range(20):
    run.log({"loss": 1.0 / (i + 1)})
print(json.dumps({"id": run.id, "dir": str(run.dir)}), flush=True)
sys.stdin.readline()  # the test looks at the live processes, then lets us finish
runstream.finish()
print("finished", flush=True)
"""


def _first_line(path: Path) -> dict[str, str] | None:
    text = path.read_text()
    return json.loads(text.splitlines()[0]) if "\n" in text else None


def test_an_online_run_streams_with_the_key_and_never_writes_it_down(
    auth: AuthServer, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_text(TRAIN)
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    key = auth.key_a
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    env.update(RUNSTREAM_HOST=auth.srv.url, RUNSTREAM_API_KEY=key, XDG_CONFIG_HOME=str(tmp_path / "config"))
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, "train.py"], cwd=work, env=env, stdin=subprocess.PIPE, stdout=fo, stderr=fe,
            start_new_session=True,
        )  # fmt: skip

    def diag() -> str:
        return f"exit code {proc.poll()}\nstderr:\n{err.read_text()[-3000:]}"

    try:
        started = poll("the run to start", lambda: proc.poll() is None and _first_line(out), 60, diag=diag)
        assert isinstance(started, dict)
        run_id, run_dir = started["id"], Path(started["dir"])
        # The sidecar got the key in its environment, not on its command line (ps shows that).
        sidecars = poll("the sidecar", lambda: sidecar_processes(work), 30, diag=diag)
        assert isinstance(sidecars, list)
        for p in sidecars:
            with contextlib.suppress(psutil.Error):
                assert not any(key in arg for arg in p.cmdline())
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        assert proc.wait(60) == 0, diag()
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for p in sidecar_processes(work):
            with contextlib.suppress(psutil.Error):
                p.kill()
                p.wait(5)
    assert out.read_text().splitlines()[1:] == ["finished"]
    assert f"streaming to {auth.srv.url}" in err.read_text()

    api = runstream.Api(auth.srv.url, api_key=key)
    run = api.run(f"{TEAM_A}/p/{run_id}")
    assert (run.state, run.rows, run.config) == ("finished", 20, {"lr": 0.1})
    history = list(run.scan_history(keys=["loss"], page_size=7))
    assert [r["loss"] for r in history] == [1.0 / (i + 1) for i in range(20)]

    # The key is nowhere on disk: not in the script's output, the run dir, or the server's log.
    written = [out, err, auth.srv.data_dir / "server.log", *(p for p in run_dir.rglob("*") if p.is_file())]
    assert any(p.parent.name == "journal" for p in written) and any(p.name == "upload.json" for p in written)
    for path in written:
        assert key.encode() not in path.read_bytes(), f"the API key is written in {path}"


# --- TLS -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_with_tls_both_grpc_and_the_http_api_speak_tls(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """``--tls-cert/--tls-key`` protect keys on both ports: the server advertises ``https://``,
    so the HTTP API (reads, and the discovery call clients send their key with) must speak it."""
    cert, cert_key = certificate
    srv = start_server(tmp_path / "srv", "--auth", "--tls-cert", str(cert), "--tls-key", str(cert_key))
    try:
        assert srv.url.startswith("https://")
        key = create_key(srv.data_dir, TEAM_A)
        run_id = uid()
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{srv.grpc_port}", creds) as channel:
            answers = stream(pb_grpc.IngestStub(channel), [open_run(run_id), batch_msg(1, 2)], bearer(key))
        assert acks(answers) == [2]

        tls = ssl.create_default_context(cafile=str(cert))
        req = urllib.request.Request(
            f"{srv.url}/api/v1/runs/{TEAM_A}/{PROJECT}/{run_id}", headers=dict(bearer(key))
        )
        try:
            with urllib.request.urlopen(req, timeout=30, context=tls) as resp:
                assert json.load(resp)["rows"] == 2
        except urllib.error.URLError as e:
            raise AssertionError(f"the HTTP API at {srv.url} does not speak TLS: {e.reason}") from None
    finally:
        srv.stop()
