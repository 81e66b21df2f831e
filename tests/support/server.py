"""A real ``runstream server`` process on 127.0.0.1 with random ports, for tests and benches."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServerProc:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    url: str
    grpc_port: int
    http_port: int

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        try:
            return (self.data_dir / "server.log").read_text()
        except OSError:
            return ""


def start_server(
    data_dir: Path,
    *extra: str,
    http_port: int = 0,
    grpc_port: int = 0,
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> ServerProc:
    data_dir.mkdir(parents=True, exist_ok=True)
    info_path = data_dir / "server.json"
    with contextlib.suppress(FileNotFoundError):
        info_path.unlink()
    cmd = [
        sys.executable, "-m", "runstream.cli.main", "server", "--host", "127.0.0.1",
        "--port", str(http_port), "--grpc-port", str(grpc_port), "--data-dir", str(data_dir), *extra,
    ]  # fmt: skip
    with open(data_dir / "server.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}: {(data_dir / 'server.log').read_text()}"
            )
        try:
            info = json.loads(info_path.read_text())
            if info.get("pid") == proc.pid:
                break
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("server did not start in time")
        time.sleep(0.02)
    return ServerProc(proc, data_dir, info["url"], int(info["bound_grpc_port"]), int(info["http_port"]))


@contextlib.contextmanager
def running_server(data_dir: Path, *extra: str, **kw: object) -> Iterator[ServerProc]:
    srv = start_server(data_dir, *extra, **kw)  # type: ignore[arg-type]
    try:
        yield srv
    finally:
        srv.stop()
