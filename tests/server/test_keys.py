"""API keys: the offline-checkable format, the hashed store, revocation, the gRPC/HTTP checks, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runstream.format import api_key as k
from runstream.format.api_key import looks_like_key, mask, new_key
from runstream_ingest.server.auth.guard import Authenticator, AuthError, auth_required, insecure_warning
from runstream_ingest.server.auth.keys import KeyStore

A_KEY = new_key()  # one key for the property tests: the checksum argument does not depend on which


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KeyStore]:
    with KeyStore(tmp_path / "runstream.db") as s:
        yield s


# --- format -------------------------------------------------------------------------------------


def test_format() -> None:
    key = new_key()
    assert len(key) >= 40 and len(key) == k.KEY_LEN
    assert key.startswith("rsk_") and looks_like_key(key)
    # 24 random bytes = 192 bits, and the body is wide enough to hold any of them.
    assert k.RANDOM_BYTES * 8 >= 128
    assert 62**k.BODY_LEN >= 2 ** (8 * k.RANDOM_BYTES)
    assert len(key) == len(k.PREFIX) + k.BODY_LEN + k.CHECK_LEN
    assert len({new_key() for _ in range(100)}) == 100


@given(pos=st.integers(0, k.KEY_LEN - 1), ch=st.characters(codec="utf-8"))
def test_checksum_catches_any_single_character_change(pos: int, ch: str) -> None:
    if ch == A_KEY[pos]:
        return
    assert not looks_like_key(A_KEY[:pos] + ch + A_KEY[pos + 1 :])


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "rsk_",
        "x" * 43,
        "rsk_" + "0" * 39,
        A_KEY + "0",
        A_KEY[:-1],
        A_KEY.upper(),
        " " + A_KEY[1:],
        None,
        42,
    ],
)
def test_garbage_rejected(garbage: object) -> None:
    assert not looks_like_key(garbage)


def test_mask() -> None:
    assert mask(A_KEY) == "rsk_…" + A_KEY[-4:]
    assert A_KEY[4:-4] not in mask(A_KEY)
    assert mask(None) == "(none)" and mask("short") == "****"


# --- store --------------------------------------------------------------------------------------


def test_only_the_hash_is_stored(tmp_path: Path, store: KeyStore) -> None:
    info, key = store.create("team", "ci-bot")
    assert info.id == k.key_id(key) and info.entity == "team" and info.service_account == "ci-bot"
    assert store.authenticate(key) == info
    files = list(tmp_path.glob("runstream.db*"))  # the WAL too: a fresh commit lives there
    assert files
    for f in files:
        data = f.read_bytes()
        for needle in (key, key[4:], key[4:-6]):
            assert needle.encode() not in data, f.name
    assert "hash" not in repr(info) and key not in repr(info)


def test_authenticate_rejects(store: KeyStore) -> None:
    store.create("team")
    assert store.authenticate(new_key()) is None  # well-formed, unknown
    assert store.authenticate("rsk_nonsense") is None


def test_revocation_is_seen_at_once_by_another_connection(tmp_path: Path, store: KeyStore) -> None:
    info, key = store.create("team")
    assert store.is_active(info.id)
    with KeyStore(tmp_path / "runstream.db") as cli:  # the CLI: another process, another connection
        assert cli.revoke(info.id) is True
        assert cli.revoke(info.id) is False  # already revoked
        assert cli.revoke("nosuchkey") is False
    assert store.authenticate(key) is None
    assert not store.is_active(info.id)
    got = store.get(info.id)
    assert got is not None and got.revoked_at is not None and not got.active


def test_touch_writes_at_most_once_a_minute(store: KeyStore) -> None:
    info, _ = store.create("team")
    store.touch(info.id)
    first = store.get(info.id)
    assert first is not None and first.last_used_at is not None
    store.touch(info.id)
    assert store.get(info.id) == first


def test_bad_names_refused(store: KeyStore) -> None:
    with pytest.raises(ValueError, match="entity"):
        store.create("a b")
    with pytest.raises(ValueError, match="service account"):
        store.create("team", "../x")


# --- gRPC / HTTP checks -------------------------------------------------------------------------


def _code(auth: Authenticator, md: list[tuple[str, object]], entity: str | None) -> grpc.StatusCode:
    with pytest.raises(AuthError) as e:
        auth.check(md, entity)
    return e.value.code


def test_authenticator(store: KeyStore) -> None:
    info, key = store.create("team")
    auth = Authenticator(store, required=True)
    for md, entity in [
        ([("authorization", f"Bearer {key}")], "team"),
        ([("x-runstream-api-key", key)], "team"),
        ([("x-runstream-api-key", key)], None),  # no entity: any valid key will do
    ]:
        got = auth.check(md, entity)
        assert got is not None and got.id == info.id
    u, p = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
    assert _code(auth, [], "team") == u
    assert _code(auth, [("authorization", "Bearer " + new_key())], "team") == u
    assert _code(auth, [("authorization", "Bearer not-a-key")], "team") == u
    assert _code(auth, [("authorization", f"Basic {key}")], "team") == u
    assert _code(auth, [("x-runstream-api-key", key), ("x-runstream-api-key", new_key())], "team") == u
    assert _code(auth, [("authorization", f"Bearer {key}")], "other-team") == p


def test_auth_errors_never_contain_the_key(store: KeyStore) -> None:
    _, key = store.create("team")
    auth = Authenticator(store, required=True)
    for md, entity in [
        ([("x-runstream-api-key", key)], "other"),
        ([("authorization", f"Basic {key}")], "team"),
    ]:
        with pytest.raises(AuthError) as e:
            auth.check(md, entity)
        assert key not in str(e.value) and key[4:-4] not in e.value.message


def test_http_headers(store: KeyStore) -> None:
    info, key = store.create("team")
    auth = Authenticator(store, required=True)
    got = auth.check_http({"Authorization": f"bearer {key}"}, "team")
    assert got is not None and got.id == info.id
    with pytest.raises(AuthError) as e:
        auth.check_http({}, "team")
    assert e.value.http_status == 401
    with pytest.raises(AuthError) as e:
        auth.check_http({"X-Runstream-Api-Key": key}, "elsewhere")
    assert e.value.http_status == 403


def test_auth_off_lets_anyone_in(store: KeyStore) -> None:
    auth = Authenticator(store, required=False)
    assert auth.check([], "team") is None
    auth.recheck(None)


def test_recheck_after_revocation(store: KeyStore) -> None:
    _, key = store.create("team")
    auth = Authenticator(store, required=True)
    info = auth.check([("x-runstream-api-key", key)], "team")
    auth.recheck(info)
    assert info is not None and store.revoke(info.id)
    with pytest.raises(AuthError) as e:
        auth.recheck(info)
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("host", "flag", "required", "warns"),
    [
        ("127.0.0.1", False, False, False),
        ("localhost", False, False, False),
        ("::1", False, False, False),
        ("[::1]", False, False, False),
        ("127.0.0.1", True, True, False),
        ("0.0.0.0", False, True, True),
        ("::", False, True, True),
        ("", False, True, True),
        ("10.1.2.3", False, True, True),
        ("myhost.example.com", False, True, True),
    ],
)
def test_auth_required_and_warning(host: str, flag: bool, required: bool, warns: bool) -> None:
    assert auth_required(host, flag) is required
    assert (insecure_warning(host, tls=False) is not None) is warns
    assert insecure_warning(host, tls=True) is None


# --- CLI ------------------------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = "import sys; from runstream_ingest.server.auth.keys_cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "keys", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_keys_cli(tmp_path: Path) -> None:
    d = str(tmp_path / "srv")
    assert _cli("list", "--data-dir", d).returncode == 1  # no database: a mistyped dir is an error
    made = _cli("create", "--entity", "team", "--service-account", "ci", "--data-dir", d)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert looks_like_key(key) and "not be shown again" in made.stderr and key not in made.stderr
    with KeyStore(Path(d) / "runstream.db") as s:
        info = s.authenticate(key)
    assert info is not None

    listed = _cli("list", env={"RUNSTREAM_SERVER_DIR": d})
    assert listed.returncode == 0
    assert info.id in listed.stdout and "ci" in listed.stdout
    assert key not in listed.stdout + listed.stderr and key[4:-6] not in listed.stdout

    revoked = _cli("revoke", info.id, "--data-dir", d)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert _cli("revoke", "nope", "--data-dir", d).returncode == 1
    with KeyStore(Path(d) / "runstream.db") as s:
        assert s.authenticate(key) is None
    assert _cli("create", "--entity", "bad name", "--data-dir", d).returncode == 2


def test_checksum_catches_every_single_substitution_exhaustively() -> None:
    for pos in range(len(k.PREFIX), k.KEY_LEN):
        for ch in k.ALPHABET:
            if ch != A_KEY[pos]:
                assert not looks_like_key(A_KEY[:pos] + ch + A_KEY[pos + 1 :]), (pos, ch)


def test_touch_never_waits_for_a_busy_database(tmp_path: Path, store: KeyStore) -> None:
    import sqlite3
    import time

    info, _ = store.create("team")
    writer = sqlite3.connect(tmp_path / "runstream.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the server's storage writer, mid-transaction
    try:
        t0 = time.monotonic()
        store.touch(info.id)  # skipped, not waited for: it runs on the server's event loop
        assert time.monotonic() - t0 < 1.0
        assert store.is_active(info.id)  # WAL: reads go on while the writer holds the lock
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    got = store.get(info.id)
    assert got is not None and got.last_used_at is None
