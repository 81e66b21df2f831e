"""Feed a distributed run into a real server over gRPC, as node sidecars do: one stream per
writer (each rank, each node's own writer), each Open carrying its ``Member`` (docs/protocol.md).

Used by the read-side tests (tests/server/test_distributed_read.py, tests/sdk/test_api_ranks.py):
the data goes through the server's real ingest path, then is read back over HTTP.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import grpc
import zstandard

from runstream.format import record as rec
from runstream_ingest.wire import ingest_pb2 as pb
from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc

TIMEOUT = 30.0


@dataclass
class Writer:
    """One writer's records, built in seq order."""

    records: list[bytes] = field(default_factory=list)

    def add(self, kind: int, body: Any, step: int = 0, time: float = 1000.0) -> Writer:
        self.records.append(rec.encode(len(self.records) + 1, kind, step, time, rec.pack_body(body)))
        return self


def open_msg(
    entity: str, project: str, run_id: str, writer: str, member: pb.Member | None, resume: str = ""
) -> pb.ClientMessage:
    return pb.ClientMessage(
        open=pb.Open(
            entity=entity, project=project, run_id=run_id, writer_id=writer, resume=resume,
            protocol_version=1, member=member,
        )
    )  # fmt: skip


def send(
    stub: pb_grpc.IngestStub,
    entity: str,
    project: str,
    run_id: str,
    writer_id: str,
    w: Writer,
    member: pb.Member | None = None,
    resume: str = "",
) -> list[int]:
    """One stream: Open, one batch of every record, half-close.  Returns the acked seqs."""
    payload = zstandard.ZstdCompressor().compress(b"".join(w.records))
    n = len(w.records)
    batch = pb.ClientMessage(
        batch=pb.Batch(
            first_seq=1, last_seq=n, codec=pb.CODEC_ZSTD, crc32c=rec.crc32c(payload), payload=payload,
            record_count=n,
        )
    )  # fmt: skip
    msgs = [open_msg(entity, project, run_id, writer_id, member, resume), batch]
    answers = list(stub.Stream(iter(msgs), timeout=TIMEOUT))
    assert answers and answers[0].WhichOneof("msg") == "opened", answers
    return [a.ack.seq for a in answers[1:] if a.WhichOneof("msg") == "ack"]


def channel(grpc_port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{grpc_port}")


def get(url: str) -> tuple[int, Any]:
    """(status, decoded JSON body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def request(url: str, method: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


# --- one job: 3 ranks on 2 nodes, every rank logging its own values ------------------------------
WORLD, NODES = 3, 2
NODE_OF = {0: 0, 1: 0, 2: 1}
HOSTS = {0: "gpu-a", 1: "gpu-b"}
STEPS = 10
T0 = 1_700_000_000.0


def loss(rank: int, step: int) -> float:
    """What rank ``rank`` logs at ``step``: ranks differ, so a mix-up shows."""
    return 10.0 * rank + step / 10


def member(rank: int, *, node_writer: bool = False, node: int | None = None) -> pb.Member:
    k = NODE_OF[rank] if node is None else node
    local = [r for r in sorted(NODE_OF) if NODE_OF[r] == k].index(rank) if not node_writer else 0
    return pb.Member(
        rank=rank, node=k, world_size=WORLD, node_count=NODES, local_rank=local,
        node_writer=node_writer, host=HOSTS[k],
    )  # fmt: skip


def rank_writer(rank: int, run_id: str, exit_code: int | None, steps: int = STEPS) -> Writer:
    w = Writer()
    meta = {"id": run_id, "name": f"job-{run_id}", "start_time": T0, "host": HOSTS[NODE_OF[rank]],
            "program": "train.py", "rank": rank, "world_size": WORLD}  # fmt: skip
    w.add(rec.KIND_RUN, meta, time=T0)
    w.add(rec.KIND_CONFIG, {"lr": 0.1, f"only_rank{rank}": rank}, time=T0)
    for s in range(steps):
        t = T0 + 1 + s + rank / 10  # ranks interleave in time
        w.add(rec.KIND_ROW, {"loss": loss(rank, s), "tag": f"r{rank}s{s}"}, step=s, time=t)
        w.add(rec.KIND_CONSOLE, {"stream": "stdout", "lines": [f"rank {rank} step {s}"]}, time=t)
        w.add(rec.KIND_SYSTEM, {"proc/rss_mb": 100.0 + rank}, time=t)
    if exit_code is not None:
        state = "finished" if exit_code == 0 else "failed"
        w.add(rec.KIND_EXIT, {"exit_code": exit_code, "state": state}, time=T0 + 100 + rank)
    return w


def node_writer(node: int) -> Writer:
    w = Writer()
    for i in range(5):
        w.add(
            rec.KIND_SYSTEM, {"system/cpu": 10.0 * (node + 1) + i, "system/gpu.0.util": 50.0}, time=T0 + 1 + i
        )
    return w


def feed_job(
    stub: pb_grpc.IngestStub,
    entity: str,
    project: str,
    run_id: str,
    exits: dict[int, int | None] | None = None,
    steps: dict[int, int] | None = None,
) -> None:
    """The job ``run_id``: ranks 0..2 (rank 2 exits 1 by default: the job failed), each logging
    ``steps[rank]`` rows (default STEPS), and both nodes' own writers.  Rank 1 opens first, so the
    run's top row begins as its placeholder."""
    exits = {0: 0, 1: 0, 2: 1} if exits is None else exits
    for rank in (1, 0, 2):
        if rank in exits:
            w = rank_writer(rank, run_id, exits[rank], (steps or {}).get(rank, STEPS))
            send(stub, entity, project, run_id, f"r{rank}.a0", w, member(rank))
    for k in range(NODES):
        m = member(next(r for r in NODE_OF if NODE_OF[r] == k), node_writer=True, node=k)
        send(stub, entity, project, run_id, f"n{k}.companion", node_writer(k), m, resume="companion")
