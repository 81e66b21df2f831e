"""`make demo`: start a local runstream server, run the example training online against it,
show where the data is (server and local copy), then stop the server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import runstream  # noqa: E402
from support.server import start_server  # noqa: E402  (the tests' server launcher)


def main() -> int:
    data_dir = Path(os.environ.get("RUNSTREAM_DEMO_DATA", "runstream-server")).resolve()
    server = start_server(data_dir)
    try:
        print(f"server: {server.url}  (data in {data_dir / 'runstream.db'})", flush=True)
        env = {**os.environ, "RUNSTREAM_HOST": server.url}
        subprocess.run([sys.executable, str(HERE / "train.py")], env=env, check=True)
        latest = Path("runstream/latest-run").resolve()
        meta = runstream.read_run(latest).run
        path = f"{meta['entity']}/{meta['project']}/{meta['id']}"
        run = runstream.Api(server.url).run(path)
        print(f"\non the server: {server.url}/api/v1/runs/{path}")
        print(f"  state {run.state}, {run.rows} history rows, summary best_acc={run.summary['best_acc']:.4f}")
        print(f"  read it back: runstream.Api({server.url!r}).run({path!r})")
        print(f"local copy: {latest}\n")
        subprocess.run([sys.executable, "-m", "runstream.cli", "inspect", str(latest)], check=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
