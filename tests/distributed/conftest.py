"""Shared fixtures for distributed runs: simulated ranks as real processes, and no node sidecar
(or ring) left behind.

A node sidecar runs in a session of its own (started by a rank, as on a real machine), so the
rank processes' exit does not end it; ``no_leftover_node_sidecars`` kills, by pid, every node
sidecar whose ``--node-dir`` lies under the test's ``tmp_path``, and removes the rings that the
test's ranks named in their ``sidecar.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import psutil
import pytest

NODE_SIDECAR = "runstream_ingest.sidecar.node"


def node_sidecars_under(path: Path) -> list[psutil.Process]:
    """Live node sidecars whose node directory is under ``path``."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if NODE_SIDECAR in cmd and any(str(path) in c for c in cmd):
            found.append(p)
    return found


@pytest.fixture(autouse=True)
def no_leftover_node_sidecars(tmp_path: Path) -> Iterator[None]:
    yield
    for p in node_sidecars_under(tmp_path):
        try:
            p.kill()
            p.wait(5)
        except psutil.Error:
            pass
    for info in tmp_path.rglob("sidecar.json"):
        try:
            ring = Path(json.loads(info.read_text())["ring"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if str(ring).startswith("/dev/shm/"):
            ring.unlink(missing_ok=True)


def torchrun_env(
    rank: int, world: int, local_world: int | None = None, node: int = 0, **extra: str
) -> dict[str, str]:
    """The variables torchrun gives a worker (static rendezvous: TORCHELASTIC_RUN_ID "none"
    unless ``extra`` sets it)."""
    local_world = world if local_world is None else local_world
    nodes = -(-world // local_world)
    env = {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank % local_world),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(local_world),
        "GROUP_RANK": str(node),
        "GROUP_WORLD_SIZE": str(nodes),
        "ROLE_RANK": str(rank),
        "TORCHELASTIC_RUN_ID": "none",
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0",
        "MASTER_ADDR": "127.0.0.1",
    }
    env.update(extra)
    return env


def clean_environ() -> dict[str, str]:
    """This process's environment without RUNSTREAM_*/WANDB_* and launcher variables."""
    drop = ("RUNSTREAM_", "WANDB_", "SLURM_", "OMPI_", "PMI", "TORCHELASTIC_", "RAY_")
    launcher = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK"}
    return {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in launcher}


def spawn(code: str, env: Mapping[str, str], *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    """``python -c code *args`` with ``env`` added to a clean environment; stdout/stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env={**clean_environ(), **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def finish_all(procs: list[subprocess.Popen[str]], timeout: float = 90) -> list[tuple[int, str, str]]:
    """Wait for every process; (exit code, stdout, stderr) each.  Kills them all on a timeout."""
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results
