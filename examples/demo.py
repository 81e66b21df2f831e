"""`make demo`: start a local runstream server, train a few example runs online against it, show
where the data is (server, local copy, dashboard), and keep serving the dashboard until Ctrl-C
(without a terminal, as under CI, it stops and prints how to serve it again)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import runstream  # noqa: E402
from runstream_ingest.server.args import DEFAULT_PORT  # noqa: E402
from support.server import start_server  # noqa: E402  (the tests' server launcher)

LEARNING_RATES = ["3e-4", "1e-3", "3e-3"]


def free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def main() -> int:
    data_dir = Path(os.environ.get("RUNSTREAM_DEMO_DATA", "runstream-server")).resolve()
    # The default port when free, so the printed dashboard link is the one `runstream server` serves.
    port = DEFAULT_PORT if free(DEFAULT_PORT) and free(DEFAULT_PORT + 1) else 0
    server = start_server(data_dir, http_port=port, grpc_port=port + 1 if port else 0)
    try:
        print(f"server: {server.url}  (data in {data_dir / 'runstream.db'})", flush=True)
        # The runs' local copies go under demo-runs/: a runstream/ directory in the repo's root
        # would shadow the package for anything run from there (the tests included).
        runs_dir = Path(os.environ.get("RUNSTREAM_DEMO_RUNS", "demo-runs")).resolve()
        runs_dir.mkdir(exist_ok=True)
        env = {**os.environ, "RUNSTREAM_HOST": server.url, "RUNSTREAM_DIR": str(runs_dir)}
        for lr in LEARNING_RATES:
            subprocess.run([sys.executable, str(HERE / "train.py"), lr], env=env, check=True)
        latest = (runs_dir / "runstream" / "latest-run").resolve()
        meta = runstream.read_run(latest).run
        project = f"{meta['entity']}/{meta['project']}"
        path = f"{project}/{meta['id']}"
        run = runstream.Api(server.url).run(path)
        print(f"\non the server: {server.url}/api/v1/runs/{path}")
        print(f"  state {run.state}, {run.rows} history rows, summary best_acc={run.summary['best_acc']:.4f}")
        print(f"  read it back: runstream.Api({server.url!r}).run({path!r})")
        print(f"local copy: {latest}\n", flush=True)
        subprocess.run([sys.executable, "-m", "runstream.cli.main", "inspect", str(latest)], check=True)
        print(f"\ndashboard: {server.url}/#/p/{project}   (the runs table; {server.url}/ lists projects)")
        if sys.stdin.isatty():
            print("serving it until Ctrl-C", flush=True)
            try:
                server.proc.wait()
            except KeyboardInterrupt:
                pass
        else:
            again = f"runstream server --data-dir {data_dir}" + (
                f" --port {port}" if port != DEFAULT_PORT else ""
            )
            print(f"(no terminal: server stopped; `{again}` serves it again)")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
