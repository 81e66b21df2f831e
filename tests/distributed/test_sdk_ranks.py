"""Real ranks, offline: N processes with a launcher's environment each call ``runstream.init``
as a user's script does.  One node directory, one rank directory per rank, one node sidecar
(restarted by a surviving rank after ``kill -9``), each rank's journal holding exactly what it
logged, and ``finish`` on a rank waiting for its own pipeline only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import runstream
from runstream.distributed.identity import derived_run_id
from runstream.distributed.supervisor import node_sidecar_alive
from runstream.errors import SettingsError, UsageError
from runstream.format import record as rec
from runstream.format.journal_read import read_journal
from runstream.read.local import read_run
from runstream.settings import Settings, resolve_settings
from tests.distributed.conftest import NODE_SIDECAR, finish_all, node_sidecars_under, spawn, torchrun_env

ENTITY = "tester"

# cfg: {"rows": n, "wait": bool (read a line from stdin half-way), "print": bool}
WORKER = r"""
import json, os, sys
import runstream
cfg = json.loads(sys.argv[2])
run = runstream.init(project="ranks", mode="offline", dir=sys.argv[1], config={"lr": 0.1})
rank = int(os.environ["RANK"])
print(json.dumps({"id": run.id, "dir": str(run.dir), "ring": run._ring.capacity}), flush=True)
if cfg.get("print"):
    print(f"hello from rank {rank}", flush=True)
half = cfg["rows"] // 2
for i in range(cfg["rows"]):
    if i == half and cfg.get("wait"):
        print(json.dumps({"waiting": i}), flush=True)
        sys.stdin.readline()
    runstream.log({"loss": rank * 1000 + i, "rank": rank})
runstream.finish()
"""


def launch(root: Path, world: int, cfg: dict[str, Any], **env: str) -> list[subprocess.Popen[str]]:
    base = {"RUNSTREAM_ENTITY": ENTITY}
    return [
        spawn(WORKER, {**base, **torchrun_env(r, world), **env}, str(root), json.dumps(cfg))
        for r in range(world)
    ]


def first_line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    return dict(json.loads(line))


def wait_for(what: str, fn: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def node_dirs(root: Path) -> list[Path]:
    return sorted(p for p in (root / "runstream").iterdir() if p.name.startswith("run-") and p.is_dir())


def journal_records(rank_dir: Path) -> list[rec.Record]:
    """Every record of every frame, duplicates included (read_run would hide a repeated seq)."""
    out: list[rec.Record] = []
    for frame in read_journal(rank_dir / "journal").iter_frames():
        out.extend(rec.iter_records(frame.batch))
    return out


def test_four_ranks_make_one_node_dir_and_keep_their_own_rows(tmp_path: Path) -> None:
    rows = 30
    procs = launch(tmp_path, 4, {"rows": rows, "print": True}, TORCHELASTIC_RUN_ID="job-a")
    results = finish_all(procs)
    assert [code for code, _, _ in results] == [0] * 4, [err[-3000:] for _, _, err in results]
    infos = [json.loads(out.splitlines()[0]) for _, out, _ in results]
    run_id = derived_run_id(ENTITY, "ranks", "torchelastic:job-a")
    assert {i["id"] for i in infos} == {run_id}
    assert {i["ring"] for i in infos} == {16 * 1024 * 1024}  # 64 MiB shared by 4 local ranks
    (node,) = node_dirs(tmp_path)
    assert node.name.endswith(f"-{run_id}")
    assert (tmp_path / "runstream" / "latest-run").resolve() == node
    with pytest.raises(UsageError, match="node directory of a distributed run"):
        read_run(tmp_path)  # one run directory per rank: the reader says so and where they are
    node_info = json.loads((node / "node.json").read_text())
    keys = ("id", "entity", "project", "world_size", "node", "node_count", "launcher")
    assert {k: node_info[k] for k in keys} == {
        "id": run_id, "entity": ENTITY, "project": "ranks", "world_size": 4, "node": 0, "node_count": 1,
        "launcher": "torchrun",
    }  # fmt: skip
    writers = set()
    for r in range(4):
        rdir = node / f"rank-{r}"
        assert Path(infos[r]["dir"]) == rdir
        data = read_run(rdir)
        assert data.run["state"] == "finished" and data.dropped == 0
        assert [row["loss"] for row in data.history] == [r * 1000 + i for i in range(rows)]
        assert [row["_step"] for row in data.history] == list(range(rows))  # steps are the rank's own
        assert data.config == {"lr": 0.1}
        rank_keys = ("rank", "world_size", "node", "local_rank", "attempt", "launcher")
        assert {k: data.run[k] for k in rank_keys} == {
            "rank": r, "world_size": 4, "node": 0, "local_rank": r, "attempt": 0, "launcher": "torchrun",
        }  # fmt: skip
        run_json = json.loads((rdir / "run.json").read_text())
        assert (run_json["rank"], run_json["job_key"], run_json["id"]) == (r, "torchelastic:job-a", run_id)
        writers.add(run_json["writer_id"])
        sidecar = json.loads((rdir / "sidecar.json").read_text())
        assert sidecar["producer_pid"] == run_json["pid"] and "--ring" not in sidecar["args"]
        # The console is wrapped per rank: the rank's own line is in its own journal.
        lines = [
            line
            for record in journal_records(rdir)
            if record.kind == rec.KIND_CONSOLE
            for line in record.value()["lines"]
        ]
        assert f"hello from rank {r}" in lines
        assert not any(f"hello from rank {o}" in lines for o in range(4) if o != r)
    assert len(writers) == 4
    # The node sidecar leaves once every rank is done.
    wait_for("the node sidecar to exit", lambda: not node_sidecars_under(tmp_path), 15)
    out = subprocess.run(
        [sys.executable, "-m", "runstream.cli.main", "inspect", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "distributed, torchrun" in out.stdout
    for r in range(4):
        assert any(
            line.split()[:4] == [str(r), "finished", str(rows), str(rows - 1)]
            for line in out.stdout.splitlines()
        )
    as_json = json.loads(
        subprocess.run(
            [sys.executable, "-m", "runstream.cli.main", "inspect", "--json", str(node)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert [(r["rank"], r["state"], r["rows"], r["lost"]) for r in as_json["ranks"]] == [
        (r, "finished", rows, 0) for r in range(4)
    ]
    history = subprocess.run(
        [sys.executable, "-m", "runstream.cli.main", "inspect", "--history", str(node)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    lines = [json.loads(line) for line in history.splitlines()]
    assert [(row["_rank"], row["loss"]) for row in lines] == [
        (r, r * 1000 + i) for r in range(4) for i in range(rows)
    ]


def test_a_restarted_job_resumes_the_same_run_and_rank_dirs(tmp_path: Path) -> None:
    first = finish_all(launch(tmp_path, 2, {"rows": 10}, TORCHELASTIC_RUN_ID="job-b"))
    assert [c for c, _, _ in first] == [0, 0], [e[-2000:] for _, _, e in first]
    writer_ids = [
        json.loads((node_dirs(tmp_path)[0] / f"rank-{r}" / "run.json").read_text())["writer_id"]
        for r in range(2)
    ]
    again = finish_all(
        launch(tmp_path, 2, {"rows": 10}, TORCHELASTIC_RUN_ID="job-b", TORCHELASTIC_RESTART_COUNT="1")
    )
    assert [c for c, _, _ in again] == [0, 0], [e[-2000:] for _, _, e in again]
    assert {json.loads(o.splitlines()[0])["id"] for _, o, _ in first + again} == {
        derived_run_id(ENTITY, "ranks", "torchelastic:job-b")
    }
    (node,) = node_dirs(tmp_path)  # the same node directory
    for r in range(2):
        rdir = node / f"rank-{r}"
        run_json = json.loads((rdir / "run.json").read_text())
        assert run_json["writer_id"] == writer_ids[r] and run_json["attempt"] == 1
        seqs = [record.seq for record in journal_records(rdir)]
        assert seqs == list(range(1, len(seqs) + 1))  # seqs continue: no repeat, no gap
        data = read_run(rdir)
        assert [row["_step"] for row in data.history] == list(range(20))  # steps continue too
        assert [row["loss"] for row in data.history] == [r * 1000 + i for i in range(10)] * 2
        assert data.run["state"] == "finished" and data.run["attempt"] == 1


def test_another_job_gets_another_run(tmp_path: Path) -> None:
    a = finish_all(launch(tmp_path, 2, {"rows": 3}, TORCHELASTIC_RUN_ID="job-c"))
    b = finish_all(launch(tmp_path, 2, {"rows": 3}, TORCHELASTIC_RUN_ID="job-d"))
    ids = {json.loads(o.splitlines()[0])["id"] for _, o, _ in a + b}
    assert len(ids) == 2 and len(node_dirs(tmp_path)) == 2


def test_a_killed_node_sidecar_is_restarted_by_a_rank_and_nothing_is_lost(tmp_path: Path) -> None:
    rows = 400
    procs = launch(tmp_path, 3, {"rows": rows, "wait": True}, TORCHELASTIC_RUN_ID="job-e")
    try:
        infos = [first_line(p) for p in procs]
        node = Path(infos[0]["dir"]).parent
        wait_for("a node sidecar", lambda: node_sidecar_alive(node) and node_sidecars_under(tmp_path), 20)
        (victim,) = node_sidecars_under(tmp_path)
        assert NODE_SIDECAR in victim.cmdline()
        os.kill(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        victim.wait(5)

        def successor() -> bool:
            others = [p for p in node_sidecars_under(tmp_path) if p.pid != victim.pid]
            return bool(others) and node_sidecar_alive(node)

        def spawned() -> bool:
            return any(p.pid != victim.pid for p in node_sidecars_under(tmp_path))

        wait_for("a new node sidecar process", spawned, 10)
        assert time.monotonic() - killed < 1.5  # every rank looks every 0.25 s
        wait_for("the new node sidecar to hold the lock", successor, 20)
        assert len(node_sidecars_under(tmp_path)) == 1
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = finish_all(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [c for c, _, _ in results] == [0, 0, 0], [e[-3000:] for _, _, e in results]
    for r in range(3):
        data = read_run(node / f"rank-{r}")
        assert [row["loss"] for row in data.history] == [r * 1000 + i for i in range(rows)]
        assert data.dropped == 0 and data.run["state"] == "finished"
        seqs = [record.seq for record in journal_records(node / f"rank-{r}")]
        assert len(seqs) == len(set(seqs))


def test_finish_waits_for_its_own_rank_only(tmp_path: Path) -> None:
    procs = launch(tmp_path, 2, {"rows": 20, "wait": True}, TORCHELASTIC_RUN_ID="job-f")
    try:
        infos = [first_line(p) for p in procs]
        assert procs[0].stdin is not None
        procs[0].stdin.write("go\n")
        procs[0].stdin.flush()
        _, err = procs[0].communicate(timeout=30)  # rank 1 is still mid-run, waiting on stdin
        assert procs[0].returncode == 0, err
        assert procs[1].poll() is None
        assert "rank 0/2 finished: 20 steps" in err and ", 0 lost" in err
        assert read_run(infos[0]["dir"]).history_rows == 20
        data1 = read_run(infos[1]["dir"])
        assert data1.run["state"] == "running" and data1.history_rows == 10  # the node sidecar serves it
        assert procs[1].stdin is not None
        procs[1].stdin.write("go\n")
        procs[1].stdin.flush()
        _, err1 = procs[1].communicate(timeout=30)
        assert procs[1].returncode == 0, err1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert read_run(infos[1]["dir"]).history_rows == 20


@pytest.mark.usefixtures("finish_active_run")
def test_a_rank_that_cannot_agree_on_a_run_fails_before_creating_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two nodes, static rendezvous, no job id and no torch.distributed: rank 1 cannot know the id.
    for k, v in torchrun_env(1, 4, 2, node=0).items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UsageError, match="RUNSTREAM_RUN_ID"):
        runstream.init(project="p", mode="offline", dir=tmp_path)
    assert not (tmp_path / "runstream").exists()


@pytest.mark.usefixtures("finish_active_run")
def test_world_size_one_is_the_single_process_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in torchrun_env(0, 1).items():
        monkeypatch.setenv(k, v)
    run = runstream.init(project="p", mode="offline", dir=tmp_path, settings={"silent": True})
    run.log({"a": 1})
    run.finish()
    run_dir = Path(run.dir)
    assert (run_dir / "journal").is_dir() and not (run_dir / "node.json").exists()
    assert run_dir.parent == tmp_path / "runstream" and "rank" not in read_run(run_dir).run


def test_wandb_shared_mode_settings_are_accepted() -> None:
    s = resolve_settings(
        mode="shared",
        settings={"x_label": "rank_2", "x_primary": False, "x_update_finish_state": False},
        environ={},
    )
    assert (s.mode, s.x_label, s.x_primary, s.x_update_finish_state) == ("shared", "rank_2", False, False)
    assert Settings(x_primary="yes").x_primary is True  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="x_primary"):
        Settings(x_primary="maybe")  # type: ignore[arg-type]


SHARED = r"""
import json, sys
import runstream
label = sys.argv[2]
settings = runstream.Settings(mode="shared", x_label=label, x_primary=label == "rank_0")
run = runstream.init(project="shared", id="sharedrun1", dir=sys.argv[1], settings=settings)
run.log({"v": 1})
print(json.dumps({"id": run.id, "dir": str(run.dir)}))
run.finish()
"""


def test_wandb_shared_mode_without_a_launcher_makes_ranks_of_one_run(tmp_path: Path) -> None:
    procs = [spawn(SHARED, {}, str(tmp_path), label) for label in ("rank_0", "rank_1")]
    results = finish_all(procs)
    assert [c for c, _, _ in results] == [0, 0], [e[-2000:] for _, _, e in results]
    seen = [json.loads(o.strip().splitlines()[-1]) for _, o, _ in results]
    assert {s["id"] for s in seen} == {"sharedrun1"}
    assert [Path(s["dir"]).name for s in seen] == ["rank-0", "rank-1"]
    assert Path(seen[1]["dir"]).parent.name.endswith("-sharedrun1-node1")
    assert read_run(seen[1]["dir"]).run["rank"] == 1
    assert all("running offline" in e for _, _, e in results)  # shared is online; no server here


def test_no_node_sidecar_process_outlives_its_ranks(tmp_path: Path) -> None:
    finish_all(launch(tmp_path, 2, {"rows": 5}, TORCHELASTIC_RUN_ID="job-g"))
    wait_for("the node sidecar to exit", lambda: not node_sidecars_under(tmp_path), 15)
    assert not [
        p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]


GROUPED = r"""
import json, sys
import runstream
run = runstream.init(project="grouped", group="exp-1", mode="offline", dir=sys.argv[1])
run.log({"v": 1})
print(json.dumps({"id": run.id, "dir": str(run.dir)}))
run.finish()
"""


def test_a_group_keeps_wandbs_one_run_per_rank(tmp_path: Path) -> None:
    procs = [spawn(GROUPED, torchrun_env(r, 2, TORCHELASTIC_RUN_ID="job-h"), str(tmp_path)) for r in range(2)]
    results = finish_all(procs)
    assert [c for c, _, _ in results] == [0, 0], [e[-2000:] for _, _, e in results]
    seen = [json.loads(o.strip().splitlines()[-1]) for _, o, _ in results]
    assert len({s["id"] for s in seen}) == 2  # two runs, as W&B makes
    for s in seen:
        run_dir = Path(s["dir"])
        assert run_dir.parent == tmp_path / "runstream" and not (run_dir / "node.json").exists()
        data = read_run(run_dir)
        assert data.run["group"] == "exp-1" and "rank" not in data.run and data.history_rows == 1


def test_when_no_node_sidecar_can_run_the_finish_line_counts_the_loss(tmp_path: Path) -> None:
    env = {**torchrun_env(0, 2, TORCHELASTIC_RUN_ID="job-i"), "RUNSTREAM_SIDECAR_WRAPPER": "false"}
    (code, out, err) = finish_all(
        [spawn(WORKER, {"RUNSTREAM_ENTITY": ENTITY, **env}, str(tmp_path), '{"rows": 25}')]
    )[0]
    assert code == 0, err
    rank_dir = Path(json.loads(out.splitlines()[0])["dir"])
    assert "rank 0/2 finished: 25 steps, 1 records journaled" in err
    assert "no sidecar could run to journal the last" in err
    data = read_run(rank_dir)
    assert data.run["state"] == "finished" and data.dropped == data.stats["sidecar_lost_records"] > 25


ONLINE = r"""
import json, os, sys
import runstream
run = runstream.init(project="online", dir=sys.argv[1], settings={"silent": True})
rank = int(os.environ["RANK"])
for i in range(40):
    runstream.log({"loss": rank * 1000 + i})
print(json.dumps({"id": run.id, "dir": str(run.dir)}), flush=True)
runstream.finish()
"""


def test_online_ranks_reach_the_server_as_one_run(tmp_path: Path, server: Any) -> None:
    """The SDK's side online: the node sidecar gets the server on its command line, each rank's
    sidecar.json carries its identity (never the key), and the server ends up with one run whose
    rank 0 rows are the run's own."""
    import urllib.request

    env = {"RUNSTREAM_HOST": server.url, "RUNSTREAM_ENTITY": ENTITY}
    procs = [
        spawn(ONLINE, {**env, **torchrun_env(r, 2, TORCHELASTIC_RUN_ID="job-o")}, str(tmp_path))
        for r in range(2)
    ]
    results = finish_all(procs)
    assert [c for c, _, _ in results] == [0, 0], [e[-3000:] for _, _, e in results]
    seen = [json.loads(o.strip().splitlines()[-1]) for _, o, _ in results]
    run_id = derived_run_id(ENTITY, "online", "torchelastic:job-o")
    assert {s["id"] for s in seen} == {run_id}
    for s in seen:
        args = json.loads((Path(s["dir"]) / "sidecar.json").read_text())["args"]
        assert args[args.index("--url") + 1] == server.url and args[args.index("--run-id") + 1] == run_id
        assert args[args.index("--resume") + 1] == "allow"
        assert "api" not in " ".join(args).lower()
    url = f"{server.url}/api/v1/runs/{ENTITY}/online/{run_id}/history?keys=loss"
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = json.load(resp)
    assert [row["loss"] for row in body["rows"]] == list(range(40))  # the run's rows are rank 0's


def test_eight_ranks_starting_together_start_one_node_sidecar(tmp_path: Path) -> None:
    """Every start of a node sidecar goes through a wrapper that notes it: ranks racing at init
    start exactly one (the first to get there), the others find it starting."""
    spawns = tmp_path / "spawns"
    wrapper = f"sh -c 'echo $$ >> {spawns}; exec \"$@\"' sh"
    procs = [
        spawn(
            WORKER,
            {"RUNSTREAM_ENTITY": ENTITY, "RUNSTREAM_SIDECAR_WRAPPER": wrapper, **torchrun_env(r, 8)},
            str(tmp_path),
            '{"rows": 6, "wait": true}',
        )
        for r in range(8)
    ]
    try:
        for p in procs:  # every rank is past init (none finishes before the last one starts)
            first_line(p)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = finish_all(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [c for c, _, _ in results] == [0] * 8, [e[-2000:] for _, _, e in results]
    assert len(spawns.read_text().split()) == 1
    (node,) = node_dirs(tmp_path)
    assert all(read_run(node / f"rank-{r}").history_rows == 6 for r in range(8))


def test_a_restarted_rank_first_gets_what_its_killed_attempt_left_in_the_ring(tmp_path: Path) -> None:
    """Attempt 0 logs with no node sidecar able to run, and is killed: its rows are only in its
    ring.  Attempt 1 of the same rank has a node sidecar journal them first, then goes on after
    them: nothing lost, seqs contiguous, steps continuing."""
    first = [
        spawn(
            WORKER,
            {
                "RUNSTREAM_ENTITY": ENTITY,
                "RUNSTREAM_SIDECAR_WRAPPER": "false",
                **torchrun_env(r, 2, TORCHELASTIC_RUN_ID="job-k"),
            },
            str(tmp_path),
            '{"rows": 10, "wait": true}',
        )
        for r in range(2)
    ]
    try:
        for p in first:
            first_line(p)
        (node,) = node_dirs(tmp_path)
        for p in first:  # rows 0..4 are logged (the 5th may still be pending in the process)
            assert first_line(p) == {"waiting": 5}
        for p in first:
            p.kill()
            p.communicate(timeout=10)  # also closes its pipes
    finally:
        for p in first:
            if p.poll() is None:
                p.kill()
    assert not any(any((node / f"rank-{r}" / "journal").iterdir()) for r in range(2))  # none journaled
    again = finish_all(
        launch(tmp_path, 2, {"rows": 10}, TORCHELASTIC_RUN_ID="job-k", TORCHELASTIC_RESTART_COUNT="1")
    )
    assert [c for c, _, _ in again] == [0, 0], [e[-3000:] for _, _, e in again]
    for r in range(2):
        rdir = node / f"rank-{r}"
        seqs = [record.seq for record in journal_records(rdir)]
        assert seqs == list(range(1, len(seqs) + 1))
        data = read_run(rdir)
        losses = [row["loss"] for row in data.history]
        kept = len(losses) - 10
        assert kept >= 4 and losses == [r * 1000 + i for i in range(kept)] + [r * 1000 + i for i in range(10)]
        assert [row["_step"] for row in data.history] == list(range(kept + 10))
        assert data.run["state"] == "finished"


def test_a_previous_ring_no_sidecar_drains_gives_its_last_seq_so_no_seq_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A requeued rank whose previous attempt's ring no node sidecar drains (none can run): after
    the wait, it learns the last seq that attempt published, read from the ring's own record
    headers across a wrap, so its own seqs start after it and are never confused with the old
    ones (the journal's missing seqs are then declared lost, not silently replaced)."""
    from runstream.distributed import start
    from runstream.format.ring_layout import W_HEAD, W_TAIL, RingMap
    from runstream.ring import RingWriter

    ring_path = tmp_path / "old.ring"
    ring = RingMap.create(ring_path, 1 << 20)
    writer = RingWriter(ring, 0, first_seq=41)
    body = b"x" * 1000
    for i in range(900):
        writer.push(rec.KIND_ROW, i, 0.0, body)
    assert start.last_published_seq(ring) == 940
    ring.words[W_TAIL] = ring.words[W_HEAD]  # a sidecar journaled them all, then stopped
    assert start.last_published_seq(ring) == 0
    for i in range(200):  # past the end of the data area: the ring wraps
        writer.push(rec.KIND_ROW, 900 + i, 0.0, body)
    assert ring.words[W_HEAD] // ring.capacity == 1
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    rank_path = tmp_path / "rank-0"
    rank_path.mkdir()
    (rank_path / "sidecar.json").write_text(json.dumps({"ring": str(ring_path), "producer_pid": dead.pid}))
    monkeypatch.setattr(start, "PREVIOUS_TIMEOUT", 0.3)
    monkeypatch.setattr(start.NodeSupervisor, "ensure", lambda self: None)  # no node sidecar can run
    t0 = time.monotonic()
    assert start._wait_previous(rank_path, tmp_path, [], {}) == 1140
    assert time.monotonic() - t0 < 5
    assert ring_path.exists()  # left for `runstream inspect`; nothing was drained from it
    ring.close()
