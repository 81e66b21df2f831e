"""The ``runstream`` command.  ``runstream inspect RUN_DIR`` reads a run back from its journal."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from runstream.errors import Error
from runstream.format.fold import flatten, json_safe
from runstream.read.local import NodeData, RunData, read_node, read_run, resolve_node_dir


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(json_safe(value), default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def _pairs(d: dict[str, Any], limit: int = 20) -> str:
    items = list(d.items())
    shown = ", ".join(f"{k}={_short(v, 30)}" for k, v in items[:limit])
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return (shown + more) or "(empty)"


def print_run(data: RunData) -> None:
    r = data.run
    ended = r["state"] + (f" (exit code {r['exit_code']})" if r.get("exit_code") is not None else "")
    j = data.journal
    lines = [
        ("run", f"{r.get('name')} ({r.get('id')})  {r.get('entity')}/{r.get('project')}  {ended}"),
        ("dir", str(data.path)),
        ("config", _pairs(data.config)),
        ("summary", _pairs(flatten(data.summary))),  # {"min": .., "max": ..} as loss/min, loss/max
        ("history", f"{data.history_rows} rows; keys: {', '.join(data.history_keys) or '(none)'}"),
        ("first row", _short(data.first_row, 200) if data.first_row else "-"),
        ("last row", _short(data.last_row, 200) if data.last_row else "-"),
        ("dropped", f"{data.dropped}" + (f"  ({_pairs(data.stats)})" if data.dropped else "")),
        (
            "journal",
            f"{j['frames']} frames in {j['segments']} segment(s), {j['records']} records, "
            f"{j['skipped_bytes']} bytes skipped" + ("  <- damaged" if j["skipped_bytes"] else ""),
        ),
    ]
    for label, text in lines:
        print(f"{label:<10} {text}")


def print_node(node: NodeData) -> None:
    """A distributed run's node directory: the job, then one line per rank."""
    n = node.node
    live = "node sidecar running" if node.node_sidecar_running else "no node sidecar"
    where = f"{n.get('entity')}/{n.get('project')}"
    print(f"{'run':<10} {n.get('id')}  {where}  (distributed, {n.get('launcher')})")
    print(f"{'dir':<10} {node.path}")
    print(
        f"{'node':<10} {n.get('node')} of {n.get('node_count')} on {n.get('host')}; world size "
        f"{n.get('world_size')}, {n.get('local_world_size')} local; {len(node.ranks)} rank dirs; {live}"
    )
    print(f"{'rank':>10} {'state':<10} {'rows':>8} {'last step':>10} {'lost':>6}  attempt")
    for r in node.rank_rows():
        state = r["state"] + (f" ({r['exit_code']})" if r["exit_code"] not in (None, 0) else "")
        last = "-" if r["last_step"] is None else r["last_step"]
        print(f"{r['rank']:>10} {state:<10} {r['rows']:>8} {last:>10} {r['lost']:>6}  {r['attempt']}")


def cmd_inspect(args: argparse.Namespace) -> int:
    node_dir = resolve_node_dir(args.run_dir)
    if node_dir is not None:  # a distributed run's node directory: its ranks
        node = read_node(node_dir)
        if args.history:
            for rank, rdata in sorted(node.ranks.items()):
                for row in rdata.history:
                    print(json.dumps(json_safe({"_rank": rank, **row}), default=str))
        elif args.json:
            print(json.dumps(json_safe(node.as_dict()), default=str, indent=2))
        else:
            print_node(node)
        return 0
    data = read_run(args.run_dir)
    if args.history:
        for row in data.history:
            print(json.dumps(json_safe(row), default=str))
    elif args.json:
        print(json.dumps(json_safe(data.as_dict()), default=str, indent=2))
    else:
        print_run(data)
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from runstream_ingest.server.main import serve

    return serve(args)


def cmd_sync(args: argparse.Namespace) -> int:
    from runstream_ingest.sidecar.sync import sync_main

    return sync_main(args)


def cmd_mode(args: argparse.Namespace) -> int:
    from runstream.settings import write_directory_mode

    path = write_directory_mode(args.command, args.dir)
    print(f"runstream: runs started in {Path(args.dir).resolve()} are now {args.command} (saved in {path})")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from runstream.cli.restore import main as restore_main

    return restore_main(args.run_path, host=args.host, branch=args.branch)


def main(argv: list[str] | None = None) -> int:
    from runstream.login import add_login_parser
    from runstream_ingest.server.auth.keys_cli import add_keys_parser

    p = argparse.ArgumentParser(prog="runstream", description="runstream: experiment tracking")
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="print a run read back from its journal")
    ins.add_argument(
        "run_dir", help="a run directory (or a distributed run's node directory), or runstream/latest-run"
    )
    out = ins.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object (NaN/Infinity as strings)")
    out.add_argument("--history", action="store_true", help="every history row, one JSON object per line")
    ins.set_defaults(func=cmd_inspect)

    srv = sub.add_parser("server", help="run the ingest server, or manage its API keys")
    from runstream_ingest.server.args import add_server_args

    add_server_args(srv)
    srv.set_defaults(func=cmd_server)
    srv_sub = srv.add_subparsers(dest="server_command", metavar="{keys}")
    add_keys_parser(srv_sub)

    add_login_parser(sub)

    from runstream.cli.import_tensorboard import add_import_tensorboard_parser

    add_import_tensorboard_parser(sub)

    from runstream.cli.as_wandb import add_as_wandb_parser

    add_as_wandb_parser(sub)

    syn = sub.add_parser("sync", help="upload runs (or what of them is not yet acknowledged)")
    syn.add_argument(
        "run_dirs", nargs="*", help="run directories (a distributed run's node directory: all its ranks)"
    )
    syn.add_argument("--all", nargs="?", const=".", default=None, metavar="DIR", help="every run under DIR")
    syn.add_argument("--host", default=None, help="server address (default: RUNSTREAM_HOST or login)")
    syn.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    syn.set_defaults(func=cmd_sync)

    rst = sub.add_parser(
        "restore", help="check out a run's commit on a new branch, apply its diff.patch, write config.yaml"
    )
    rst.add_argument("run_path", help="entity/project/run_id on the server, or a run directory")
    rst.add_argument("--branch", default=None, help="the new branch (default: runstream/<run id>)")
    rst.add_argument("--host", default=None, help="server address (default: RUNSTREAM_HOST or login)")
    rst.set_defaults(func=cmd_restore)

    for mode in ("offline", "online"):
        m = sub.add_parser(mode, help=f"make runs started in this directory {mode}")
        m.add_argument("--dir", default=".", help="the directory (default: here)")
        m.set_defaults(func=cmd_mode)

    args = p.parse_args(argv)
    try:
        return int(args.func(args))
    except Error as e:
        print(f"runstream: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `runstream inspect --history | head`
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
