"""Who am I, and which run: a rank's identity from its launcher's environment, and the run id.

``detect`` reads the variables launchers set (docs/distributed.md, "Identity"), in this order:
``RUNSTREAM_*`` overrides, then torchrun / Ray Train / DeepSpeed (``RANK`` and ``WORLD_SIZE``),
SLURM (``SLURM_PROCID`` with ``SLURM_NTASKS`` > 1), Open MPI (``OMPI_COMM_WORLD_*``), MPICH / Intel
MPI (``PMI_RANK``/``PMI_SIZE``).  A world size of 1, or nothing found, is ``None``: today's
single-process path.

``agree_run_id`` settles the run id without any rank waiting on another: an explicit id, else
one derived from the job key (identical on every rank, and across restarts of the job), else one
published by rank 0 in ``torch.distributed``'s store when the user's script has already
initialised it (only the other ranks wait for it),
else rank 0 makes one up and every other rank fails with a message naming what to set.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from runstream.errors import UsageError
from runstream.names import RUN_ID_LENGTH, new_run_id

LAUNCHERS = ("runstream", "torchrun", "deepspeed", "slurm", "openmpi", "mpich", "ray")
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Who:
    """This process's place in a distributed job.

    ``rank``/``world_size`` are global; ``local_rank``/``local_world_size`` count the ranks on
    this node; ``node`` is the node's index among ``node_count``.  ``job_key`` is the same on
    every rank of one job and across its restarts (None: the launcher gave none); ``attempt``
    counts restarts (0 for the first).  ``launcher`` names where the values came from."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node: int
    node_count: int
    job_key: str | None
    attempt: int
    launcher: str

    def as_dict(self) -> dict[str, object]:
        """The fields run.json, node.json and the RUN record carry."""
        return {
            "rank": self.rank,
            "local_rank": self.local_rank,
            "world_size": self.world_size,
            "local_world_size": self.local_world_size,
            "node": self.node,
            "node_count": self.node_count,
            "attempt": self.attempt,
            "job_key": self.job_key,
            "launcher": self.launcher,
        }


class _NotFound(Exception):
    pass


def _int(env: Mapping[str, str], name: str, strict: bool) -> int | None:
    """``env[name]`` as a non-negative int; None when unset or empty.  A bad value raises
    UsageError when ``strict`` (our own variables), else makes the launcher not found."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        if strict:
            raise UsageError(f"environment variable {name}={raw!r} is not a non-negative integer")
        raise _NotFound
    return value


def _slurm_local_world(env: Mapping[str, str], node: int) -> int | None:
    """Tasks on node ``node``: ``SLURM_NTASKS_PER_NODE``, else ``SLURM_TASKS_PER_NODE`` expanded
    (``"4(x2),3"`` means 4, 4, 3)."""
    for name in ("SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        counts: list[int] = []
        for part in env.get(name, "").split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "(x" in part:
                    n, rep = part.rstrip(")").split("(x")
                    counts += [int(n)] * int(rep)
                else:
                    counts.append(int(part))
            except ValueError:
                counts = []
                break
        if counts:
            return counts[node] if node < len(counts) else counts[0]
    return None


def _launcher(env: Mapping[str, str]) -> tuple[str, int, int, int | None, int | None, int | None, int | None]:
    """(launcher, rank, world, local_rank, local_world, node, node_count) from launcher variables."""
    if env.get("RANK", "").strip() and env.get("WORLD_SIZE", "").strip():
        rank, world = _int(env, "RANK", False), _int(env, "WORLD_SIZE", False)
        assert rank is not None and world is not None
        local = _int(env, "LOCAL_RANK", False)
        if any(k in env for k in ("TORCHELASTIC_RUN_ID", "GROUP_RANK", "TORCHELASTIC_RESTART_COUNT")):
            name = "torchrun"
            node, nodes = _int(env, "GROUP_RANK", False), _int(env, "GROUP_WORLD_SIZE", False)
            local_world = _int(env, "LOCAL_WORLD_SIZE", False)
        elif "CROSS_RANK" in env or "LOCAL_SIZE" in env:
            name = "deepspeed"
            node, nodes = _int(env, "CROSS_RANK", False), _int(env, "CROSS_SIZE", False)
            local_world = _int(env, "LOCAL_SIZE", False)
        else:
            # Ray Train sets NODE_RANK beside the torch variables; its workers carry RAY_* variables.
            ray = "NODE_RANK" in env and any(k.startswith("RAY_") for k in env)
            name = "ray" if ray else "torchrun"
            node, nodes = _int(env, "NODE_RANK", False), None
            local_world = _int(env, "LOCAL_WORLD_SIZE", False)
        return name, rank, world, local, local_world, node, nodes
    procid, ntasks = _int(env, "SLURM_PROCID", False), _int(env, "SLURM_NTASKS", False)
    if procid is not None and ntasks is not None and ntasks > 1:
        node = _int(env, "SLURM_NODEID", False)
        nodes = _int(env, "SLURM_NNODES", False) or _int(env, "SLURM_JOB_NUM_NODES", False)
        local_world = _slurm_local_world(env, node or 0)
        return "slurm", procid, ntasks, _int(env, "SLURM_LOCALID", False), local_world, node, nodes
    rank, world = _int(env, "OMPI_COMM_WORLD_RANK", False), _int(env, "OMPI_COMM_WORLD_SIZE", False)
    if rank is not None and world is not None:
        local = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", False)
        local_world = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", False)
        return "openmpi", rank, world, local, local_world, None, None
    rank, world = _int(env, "PMI_RANK", False), _int(env, "PMI_SIZE", False)
    if rank is not None and world is not None:
        local = _int(env, "MPI_LOCALRANKID", False)
        if local is None:
            local = _int(env, "PMI_LOCAL_RANK", False)
        local_world = _int(env, "MPI_LOCALNRANKS", False) or _int(env, "PMI_LOCAL_SIZE", False)
        return "mpich", rank, world, local, local_world, None, None
    raise _NotFound


def detect(env: Mapping[str, str] | None = None) -> Who | None:
    """This process's rank and job, from ``env`` (default ``os.environ``); None when the world
    size is 1 or no launcher's variables are found (then ``init`` takes the single-process path).

    ``RUNSTREAM_RANK``, ``RUNSTREAM_LOCAL_RANK``, ``RUNSTREAM_WORLD_SIZE``,
    ``RUNSTREAM_LOCAL_WORLD_SIZE``, ``RUNSTREAM_NODE``, ``RUNSTREAM_NODE_COUNT``,
    ``RUNSTREAM_JOB_ID`` and ``RUNSTREAM_ATTEMPT`` override what the launcher says, one by one
    (``RUNSTREAM_RANK`` and ``RUNSTREAM_WORLD_SIZE`` alone describe a job without a launcher).
    What a launcher does not give is derived: local rank and local world size from the rank and
    world size on one node, the node index as ``rank // local_world_size`` (ranks placed in
    order, as every launcher here does by default), the node count from the two sizes.

    Raises:
        UsageError: a ``RUNSTREAM_*`` variable is not a non-negative integer, or the values
            contradict each other (a rank not below the world size...); the message names them.
            Garbled launcher variables (not ours) count as no launcher: single-process path.

    Never blocks; reads ``/proc`` for the launcher process's start time (job key fallback).
    """
    env = os.environ if env is None else env
    try:
        name, rank, world, local, local_world, node, nodes = _launcher(env)
    except _NotFound:
        name, rank, world, local, local_world, node, nodes = "", None, None, None, None, None, None
    ours = {
        k: _int(env, f"RUNSTREAM_{k.upper()}", True)
        for k in ("rank", "world_size", "local_rank", "local_world_size", "node", "node_count", "attempt")
    }
    if ours["rank"] is not None or ours["world_size"] is not None:
        name = "runstream"
    rank = ours["rank"] if ours["rank"] is not None else rank
    world = ours["world_size"] if ours["world_size"] is not None else world
    if rank is None or world is None:
        if name == "runstream":
            missing = "RUNSTREAM_WORLD_SIZE" if rank is not None else "RUNSTREAM_RANK"
            raise UsageError(f"{missing} must be set too (a distributed run needs the rank and world size)")
        return None
    if world <= 1:
        return None
    local_world = ours["local_world_size"] or local_world
    node = ours["node"] if ours["node"] is not None else node
    nodes = ours["node_count"] or nodes
    local = ours["local_rank"] if ours["local_rank"] is not None else local
    if local_world is None:
        local_world = -(-world // nodes) if nodes else world
    local_world = min(max(local_world, 1), world)
    if local is None:
        local = rank % local_world
    if node is None:
        node = rank // local_world
    if nodes is None:
        nodes = max(-(-world // local_world), node + 1)
    problems = []
    if rank >= world:
        problems.append(f"rank {rank} is not below the world size {world}")
    if local >= local_world:
        problems.append(f"local rank {local} is not below the local world size {local_world}")
    if node >= nodes:
        problems.append(f"node {node} is not below the node count {nodes}")
    if problems:
        raise UsageError(f"inconsistent distributed environment ({name} variables): " + "; ".join(problems))
    attempt = ours["attempt"]
    if attempt is None:
        for var in ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"):
            raw = env.get(var, "").strip()
            if raw.isdigit():
                attempt = int(raw)
                break
    return Who(
        rank=rank,
        local_rank=local,
        world_size=world,
        local_world_size=local_world,
        node=node,
        node_count=nodes,
        job_key=job_key(env, nodes),
        attempt=attempt or 0,
        launcher=name,
    )


def job_key(env: Mapping[str, str], node_count: int) -> str | None:
    """What identifies this job on every rank, and stays the same across its restarts.

    ``RUNSTREAM_JOB_ID``; torchrun's ``TORCHELASTIC_RUN_ID`` (unless ``none``); SLURM's job id
    (array job and task, step); Open MPI's ``PMIX_NAMESPACE`` or job id; and on a single node,
    the launcher process (the ranks' common parent: its pid and start time, and the host).
    None: nothing identifies the job (a multi-node job with none of these)."""
    own = env.get("RUNSTREAM_JOB_ID", "").strip()
    if own:
        return own
    elastic = env.get("TORCHELASTIC_RUN_ID", "").strip()
    if elastic and elastic.lower() != "none":
        return f"torchelastic:{elastic}"
    slurm = env.get("SLURM_JOB_ID", "").strip()
    if slurm:
        array, task = env.get("SLURM_ARRAY_JOB_ID", "").strip(), env.get("SLURM_ARRAY_TASK_ID", "").strip()
        key = f"slurm:{array}_{task}" if array and task else f"slurm:{slurm}"
        step = env.get("SLURM_STEP_ID", "").strip()
        return key + (f".{step}" if step else "")
    for var in ("PMIX_NAMESPACE", "OMPI_MCA_orte_ess_jobid", "OMPI_MCA_ess_base_jobid"):
        value = env.get(var, "").strip()
        if value:
            return f"mpi:{value}"
    if node_count == 1:
        return _parent_key()
    return None


def _parent_key() -> str | None:
    """The launcher process as a job key: ``host:ppid:start``.  Its start time (clock ticks since
    boot, /proc/<ppid>/stat field 22) tells a reused pid apart.  None for an orphan (ppid 1)."""
    ppid = os.getppid()
    if ppid <= 1:
        return None
    try:
        with open(f"/proc/{ppid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        start = stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"parent:{socket.gethostname()}:{ppid}:{start}"


def derived_run_id(entity: str, project: str, job_key: str) -> str:
    """The run id of job ``job_key`` in ``entity/project``: 8 characters ``[a-z0-9]``, from
    sha256, so every rank (and every restart of the job) computes the same one."""
    digest = hashlib.sha256(f"{entity}/{project}|{job_key}".encode()).digest()
    n = int.from_bytes(digest, "big")
    out = []
    for _ in range(RUN_ID_LENGTH):
        n, r = divmod(n, 36)
        out.append(_BASE36[r])
    return "".join(out)


_job_runs: dict[str, int] = {}  # runs this process started per job key (agree_run_id)
_store_runs = 0  # runs this process agreed through torch.distributed's store
# How long a rank other than 0 waits in ``init`` for rank 0 to publish the run id in the store.
STORE_WAIT = 300.0


def _agree_through_torch() -> str | None:
    """The run id, through the key-value store of an initialised ``torch.distributed`` (None:
    torch is not imported, or no process group is up).

    Not a collective: rank 0 makes the id and ``set``s it without waiting for anyone, so the
    common W&B pattern ``if rank == 0: wandb.init()`` can never hang; the other ranks wait for
    the key (up to ``STORE_WAIT``).  The key counts this process's runs, as every rank counts
    alike.

    Raises:
        UsageError: a rank other than 0 did not see rank 0's id within ``STORE_WAIT``."""
    global _store_runs
    dist = sys.modules.get("torch.distributed")
    c10d = sys.modules.get("torch.distributed.distributed_c10d")
    if dist is None or c10d is None or not dist.is_available() or not dist.is_initialized():
        return None
    try:
        store = c10d._get_default_store()
    except Exception:  # a torch without it, or a process group without a store
        return None
    key = f"runstream/run_id/{_store_runs}"
    _store_runs += 1
    if dist.get_rank() == 0:
        run_id = new_run_id()
        store.set(key, run_id)
        return run_id
    from datetime import timedelta

    try:
        store.wait([key], timedelta(seconds=STORE_WAIT))
    except Exception as e:  # torch raises its own DistStoreError (a RuntimeError) on timeout
        raise UsageError(
            f"rank {dist.get_rank()} waited {STORE_WAIT:.0f}s in init for rank 0 to name the run "
            f"through torch.distributed ({e}): call init on rank 0 too, or set RUNSTREAM_RUN_ID "
            "(the same on every rank) or RUNSTREAM_JOB_ID"
        ) from None
    return bytes(store.get(key)).decode()


def agree_run_id(who: Who, explicit: str | None, entity: str, project: str) -> tuple[str, str]:
    """The run id of this job, and how it was found (``"explicit"``, ``"job"``,
    ``"torch.distributed"`` or ``"random"``).

    An explicit id (``init(id=)``, ``RUNSTREAM_RUN_ID``, ``WANDB_RUN_ID``) wins; else the job
    key's :func:`derived_run_id` (the process's second run of the job, after ``finish`` or with
    ``reinit``, derives from ``"<job key>#1"``, and so on); else, when the script imported
    torch and initialised ``torch.distributed`` before ``init``, rank 0 makes a random id and
    publishes it in the process group's store (no collective: rank 0 never waits, so rank 0
    alone may call ``init``); else rank 0 makes one and the others fail.

    Raises:
        UsageError: on a rank other than 0 when there is no way to agree; names the variables
            that fix it.

    Blocking: only ranks other than 0 on the ``torch.distributed`` path wait, for rank 0 to
    reach ``init`` (up to ``STORE_WAIT``).
    Never imports torch.
    """
    if explicit:
        return explicit, "explicit"
    if who.job_key is not None:
        # The n-th run a process of the job starts (reinit, a sweep inside one launch) is the
        # job's n-th run: every rank counts its inits alike, so the ranks still agree.
        n = _job_runs.get(who.job_key, 0)
        _job_runs[who.job_key] = n + 1
        key = who.job_key if n == 0 else f"{who.job_key}#{n}"
        return derived_run_id(entity, project, key), "job"
    agreed = _agree_through_torch()
    if agreed is not None:
        return agreed, "torch.distributed"
    if who.rank == 0:
        return new_run_id(), "random"
    raise UsageError(
        f"rank {who.rank} of {who.world_size} ({who.launcher}) cannot tell which run to log to: "
        "no job id was found (TORCHELASTIC_RUN_ID, SLURM_JOB_ID, PMIX_NAMESPACE) and "
        "torch.distributed is not initialised. Set RUNSTREAM_RUN_ID to the same run id on every "
        "rank, or RUNSTREAM_JOB_ID to the same job id, or call init after "
        "torch.distributed.init_process_group"
    )


def job_run_name(run_id: str) -> str:
    """A display name every rank derives alike from the run id (``adjective-noun-N``)."""
    import random

    from runstream import names

    rnd = random.Random(run_id)
    return f"{rnd.choice(names._ADJECTIVES)}-{rnd.choice(names._NOUNS)}-{rnd.randrange(999) + 1}"
