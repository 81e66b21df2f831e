"""``runstream server keys create|list|revoke``: manage API keys in a server's data dir.

Works while the server runs (the database is in WAL mode): a revocation takes effect on the
server's next request or batch.  ``create`` prints the key alone on stdout, once, so that
``KEY=$(runstream server keys create --entity E)`` works; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

from runstream.format.api_key import key_id, looks_like_key
from runstream_ingest.server.auth.keys import KeyInfo, KeyStore

# Same defaults as ``runstream server`` (main.py): the keys live in the server's database.
DEFAULT_DATA_DIR = "~/.runstream/server"
DB_NAME = "runstream.db"


def data_dir(value: str | None) -> Path:
    return Path(value or os.environ.get("RUNSTREAM_SERVER_DIR") or DEFAULT_DATA_DIR).expanduser()


def _err(msg: str) -> None:
    print(f"runstream: error: {msg}", file=sys.stderr)


def _open(args: argparse.Namespace, create: bool) -> KeyStore | None:
    root = data_dir(getattr(args, "data_dir", None))
    db = root / DB_NAME
    if create:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    elif not db.exists():  # list/revoke must not conjure an empty database in a mistyped dir
        _err(f"no server database at {db} (wrong --data-dir?)")
        return None
    return KeyStore(db)


def cmd_create(args: argparse.Namespace) -> int:
    store = _open(args, create=True)
    if store is None:
        return 1
    with store:
        try:
            info, key = store.create(args.entity, args.service_account)
        except ValueError as e:
            _err(str(e))
            return 2
    owner = f"service account {info.service_account!r} of " if info.service_account else ""
    print(f"created API key {info.id} for {owner}entity {info.entity!r}", file=sys.stderr)
    print(key, flush=True)
    print("This key will not be shown again: store it now (`runstream login --host URL`).", file=sys.stderr)
    return 0


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t)) if t is not None else "-"


def format_table(keys: list[KeyInfo]) -> str:
    """The ``keys list`` table.  KeyInfo carries no key or hash, so neither can end up here."""
    head = ("ID", "ENTITY", "SERVICE ACCOUNT", "CREATED", "LAST USED", "REVOKED")
    rows = [head]
    for k in keys:
        times = (_when(k.created_at), _when(k.last_used_at), _when(k.revoked_at))
        rows.append((k.id, k.entity, k.service_account or "-", *times))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def cmd_list(args: argparse.Namespace) -> int:
    store = _open(args, create=False)
    if store is None:
        return 1
    with store:
        keys = store.list()
    print(format_table(keys) if keys else "no API keys")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    # A leaked key may be pasted instead of its id; only the id is ever echoed back.
    kid = key_id(args.id) if looks_like_key(args.id) else args.id
    store = _open(args, create=False)
    if store is None:
        return 1
    with store:
        if store.revoke(kid):
            print(f"revoked API key {kid}; it stops working at once, open streams at their next batch")
            return 0
        info = store.get(kid)
    if info is not None:
        print(f"API key {kid} was already revoked at {_when(info.revoked_at)}")
        return 0
    _err(f"no API key with id {kid!r} (see `runstream server keys list`)")
    return 1


def _run(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except sqlite3.Error as e:
            _err(f"server database: {e}")
            return 1

    return run


def add_keys_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Adds ``keys create|list|revoke`` to ``subparsers``; each sets ``func(args) -> int``."""
    keys = subparsers.add_parser("keys", help="create, list and revoke API keys")
    sub = keys.add_subparsers(dest="keys_command", required=True, metavar="{create,list,revoke}")

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        # SUPPRESS: an absent option leaves any --data-dir given before `keys` in place.
        p.add_argument(
            "--data-dir",
            default=argparse.SUPPRESS,
            help=f"the server's data dir (default $RUNSTREAM_SERVER_DIR or {DEFAULT_DATA_DIR})",
        )
        return p

    create = with_dir(sub.add_parser("create", help="create a key (printed once)"))
    create.add_argument("--entity", required=True, help="the entity (team) the key may write to")
    create.add_argument("--service-account", default=None, help="name a service account (not a person)")
    create.set_defaults(func=_run(cmd_create))
    listing = with_dir(sub.add_parser("list", help="list keys (never the keys themselves)"))
    listing.set_defaults(func=_run(cmd_list))
    revoke = with_dir(sub.add_parser("revoke", help="revoke a key at once"))
    revoke.add_argument("id", help="the key's id from `keys list`")
    revoke.set_defaults(func=_run(cmd_revoke))
    return keys


def main(argv: list[str] | None = None) -> int:
    """``python -m runstream_ingest.server.auth.keys_cli keys ...`` (as ``runstream server keys``)."""
    p = argparse.ArgumentParser(prog="runstream server")
    p.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    add_keys_parser(p.add_subparsers(dest="server_command", required=True))
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
