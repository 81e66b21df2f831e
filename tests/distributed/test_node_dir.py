"""The node directory: ranks racing into the rendezvous, later attempts finding it, the ring
sizes a node's ranks get, and the fallback when /dev/shm lacks the room."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runstream.distributed.identity import Who
from runstream.distributed.nodedir import (
    create_rank_ring,
    find_node_dir,
    is_node_dir,
    rank_dir,
    rank_ring_size,
    rendezvous,
)
from runstream.errors import UsageError
from tests.distributed.conftest import clean_environ, finish_all, spawn, torchrun_env

MiB = 1024 * 1024


def who(**kw: object) -> Who:
    base: dict[str, object] = dict(
        rank=0, local_rank=0, world_size=8, local_world_size=8, node=0, node_count=1,
        job_key="torchelastic:j1", attempt=0, launcher="torchrun",
    )  # fmt: skip
    base.update(kw)
    return Who(**base)  # type: ignore[arg-type]


RACER = r"""
import json, os, sys, time
from runstream.distributed.identity import Who
from runstream.distributed.nodedir import rendezvous, rank_dir
root, go, rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
w = Who(rank=rank, local_rank=rank, world_size=8, local_world_size=8, node=0, node_count=1,
        job_key="torchelastic:race", attempt=0, launcher="torchrun")
while not os.path.exists(go):
    time.sleep(0.0005)
path, created = rendezvous(root, w, "racerun1", "e", "p")
rank_dir(path, rank)
print(json.dumps({"path": str(path), "created": created}))
"""


def test_eight_ranks_racing_make_one_node_dir(tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [spawn(RACER, {}, str(tmp_path), str(go), str(r)) for r in range(8)]
    time.sleep(0.5)  # every racer imported and spinning on the go file
    go.touch()
    results = finish_all(procs, timeout=60)
    assert [code for code, _, _ in results] == [0] * 8, [err for _, _, err in results]
    seen = [json.loads(out) for _, out, _ in results]
    assert len({s["path"] for s in seen}) == 1
    assert sum(s["created"] for s in seen) == 1
    runs = [p for p in (tmp_path / "runstream").iterdir() if p.name.startswith("run-")]
    assert len(runs) == 1 and runs[0].name.endswith("-racerun1")
    node = json.loads((runs[0] / "node.json").read_text())
    assert (node["id"], node["job_key"], node["world_size"], node["node_count"]) == (
        "racerun1",
        "torchelastic:race",
        8,
        1,
    )
    assert sorted(p.name for p in runs[0].iterdir() if p.name.startswith("rank-")) == [
        f"rank-{r}" for r in range(8)
    ]


def test_a_later_attempt_of_the_job_reuses_the_node_dir(tmp_path: Path) -> None:
    first, created = rendezvous(tmp_path, who(), "abc12345", "e", "p")
    assert created and is_node_dir(first)
    rdir, existed = rank_dir(first, 3)
    assert not existed
    (rdir / "journal" / "seg-000001.rsj").write_bytes(b"x")
    again, created = rendezvous(tmp_path, who(attempt=1, rank=3), "abc12345", "e", "p")
    assert again == first and not created
    assert rank_dir(again, 3) == (rdir, True)  # its journal is there: resumed locally
    # Another job that happens to use the same run id (an explicit one) gets its own directory.
    time.sleep(1.05)  # names carry the second
    other, created = rendezvous(tmp_path, who(job_key="torchelastic:j2"), "abc12345", "e", "p")
    assert created and other != first
    assert find_node_dir(tmp_path, "abc12345", who()) == first


def test_multi_node_dirs_are_suffixed_and_apart(tmp_path: Path) -> None:
    n0, _ = rendezvous(tmp_path, who(node_count=2, world_size=16), "abc12345", "e", "p")
    n1, _ = rendezvous(tmp_path, who(node=1, rank=8, node_count=2, world_size=16), "abc12345", "e", "p")
    assert n0.name.endswith("-abc12345-node0") and n1.name.endswith("-abc12345-node1")
    assert json.loads((n1 / "node.json").read_text())["node"] == 1


def test_a_same_second_clash_with_a_single_process_run_is_an_error(tmp_path: Path) -> None:
    import datetime as dt

    from runstream.distributed.nodedir import node_dir_name

    name = node_dir_name("abc12345", dt.datetime.now(), 0, 1)
    (tmp_path / "runstream" / name / "journal").mkdir(parents=True)  # not a node dir: no node.json
    try:
        rendezvous(tmp_path, who(), "abc12345", "e", "p")
    except UsageError as e:
        assert "abc12345" in str(e)
    else:  # the second turned over in between: then a new node dir was made, also right
        assert len([p for p in (tmp_path / "runstream").iterdir() if p.name.startswith("run-")]) == 2


def test_ring_sizes_shrink_with_the_local_world() -> None:
    assert rank_ring_size(1) == 64 * MiB
    assert rank_ring_size(2) == 32 * MiB
    assert rank_ring_size(8) == 8 * MiB
    assert rank_ring_size(16) == 4 * MiB
    assert rank_ring_size(64) == 4 * MiB  # floor
    assert rank_ring_size(3) % 4096 == 0 and rank_ring_size(3) <= 64 * MiB // 3


def test_no_room_in_dev_shm_falls_back_to_the_rank_dir_with_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rdir, _ = rank_dir(rendezvous(tmp_path, who(), "abc12345", "e", "p")[0], 0)
    real = os.statvfs

    class Full:
        f_bavail, f_frsize = 100, 4096  # 400 KiB free: less than the ring and its control page

    monkeypatch.setattr(os, "statvfs", lambda p: Full() if str(p) == "/dev/shm" else real(p))
    msgs: list[str] = []
    ring = create_rank_ring("abc12345", rdir, 4 * MiB, msgs.append)
    try:
        assert ring.path.parent == rdir and ring.path.name == f"ring-{os.getpid()}"
        assert ring.capacity == 4 * MiB
        assert len(msgs) == 1 and "/dev/shm lacks room" in msgs[0] and str(rdir) in msgs[0]
    finally:
        ring.close()
        ring.path.unlink()
    assert not list(Path("/dev/shm").glob(f"runstream-abc12345-{os.getpid()}.ring"))


SMALL_SHM_RANK = r"""
import os, sys, runstream
run = runstream.init(project="p", mode="offline", dir=sys.argv[1])
print("RING", run._ring.path, run._ring.capacity, flush=True)
for i in range(200):
    runstream.log({"x": i})
runstream.finish()
"""


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare(1) for a private small /dev/shm")
def test_small_dev_shm_real_ranks_fall_back_and_log_everything(tmp_path: Path) -> None:
    """Docker's 64 MiB /dev/shm shrunk to 6 MiB: a rank whose 32 MiB ring cannot fit writes it
    in its rank directory, says so once, and loses nothing."""
    shell = (
        f"mount -t tmpfs -o size=6m tmpfs /dev/shm && exec {sys.executable} -c {_sh_quote(SMALL_SHM_RANK)} "
        f"{_sh_quote(str(tmp_path))}"
    )
    env = {**clean_environ(), **torchrun_env(0, 2, TORCHELASTIC_RUN_ID="shm")}
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    ring_line = next(line for line in out.stdout.splitlines() if line.startswith("RING"))
    _, path, capacity = ring_line.split()
    assert int(capacity) == 32 * MiB
    assert Path(path).parent.name == "rank-0" and Path(path).name.startswith("ring-")
    assert out.stderr.count("/dev/shm lacks room") == 1
    from runstream.read.local import read_run

    data = read_run(Path(path).parent)
    assert data.history_rows == 200 and data.dropped == 0 and data.run["state"] == "finished"
    assert not Path(path).exists()  # removed once drained, as a ring in /dev/shm is


def _sh_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
