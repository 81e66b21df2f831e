"""API-key login: ``runstream.login()`` / ``runstream login``, and where a run finds its key.

Resolution, each of host and key on its own, first source that gives one (empty means unset):

    host  argument  > RUNSTREAM_HOST    > WANDB_BASE_URL > the file's default host
    key   (login's argument) > RUNSTREAM_API_KEY > WANDB_API_KEY > the file's key for that host

The file is ``$XDG_CONFIG_HOME/runstream/credentials.json`` (default ``~/.config/runstream/``),
mode 0600, replaced atomically, one key per host::

    {"version": 1, "default_host": "https://rs.example.com",
     "hosts": {"https://rs.example.com": {"api_key": "rsk_..."}}}

A key is never printed or logged: messages use ``mask(key)`` (``rsk_…Ab12``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from runstream.errors import UsageError
from runstream.format.api_key import looks_like_key, mask
from runstream.format.atomic import write_text_atomic

log = logging.getLogger("runstream.login")

HOST_ENV = ("RUNSTREAM_HOST", "WANDB_BASE_URL")
KEY_ENV = ("RUNSTREAM_API_KEY", "WANDB_API_KEY")
FILE_VERSION = 1

__all__ = ["Credentials", "add_login_parser", "credentials", "credentials_path", "login", "mask"]


@dataclass(frozen=True)
class Credentials:
    host: str | None
    api_key: str | None = field(default=None, repr=False)  # repr=False: logging a Credentials is safe
    key_source: str | None = None  # "RUNSTREAM_API_KEY", "WANDB_API_KEY", the file's path, or None

    def __repr__(self) -> str:
        return (
            f"Credentials(host={self.host!r}, api_key={mask(self.api_key)}, key_source={self.key_source!r})"
        )


def credentials_path() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config"  # XDG: relative values are ignored
    return base / "runstream" / "credentials.json"


def normalize_host(host: str) -> str:
    """The form hosts are stored under: a scheme (http:// if none), lower-case, no trailing slash."""
    h = host.strip()
    if "://" not in h:
        h = "http://" + h
    parts = urlsplit(h)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


def _env(names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value, name
    return None


def _read_file(path: Path, strict: bool) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("hosts", {}), dict):
            raise ValueError("not a credentials object")
        return data
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        if strict:
            raise UsageError(f"cannot read {path} ({e}); fix or delete it") from None
        # A broken file must not stop a training run: it runs without a stored key.
        log.warning("ignoring unreadable credentials file %s: %s", path, e)
        return {}


def _write_file(path: Path, data: dict[str, Any]) -> None:
    """Atomic replace; the key never sits in a file more permissive than 0600, not even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_text_atomic(path, json.dumps(data, indent=2) + "\n", mode=0o600)


def credentials(host_override: str | None = None) -> Credentials:
    """The host and key a run should use (see the module doc for the order)."""
    path = credentials_path()
    data = _read_file(path, strict=False)
    env_host = _env(HOST_ENV)
    raw_host = host_override or (env_host[0] if env_host else None) or data.get("default_host")
    host = normalize_host(raw_host) if isinstance(raw_host, str) and raw_host.strip() else None
    env_key = _env(KEY_ENV)
    if env_key:
        return Credentials(host, env_key[0], env_key[1])
    entry = data.get("hosts", {}).get(host) if host else None
    key = entry.get("api_key") if isinstance(entry, dict) else None
    return Credentials(host, key, str(path)) if isinstance(key, str) and key else Credentials(host)


def _prompt(host: str) -> str | None:
    if not sys.stdin.isatty():
        return None
    print(
        f"Paste an API key for {host} (from `runstream server keys create`); it will not echo.",
        file=sys.stderr,
    )
    return getpass.getpass("API key: ").strip() or None


def login(host: str | None = None, key: str | None = None, relogin: bool | None = None) -> bool:
    """Store an API key for a server, so that online runs and ``runstream.Api`` use it.

    Like ``wandb.login``: with a key already configured for the host and no ``relogin``, nothing
    is asked or stored.  A stored key goes into the credentials file (see the module docstring),
    one per host, and makes ``host`` the default one.  ``RUNSTREAM_API_KEY``/``WANDB_API_KEY``,
    when set, win over a stored key.

    Args:
        host: The server's URL (``http://`` is assumed without a scheme).  Default:
            ``RUNSTREAM_HOST``, else ``WANDB_BASE_URL``, else the last host logged in to.
        key: The API key (``rsk_...``, from ``runstream server keys create``).  ``None``: ask
            for one on the terminal (without echo) if stdin is one.
        relogin: Ask for a key even when one is configured.

    Returns:
        True when a key is configured for the host afterwards; False when none was given and
        none could be asked for (stdin is not a terminal).

    Raises:
        UsageError: No host is given or configured; ``key`` is not a well-formed runstream key
            (its shape and checksum are checked; the server is not asked whether it is valid);
            or the credentials file exists but cannot be read.
        OSError: The credentials file cannot be written.

    Blocking: only the terminal prompt waits (for the user); storing writes and fsyncs one small
    file.  There is no network access.
    """
    current = credentials(host)
    target = current.host
    if target is None:
        raise UsageError("no server to log in to: pass host= (--host) or set RUNSTREAM_HOST")
    if key is None:
        if not relogin and current.api_key:
            return True
        key = _prompt(target)
        if key is None:
            return False
    key = key.strip()
    if not looks_like_key(key):
        raise UsageError(
            "that is not a runstream API key (expected rsk_ and 39 more characters with a valid checksum): "
            "was it copied whole?"
        )
    path = credentials_path()
    data = _read_file(path, strict=True)
    data["version"] = FILE_VERSION
    data.setdefault("hosts", {})[target] = {"api_key": key}
    data["default_host"] = target
    _write_file(path, data)
    log.info("stored API key %s for %s in %s", mask(key), target, path)
    return True


def cmd_login(args: argparse.Namespace) -> int:
    key = args.key
    if key == "-":  # for scripts: `echo "$KEY" | runstream login --key -` keeps it out of argv
        key = sys.stdin.readline()
    try:
        ok = login(args.host, key, relogin=args.relogin or None)
    except UsageError as e:
        print(f"runstream: error: {e}", file=sys.stderr)
        return 2
    if not ok:
        print(
            "runstream: error: no API key given and stdin is not a terminal to ask on: "
            "pass --key - (reading stdin) or set RUNSTREAM_API_KEY",
            file=sys.stderr,
        )
        return 1
    creds = credentials(args.host)
    print(f"runstream: logged in to {creds.host} with key {mask(creds.api_key)}", file=sys.stderr)
    if creds.key_source in KEY_ENV:
        print(f"runstream: note: {creds.key_source} is set and wins over the stored key", file=sys.stderr)
    return 0


def add_login_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Adds ``login [--host H] [--key K] [--relogin]``; sets ``func(args) -> int``."""
    p = subparsers.add_parser("login", help="store an API key for a server")
    p.add_argument(
        "--host", default=None, help="server URL (default $RUNSTREAM_HOST or the last one logged in to)"
    )
    p.add_argument(
        "--key",
        default=None,
        help="the API key, or '-' to read it from stdin (without --key you are asked: no shell history)",
    )
    p.add_argument("--relogin", action="store_true", help="ask for a key even when one is configured")
    p.set_defaults(func=cmd_login)
    return p
