"""End-to-end helpers for distributed runs: simulated ranks and nodes as real processes, the node
sidecars they start, and the server's view of the one run they make.

A *node* here is one launcher process (``LAUNCHER``, in a session of its own) that spawns the
node's ranks with the environment a real launcher (torchrun, srun, mpirun, deepspeed) would give
them, and waits for them.  Each rank runs ``WORKER``: ``runstream.init`` as a user's script calls
it, then numbered rows ``{"i": n, "r": rank}`` at auto-steps, writing how many rows it has logged
to a side file after each ``log`` returns (``pwrite``: it outlives a ``kill -9``), so a test knows
exactly what each rank logged.  The rank's node sidecar is started by the rank itself (docs/
distributed.md), in its own session, so killing a node's process group leaves it running as on a
real machine; ``Job.cleanup`` kills it by pid.

The worker is steered through files in a control directory: ``ready-<rank>`` (written after
``init``: pid, run dir, run id), ``logged-<rank>`` (the count), ``stop`` (made by the test: ranks
logging ``until_stop`` end), ``done-<rank>`` (after ``finish``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

import runstream

NODE_SIDECAR = "runstream_ingest.sidecar.node"
RANK_SIDECAR = "runstream_ingest.sidecar.main"

WORKER = r"""
import json, os, sys, time
import runstream

cfg = json.loads(sys.argv[1])
rank = int(os.environ["E2E_RANK"])
ctl = cfg["ctl"]
run = runstream.init(project=cfg["project"], dir=os.environ.get("E2E_ROOT", cfg["root"]),
                     settings={"silent": True, **cfg.get("settings", {})})
info = {"pid": os.getpid(), "dir": str(run.dir), "id": run.id, "path": run.path}
with open(os.path.join(ctl, f"ready-{rank}.tmp"), "w") as f:
    json.dump(info, f)
os.rename(os.path.join(ctl, f"ready-{rank}.tmp"), os.path.join(ctl, f"ready-{rank}"))
if cfg.get("print"):
    print(f"hello from rank {rank}", flush=True)
fd = os.open(os.path.join(ctl, f"logged-{rank}"), os.O_RDWR | os.O_CREAT, 0o644)
rows = cfg["rows"] + cfg.get("rows_per_rank", 0) * rank
until_stop = cfg.get("until_stop", False)
stop = os.path.join(ctl, "stop")
period = 1.0 / cfg["rate"] if cfg.get("rate") else 0.0
t0 = time.monotonic()
n = 0
while n < rows or (until_stop and not os.path.exists(stop)):
    run.log({"i": n, "r": rank, "loss": 1.0 / (n + 1 + rank)})
    n += 1
    os.pwrite(fd, str(n).encode().ljust(20), 0)
    if period:
        wait = t0 + n * period - time.monotonic()
        if wait > 0:
            time.sleep(wait)
run.finish(exit_code=cfg.get("exit_code", 0))
with open(os.path.join(ctl, f"done-{rank}"), "w") as f:
    f.write(str(n))
sys.exit(cfg.get("exit_code", 0))
"""

# A node's launcher: spawns one worker per environment and exits with the first non-zero code.
LAUNCHER = r"""
import json, subprocess, sys
spec = json.loads(sys.argv[1])
cmd = [sys.executable, "-c", spec["worker"], spec["cfg"]]
procs = [subprocess.Popen(cmd, env=env) for env in spec["envs"]]
codes = [p.wait() for p in procs]
sys.exit(next((c for c in codes if c), 0))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env() -> dict[str, str]:
    """This process's environment without any RUNSTREAM_/WANDB_ setting or launcher variable of
    the machine the tests run on (a CI job under SLURM must not make every test a rank)."""
    drop = ("RUNSTREAM_", "WANDB_", "SLURM_", "OMPI_", "PMI_", "PMIX_", "MPI_", "TORCHELASTIC_")
    launcher = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK",
                "CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT"}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in launcher}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def get_json(url: str, timeout: float = 30) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


# --- processes --------------------------------------------------------------------------------
def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _under(arg: str, roots: Sequence[Path]) -> bool:
    try:
        path = str(Path(arg).resolve())
    except (OSError, ValueError):
        return False
    return any(path.startswith(str(r.resolve())) for r in roots)


def sidecars(roots: Sequence[Path], module: str = NODE_SIDECAR) -> list[psutil.Process]:
    """Live sidecar processes (``module``) whose node or run directory lies under one of ``roots``."""
    found = []
    for p in psutil.process_iter():
        cmd = _cmdline(p)
        if module not in cmd or p.pid == os.getpid():
            continue
        dirs = [cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a in ("--node-dir", "--run-dir")]
        try:
            zombie = p.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            continue
        if not zombie and any(_under(d, roots) for d in dirs):
            found.append(p)
    return found


def kill_all(procs: Sequence[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(list(procs), timeout=10)


def wait_until(what: str, fn: Any, timeout: float, diag: Any = None, interval: float = 0.05) -> Any:
    """``fn()`` until truthy (returned); AssertionError naming ``what`` (and ``diag()``) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{diag()}" if diag else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


# --- a simulated job ---------------------------------------------------------------------------
@dataclass
class Node:
    """One simulated node: its launcher process and the root directory its ranks' runs go under."""

    index: int
    root: Path
    proc: subprocess.Popen[bytes]
    ranks: list[int]


@dataclass
class Job:
    """A job of simulated ranks on one or more simulated nodes (see the module docstring)."""

    tmp: Path
    ctl: Path
    project: str
    nodes: list[Node] = field(default_factory=list)
    extra_roots: list[Path] = field(default_factory=list)

    @property
    def roots(self) -> list[Path]:
        return [n.root for n in self.nodes] + self.extra_roots

    # the control files
    def ready(self, rank: int) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.ctl / f"ready-{rank}").read_text()))
        except (OSError, ValueError):
            return None

    def logged(self, rank: int) -> int:
        try:
            return int((self.ctl / f"logged-{rank}").read_bytes().strip() or 0)
        except (OSError, ValueError):
            return 0

    def done(self, rank: int) -> bool:
        return (self.ctl / f"done-{rank}").exists()

    def stop(self) -> None:
        (self.ctl / "stop").touch()

    def all_ranks(self) -> list[int]:
        return sorted(r for n in self.nodes for r in n.ranks)

    def wait_ready(self, timeout: float = 60) -> dict[int, dict[str, Any]]:
        wait_until("every rank to return from init", lambda: all(map(self.ready, self.all_ranks())),
                   timeout, self.diag)  # fmt: skip
        return {r: self.ready(r) or {} for r in self.all_ranks()}

    def path(self) -> str:
        """``entity/project/id`` of the one run, from rank 0's (or the lowest rank's) ready file."""
        info = self.wait_ready()
        paths = {i["path"] for i in info.values()}
        assert len(paths) == 1, f"the ranks made more than one run: {sorted(paths)}"
        return str(next(iter(paths)))

    def wait_exit(self, timeout: float = 90) -> list[int]:
        codes = []
        for n in self.nodes:
            try:
                codes.append(n.proc.wait(timeout))
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"node {n.index}'s ranks did not exit in {timeout:.0f}s\n{self.diag()}"
                ) from None
        return codes

    def node_sidecars(self, node: int | None = None) -> list[psutil.Process]:
        roots = self.roots if node is None else [self.nodes[node].root]
        return sidecars(roots)

    def diag(self) -> str:
        parts = []
        for n in self.nodes:
            parts.append(f"node {n.index} launcher exit: {n.proc.poll()}")
            for d in sorted((n.root / "runstream").glob("run-*")):
                for name in sorted(d.glob("logs/*")) + sorted(d.glob("rank-*/logs/*")):
                    with contextlib.suppress(OSError):
                        parts.append(f"--- {name} (tail)\n{name.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError):
            for err in sorted(self.ctl.glob("*.stderr")):
                parts.append(f"--- {err.name} (tail)\n{err.read_text(errors='replace')[-3000:]}")
        parts.append("logged: " + ", ".join(f"r{r}={self.logged(r)}" for r in self.all_ranks()))
        return "\n".join(parts)

    def kill_node(self, index: int) -> None:
        """``kill -9`` of a whole node: its launcher's session (the ranks) and its node sidecar."""
        n = self.nodes[index]
        scs = self.node_sidecars(index)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(n.proc.pid, signal.SIGKILL)
        kill_all(scs)
        n.proc.wait(10)

    def cleanup(self) -> None:
        for n in self.nodes:
            if n.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(n.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                n.proc.wait(10)
        kill_all(sidecars(self.roots) + sidecars(self.roots, RANK_SIDECAR))
        ids = {i["id"] for r in self.all_ranks() if (i := self.ready(r))}
        for run_id in ids:
            for ring in Path("/dev/shm").glob(f"runstream-{run_id}-*.ring"):
                ring.unlink(missing_ok=True)


def launch_node(
    job: Job,
    index: int,
    envs: Mapping[int, Mapping[str, str]],
    cfg: Mapping[str, Any],
    url: str | None,
    root: Path | None = None,
    wrap: Sequence[str] = (),
) -> Node:
    """Start one simulated node: a launcher in its own session spawning one worker per entry of
    ``envs`` (global rank -> launcher variables).  ``url``: the server (None: offline runs)."""
    root = root or job.tmp / f"node{index}"
    root.mkdir(parents=True, exist_ok=True)
    common = base_env()
    if url:
        common["RUNSTREAM_HOST"] = url
    else:
        common["RUNSTREAM_MODE"] = "offline"
    full = [{**common, **{k: str(v) for k, v in env.items()}, "E2E_RANK": str(r)} for r, env in envs.items()]
    spec = {"worker": WORKER, "cfg": json.dumps({"root": str(root), "ctl": str(job.ctl),
            "project": job.project, **cfg}), "envs": full}  # fmt: skip
    with open(job.ctl / f"node{index}.stderr", "ab") as err:
        proc = subprocess.Popen(
            [*wrap, sys.executable, "-c", LAUNCHER, json.dumps(spec)],
            cwd=root, stdout=err, stderr=err, start_new_session=True, env=common,
        )  # fmt: skip
    node = Node(index, root, proc, sorted(envs))
    job.nodes.append(node)
    return node


@contextlib.contextmanager
def job(tmp: Path, project: str) -> Iterator[Job]:
    ctl = tmp / "ctl"
    ctl.mkdir(parents=True, exist_ok=True)
    j = Job(tmp, ctl, project)
    try:
        yield j
    finally:
        j.cleanup()


def runstream_env(rank: int, world: int, local_world: int, node_count: int, job_id: str) -> dict[str, str]:
    """The ``RUNSTREAM_*`` identity of one rank (docs/distributed.md): they override any launcher."""
    return {
        "RUNSTREAM_RANK": str(rank),
        "RUNSTREAM_LOCAL_RANK": str(rank % local_world),
        "RUNSTREAM_WORLD_SIZE": str(world),
        "RUNSTREAM_LOCAL_WORLD_SIZE": str(local_world),
        "RUNSTREAM_NODE": str(rank // local_world),
        "RUNSTREAM_NODE_COUNT": str(node_count),
        "RUNSTREAM_JOB_ID": job_id,
    }


def torchrun_env(rank: int, world: int, local_world: int, run_id: str, port: int) -> dict[str, str]:
    """What ``torchrun --nnodes N --nproc-per-node L --rdzv-id run_id`` gives a rank."""
    nodes = world // local_world
    return {
        "RANK": str(rank), "LOCAL_RANK": str(rank % local_world), "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(local_world), "GROUP_RANK": str(rank // local_world),
        "GROUP_WORLD_SIZE": str(nodes), "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": str(world),
        "ROLE_NAME": "default", "TORCHELASTIC_RUN_ID": run_id, "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    }  # fmt: skip


# --- the server's view -------------------------------------------------------------------------
def run_json(url: str, path: str, **query: Any) -> dict[str, Any] | None:
    """``GET /api/v1/runs/{path}`` (None while the run is not registered)."""
    q = "&".join(f"{k}={v}" for k, v in query.items())
    try:
        return dict(get_json(f"{url}/api/v1/runs/{path}" + (f"?{q}" if q else "")))
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def rank_rows(url: str, path: str, rank: int) -> list[dict[str, Any]]:
    """Every history row the server holds for ``rank`` of the run, through the SDK's read API."""
    run = runstream.Api(url).run(path)
    return list(run.scan_history(keys=["i", "r"], rank=rank, page_size=10_000))


def ranks_by_number(url: str, path: str) -> dict[int, dict[str, Any]]:
    data = run_json(url, path) or {}
    return {int(r["rank"]): r for r in data.get("ranks", [])}


def check_rank_rows(url: str, path: str, rank: int, logged: int, killed: bool = False) -> None:
    """Rank ``rank``'s rows on the server are exactly the ``logged`` rows it logged: steps 0..n-1
    once each, each row its own (``r``).  A rank killed between ``log`` returning and its count
    being written may have logged one more than its count says."""
    rows = rank_rows(url, path, rank)
    steps = [row["_step"] for row in rows]
    n = len(rows)
    allowed = {logged, logged + 1} if killed else {logged}
    assert n in allowed, f"rank {rank}: {n} rows on the server, it logged {logged}"
    assert steps == list(range(n)), f"rank {rank}: steps missing or duplicated: {gaps(steps)}"
    assert [row["i"] for row in rows] == list(range(n)), f"rank {rank}: rows out of order"
    others = {row["r"] for row in rows} - {rank}
    assert not others, f"rank {rank}'s history holds rows of rank(s) {sorted(others)}"


def gaps(steps: list[int]) -> str:
    counts = Counter(steps)
    dup = sorted(s for s, c in counts.items() if c > 1)
    missing = sorted(set(range(max(steps, default=-1) + 1)) - set(counts))
    return f"{len(missing)} missing (first {missing[:5]}), {len(dup)} duplicated (first {dup[:5]})"


def wait_rank_states(
    url: str, path: str, want: Mapping[int, str], timeout: float, diag: Any = None
) -> dict[int, Any]:
    """Poll the run's ``ranks`` until each listed rank is in the state given."""

    def states() -> dict[int, Any] | None:
        ranks = ranks_by_number(url, path)
        ok = all(ranks.get(r, {}).get("state") == s for r, s in want.items())
        return ranks if ok else None

    def why() -> str:
        got = {r: v.get("state") for r, v in ranks_by_number(url, path).items()}
        return f"ranks' states now: {got}" + (f"\n{diag()}" if diag else "")

    return dict(wait_until(f"ranks in states {dict(want)}", states, timeout, why, interval=0.2))
