"""Files kept with runs are per entity when auth is on (docs/files.md, "Who may read a blob"), on
a real ``runstream server --auth`` with keys of two teams: naming another entity's sha256 grants
nothing, one entity's unfinished upload cannot block another's, and unfinished uploads are
bounded in size, in bytes per entity and in age."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from runstream.format import record as rec
from runstream.read.api import authorized
from runstream_ingest.server.args import DB_NAME
from runstream_ingest.server.auth.keys import KeyStore
from runstream_ingest.server.http.blobs import (
    ENV_MAX_FILE_SIZE,
    BlobLimits,
    BlobStore,
    entity_tag,
)
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
from runstream_ingest.sidecar.sources.blob_upload import BlobClient
from tests.support.server import ServerProc, start_server
from tests.support.waiting import wait_for

TEAM_A, TEAM_B, PROJECT = "team-a", "team-b", "p"
SECRET = b"team A's weights " * 4096  # what team B should never read
LATER = b"team A's next checkpoint " * 4096  # what team A uploads after team B's bogus partial


def sha_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_file_record(s: SqliteStorage, entity: str, run: str, path: str, content: bytes) -> None:
    """A run whose sidecar recorded ``path`` with ``content``'s sha256 (as a FILE record)."""
    s.open_run(entity, PROJECT, run, "w", "")
    body = {"path": path, "sha256": sha_of(content), "size": len(content), "policy": "now"}
    s.store_batch(
        entity, PROJECT, run, "w", 1, 1, [rec.Record(1, rec.KIND_FILE, 0, 0, 1.0, rec.pack_body(body))]
    )


def http(
    srv: ServerProc, method: str, path: str, key: str, data: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = authorized(srv.url + path, key, method, data, "application/octet-stream")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


def put(
    srv: ServerProc, key: str, sha: str, data: bytes, offset: int, size: int
) -> tuple[int, dict[str, str], bytes]:
    return http(srv, "PUT", f"/api/v1/blobs/{sha}?offset={offset}&size={size}", key, data)


def download(srv: ServerProc, key: str, entity: str, run: str, path: str) -> tuple[int, bytes]:
    status, _, body = http(srv, "GET", f"/api/v1/runs/{entity}/{PROJECT}/{run}/files/{path}", key)
    return status, body


def upload(srv: ServerProc, key: str, tmp: Path, content: bytes) -> int:
    f = tmp / sha_of(content)
    f.write_bytes(content)
    return BlobClient(srv.url, key).upload(f, sha_of(content), len(content))


def serve(data: Path, *flags: str, **env: str) -> tuple[ServerProc, str, str]:
    """A server with auth on, keys of teams A and B, and runs of both recording files."""
    data.mkdir(parents=True)
    with KeyStore(data / DB_NAME) as ks:
        key_a, key_b = ks.create(TEAM_A)[1], ks.create(TEAM_B)[1]
    s = SqliteStorage(data / DB_NAME)
    store_file_record(s, TEAM_A, "a1", "model.pt", SECRET)
    store_file_record(s, TEAM_A, "a2", "next.pt", LATER)
    store_file_record(s, TEAM_B, "b1", "stolen.pt", SECRET)  # B names A's content by its hash
    s.close()
    return start_server(data, "--auth", *flags, env=env), key_a, key_b


@pytest.fixture
def teams(tmp_path: Path) -> Iterator[tuple[ServerProc, str, str]]:
    srv, key_a, key_b = serve(tmp_path / "server")
    try:
        yield srv, key_a, key_b
    finally:
        srv.stop()


def test_a_key_naming_another_entity_s_sha256_cannot_read_it_nor_learn_it_exists(
    tmp_path: Path, teams: tuple[ServerProc, str, str]
) -> None:
    srv, key_a, key_b = teams
    sha = sha_of(SECRET)
    assert upload(srv, key_a, tmp_path, SECRET) == len(SECRET)
    assert download(srv, key_a, TEAM_A, "a1", "model.pt") == (200, SECRET)
    status, headers, _ = http(srv, "HEAD", f"/api/v1/blobs/{sha}", key_b)
    assert (status, headers["Upload-Offset"]) == (404, "0")  # as for content nobody uploaded
    status, body = download(srv, key_b, TEAM_B, "b1", "stolen.pt")
    assert status == 409 and SECRET not in body  # "not uploaded yet", as for a file never sent
    # A PUT of a part is no shortcut: B is asked for the whole content, not told it is held.
    status, _, body = put(srv, key_b, sha, SECRET[:10], 0, len(SECRET))
    assert status == 200 and json.loads(body) == {"sha256": sha, "offset": 10, "complete": False}
    # Proving possession (uploading the content) is what gives B access; the disk keeps one copy.
    assert upload(srv, key_b, tmp_path, SECRET) == len(SECRET) - 10
    assert download(srv, key_b, TEAM_B, "b1", "stolen.pt") == (200, SECRET)
    assert not list((srv.data_dir / "blobs" / "partial" / entity_tag(TEAM_B)).iterdir())


def test_another_entity_s_bogus_oversized_partial_does_not_block_an_upload(
    tmp_path: Path, teams: tuple[ServerProc, str, str]
) -> None:
    srv, key_a, key_b = teams
    sha = sha_of(LATER)
    junk = os.urandom(len(LATER) + 4096)
    status, _, _ = put(srv, key_b, sha, junk, 0, 10 * len(LATER))  # B claims a larger size
    assert status == 200
    assert http(srv, "HEAD", f"/api/v1/blobs/{sha}", key_a)[1]["Upload-Offset"] == "0"
    assert upload(srv, key_a, tmp_path, LATER) == len(LATER)
    assert download(srv, key_a, TEAM_A, "a2", "next.pt") == (200, LATER)
    # B's partial never hashes to the name it claims: at completion it is discarded, not kept.
    status, headers, _ = http(srv, "HEAD", f"/api/v1/blobs/{sha}", key_b)
    assert status == 404 and headers["Upload-Offset"] == str(len(junk))
    rest = os.urandom(10 * len(LATER) - len(junk))
    assert put(srv, key_b, sha, rest, len(junk), 10 * len(LATER))[0] == 422
    assert http(srv, "HEAD", f"/api/v1/blobs/{sha}", key_b)[1]["Upload-Offset"] == "0"
    assert download(srv, key_a, TEAM_A, "a2", "next.pt") == (200, LATER)


def test_unfinished_uploads_past_the_quota_are_refused_and_expired_ones_removed(tmp_path: Path) -> None:
    # The limits come from both places a person sets them: options, and a variable.
    flags = ("--upload-quota", "1000", "--upload-expiry", "2")
    srv, key_a, key_b = serve(tmp_path / "server", *flags, **{ENV_MAX_FILE_SIZE: "800"})
    try:
        first, second = sha_of(b"first"), sha_of(b"second")
        assert put(srv, key_a, first, b"x" * 600, 0, 700)[0] == 200
        status, _, body = put(srv, key_a, second, b"y" * 600, 0, 700)
        assert status == 507 and b"quota of 1000" in body
        assert put(srv, key_b, second, b"y" * 600, 0, 700)[0] == 200  # the quota is per entity
        status, _, body = put(srv, key_a, second, b"y", 0, 801)
        assert status == 413 and b"at most 800 bytes" in body
        partial = srv.data_dir / "blobs" / "partial" / entity_tag(TEAM_A) / f"{first}.700"
        assert partial.stat().st_size == 600

        def expired() -> bool:  # the server sweeps lazily, from the upload routes
            return http(srv, "HEAD", f"/api/v1/blobs/{first}", key_a)[1]["Upload-Offset"] == "0"

        wait_for(expired, 60, "the unfinished upload to expire", interval=0.25)
        assert not partial.exists()
        assert put(srv, key_a, second, b"y" * 600, 0, 700)[0] == 200  # the quota is free again
    finally:
        srv.stop()


def test_a_partial_left_from_before_a_restart_expires_at_start(tmp_path: Path) -> None:
    now = [1000.0]
    root = tmp_path / "blobs"
    store = BlobStore(root, BlobLimits(upload_expiry=60.0), clock=lambda: now[0])
    tag, sha = entity_tag(TEAM_A), sha_of(b"x")
    with store.open_partial(tag, sha, 10) as f:
        f.write(b"12345")
    part = root / "partial" / tag / f"{sha}.10"
    os.utime(part, (now[0] - 30, now[0] - 30))
    (root / "partial" / sha).write_bytes(b"a partial of the layout before entities")
    BlobStore(root, BlobLimits(upload_expiry=60.0), clock=lambda: now[0])
    assert part.exists() and not (root / "partial" / sha).exists()
    now[0] += 31
    BlobStore(root, BlobLimits(upload_expiry=60.0), clock=lambda: now[0])
    assert not part.exists()
