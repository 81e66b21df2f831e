"""Client login: the 0600 credentials file, env-over-file resolution, and keys kept out of all output."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import stat
import sys
from pathlib import Path

import pytest

from runstream.errors import UsageError
from runstream.format.api_key import mask, new_key
from runstream.login import Credentials, add_login_parser, credentials, credentials_path, login

HOST = "http://rs.example.com:7780"


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _cli(*argv: str) -> int:
    p = argparse.ArgumentParser(prog="runstream")
    add_login_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["login", *argv])
    return int(args.func(args))


def test_login_writes_a_0600_file(config_home: Path) -> None:
    key = new_key()
    old = os.umask(0)  # a permissive umask must not loosen the file
    try:
        assert login(HOST + "/", key) is True
    finally:
        os.umask(old)
    path = config_home / "runstream" / "credentials.json"
    assert credentials_path() == path
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    data = json.loads(path.read_text())
    assert data["default_host"] == HOST and data["hosts"][HOST] == {"api_key": key}
    assert credentials() == Credentials(HOST, key, str(path))
    assert not list(path.parent.glob(".*tmp"))  # no temp file left behind


def test_default_dir_without_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert credentials_path() == tmp_path / "home" / ".config" / "runstream" / "credentials.json"


def test_one_key_per_host_and_a_loose_file_is_tightened(config_home: Path) -> None:
    k1, k2 = new_key(), new_key()
    login("RS.example.com:7780", k1)  # normalised: scheme added, lower-cased
    path = credentials_path()
    path.chmod(0o644)
    login("https://other.example.com", k2)
    assert _mode(path) == 0o600
    assert credentials(HOST).api_key == k1
    assert credentials().host == "https://other.example.com" and credentials().api_key == k2
    assert credentials("http://unknown:1").api_key is None


def test_env_wins_over_file(monkeypatch: pytest.MonkeyPatch) -> None:
    file_key, wandb_key, rs_key = new_key(), new_key(), new_key()
    login(HOST, file_key)
    monkeypatch.setenv("WANDB_API_KEY", wandb_key)
    assert credentials().api_key == wandb_key
    monkeypatch.setenv("RUNSTREAM_API_KEY", rs_key)
    c = credentials()
    assert (c.host, c.api_key, c.key_source) == (HOST, rs_key, "RUNSTREAM_API_KEY")

    monkeypatch.setenv("WANDB_BASE_URL", "http://wandb-style:1")
    assert credentials().host == "http://wandb-style:1"
    monkeypatch.setenv("RUNSTREAM_HOST", "http://rs-env:2/")
    assert credentials().host == "http://rs-env:2"
    assert credentials("http://explicit:3").host == "http://explicit:3"
    monkeypatch.setenv("RUNSTREAM_API_KEY", "")  # empty means unset
    assert credentials().api_key == wandb_key


def test_login_refuses_a_mangled_key_and_a_missing_host() -> None:
    key = new_key()
    with pytest.raises(UsageError, match="copied whole") as e:
        login(HOST, key[:-1] + ("0" if key[-1] != "0" else "1"))
    assert key[4:-4] not in str(e.value)
    assert not credentials_path().exists()
    with pytest.raises(UsageError, match="RUNSTREAM_HOST"):
        login(None, key)


def test_configured_key_is_not_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    login(HOST, new_key())
    monkeypatch.setattr("getpass.getpass", lambda prompt="": pytest.fail("asked"))
    assert login() is True


def test_unreadable_file_does_not_break_a_run(caplog: pytest.LogCaptureFixture) -> None:
    path = credentials_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, "runstream.login"):
        assert credentials(HOST).api_key is None
    assert "ignoring unreadable" in caplog.text
    with pytest.raises(UsageError, match="fix or delete"):
        login(HOST, new_key())  # ...but login will not overwrite what it cannot read


def test_cli_never_shows_the_key(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key()
    caplog.set_level(logging.DEBUG)
    assert _cli("--host", HOST, "--key", key) == 0
    monkeypatch.setenv("RUNSTREAM_API_KEY", key)
    assert _cli("--host", HOST, "--key", key) == 0  # prints a note that the env var wins
    out, err = capsys.readouterr()
    logged = caplog.text + repr(credentials()) + str(credentials())
    for text in (out, err, logged):
        assert key not in text and key[4:-4] not in text
    assert mask(key) in err and "RUNSTREAM_API_KEY is set" in err
    assert credentials().api_key == key


def test_cli_prompts_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key()
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    assert _cli("--host", HOST) == 1  # not a terminal, no --key: a clear error
    assert "not a terminal" in capsys.readouterr().err

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("getpass.getpass", lambda prompt="": key + "\n")
    assert _cli("--host", HOST) == 0
    assert credentials().api_key == key
    out, err = capsys.readouterr()
    assert key not in out + err


def test_cli_reads_key_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key()
    monkeypatch.setattr(sys, "stdin", io.StringIO(key + "\n"))
    assert _cli("--host", HOST, "--key", "-") == 0
    assert credentials().api_key == key
    assert _cli("--host", HOST, "--key", "rsk_garbage") == 2
    out, err = capsys.readouterr()
    assert key not in out + err and "copied whole" in err
