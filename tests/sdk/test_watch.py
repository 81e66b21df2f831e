"""``runstream.watch``: histograms of a real torch model's gradients and parameters, read back
from the run as a W&B user reads them (docs/watch.md)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import runstream

pytestmark = pytest.mark.usefixtures("finish_active_run")


def offline(tmp_path: Path) -> Any:
    return runstream.init(project="w", mode="offline", dir=tmp_path)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def train(run: Any, model: nn.Module, batches: int, log: bool = True) -> list[dict[str, torch.Tensor]]:
    """SGD on random data; returns each batch's gradients as autograd computed them."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []
    for _ in range(batches):
        opt.zero_grad()
        loss = model(torch.randn(8, 6)).pow(2).mean()
        loss.backward()
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
        opt.step()
        if log:
            run.log({"loss": loss.item()})
    return grads


def history(run: Any) -> list[dict[str, Any]]:
    run.finish()
    return list(runstream.read_run(run.dir).history)


def watched_keys(row: dict[str, Any]) -> set[str]:
    return {k for k in row if k.startswith(("gradients/", "parameters/"))}


def assert_histogram_of(value: dict[str, Any], tensor: torch.Tensor) -> None:
    """W&B's histogram of ``tensor``: 64 counts over [min, max], 65 edges."""
    assert value["_type"] == "histogram"
    t = tensor.detach().double().reshape(-1)
    lo, hi = t.min().item(), t.max().item()
    assert len(value["values"]) == 64 and len(value["bins"]) == 65
    assert value["bins"][0] == pytest.approx(lo) and value["bins"][-1] == pytest.approx(hi)
    expected = torch.histc(t, 64, lo, hi).long().tolist()
    assert sum(value["values"]) == t.numel()
    # A value on a bin edge may land on either side by rounding; the counts agree otherwise.
    assert sum(abs(a - b) for a, b in zip(value["values"], expected, strict=True)) <= 2


def test_gradients_every_log_freq_batches_in_the_row_of_the_next_log(tmp_path: Path) -> None:
    run = offline(tmp_path)
    model = mlp()
    runstream.watch(model, log_freq=3)
    grads = train(run, model, 7)
    rows = history(run)
    names = {"gradients/0.weight", "gradients/0.bias", "gradients/2.weight", "gradients/2.bias"}
    for step, row in enumerate(rows):
        if step in (2, 5):  # the 3rd and 6th batch
            assert watched_keys(row) == names
            for name in names:
                assert_histogram_of(row[name], grads[step][name.removeprefix("gradients/")])
        else:
            assert watched_keys(row) == set(), step
        assert "loss" in row


def test_parameters_and_all_and_none(tmp_path: Path) -> None:
    run = offline(tmp_path)
    a, b, c = mlp(), mlp(), mlp()
    run.watch(a, log="parameters", log_freq=2)
    run.watch(b, log="all", log_freq=2)
    run.watch(c, log=None, log_freq=1)
    snapshots = []
    opt = torch.optim.SGD([*a.parameters(), *b.parameters(), *c.parameters()], lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        loss = sum(m(torch.randn(4, 6)).pow(2).mean() for m in (a, b, c))
        snapshots.append({n: p.detach().clone() for n, p in a.named_parameters()})
        loss.backward()
        opt.step()
        run.log({"loss": loss.item()})
    rows = history(run)
    assert watched_keys(rows[0]) == set()
    keys = watched_keys(rows[1])
    # a: parameters only; b (graph_1): both; c (graph_2, log=None): nothing.
    assert keys == {f"parameters/{n}" for n in ("0.weight", "0.bias", "2.weight", "2.bias")} | {
        f"{kind}/graph_1{n}"
        for kind in ("parameters", "gradients")
        for n in ("0.weight", "0.bias", "2.weight", "2.bias")
    }
    for n, value in snapshots[1].items():  # the values the forward saw, before that batch's step
        assert_histogram_of(rows[1][f"parameters/{n}"], value)


def test_several_models_and_idx_prefix_names_as_w_and_b_does(tmp_path: Path) -> None:
    run = offline(tmp_path)
    first, second, third, fourth = (nn.Linear(6, 3) for _ in range(4))
    runstream.watch([first, second], log_freq=1)
    runstream.watch(third, log_freq=1)
    runstream.watch(fourth, log_freq=1, idx=7)
    loss = sum(m(torch.randn(2, 6)).sum() for m in (first, second, third, fourth))
    loss.backward()
    run.log({"loss": loss.item()})
    (row,) = history(run)
    assert watched_keys(row) == {
        f"gradients/{p}{n}" for p in ("", "graph_1", "graph_2", "graph_7") for n in ("weight", "bias")
    }


def test_unwatch_stops_and_removes_every_hook(tmp_path: Path, capfd: Any) -> None:
    run = offline(tmp_path)
    a, b = mlp(), mlp()
    run.watch(a, log="all", log_freq=1)
    run.watch(b, log="all", log_freq=1)
    train(run, a, 1)
    run.unwatch(a)
    assert not a._forward_hooks and all(not p._backward_hooks for p in a.parameters())
    train(run, a, 1)
    train(run, b, 1)
    runstream.unwatch()
    run.unwatch(a)  # not watched any more: a warning, no error
    assert "is not watched" in capfd.readouterr().err
    assert not b._forward_hooks and all(not p._backward_hooks for p in b.parameters())
    train(run, b, 1)
    rows = history(run)
    assert len(watched_keys(rows[0])) == 8
    assert watched_keys(rows[1]) == set()
    assert {k.split("/")[1][:7] for k in watched_keys(rows[2])} == {"graph_1"}
    assert watched_keys(rows[3]) == set()


def test_a_parameter_without_gradient_is_skipped(tmp_path: Path) -> None:
    run = offline(tmp_path)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(6, 3)
            self.unused = nn.Linear(6, 3)  # in the model, never in the forward
            self.frozen = nn.Linear(3, 3).requires_grad_(False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.frozen(self.used(x))

    model = Net()
    run.watch(model, log="all", log_freq=1)
    train(run, model, 1)
    (row,) = history(run)
    assert {k for k in watched_keys(row) if k.startswith("gradients/")} == {
        "gradients/used.weight",
        "gradients/used.bias",
    }
    # Parameters are all histogrammed, as W&B does, trainable or not.
    assert len([k for k in watched_keys(row) if k.startswith("parameters/")]) == 6


def test_histograms_ride_with_commit_false_rows_and_step_and_finish(tmp_path: Path) -> None:
    run = offline(tmp_path)
    model = mlp()
    run.watch(model, log="gradients", log_freq=1)
    model(torch.randn(2, 6)).sum().backward()
    run.log({"a": 1}, commit=False)  # pending: the histograms wait with it
    run.log({"b": 2})
    model(torch.randn(2, 6)).sum().backward()
    run.log({"c": 3}, step=5)  # commits the histograms at step 1, then moves to 5
    run.log({"d": 4})
    model(torch.randn(2, 6)).sum().backward()  # never followed by a log: finish writes it
    rows = history(run)
    assert [r["_step"] for r in rows] == [0, 1, 5, 6]
    assert rows[0]["a"] == 1 and rows[0]["b"] == 2 and len(watched_keys(rows[0])) == 4
    assert len(watched_keys(rows[1])) == 4 and "c" not in rows[1]
    assert rows[2]["c"] == 3 and rows[2]["d"] == 4 and not watched_keys(rows[2])
    assert len(watched_keys(rows[3])) == 4


def test_a_key_logged_by_the_user_wins_over_the_histogram(tmp_path: Path) -> None:
    run = offline(tmp_path)
    model = nn.Linear(6, 3)
    run.watch(model, log_freq=1)
    model(torch.randn(2, 6)).sum().backward()
    run.log({"gradients/weight": 0.5})
    (row,) = history(run)
    assert row["gradients/weight"] == 0.5 and row["gradients/bias"]["_type"] == "histogram"


def test_nan_and_inf_are_left_out_of_the_counts(tmp_path: Path) -> None:
    run = offline(tmp_path)
    model = nn.Linear(100, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linspace(-1, 1, 100))
        model.weight[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    run.watch(model, log="parameters", log_freq=1)
    model(torch.randn(1, 100))
    run.log({"x": 1})
    (row,) = history(run)
    h = row["parameters/weight"]
    assert sum(h["values"]) == 97
    finite = model.weight.detach()[0, 3:]
    assert h["bins"][0] == pytest.approx(finite.min().item()) and h["bins"][-1] == pytest.approx(1.0)


def test_bfloat16_and_sparse_gradients(tmp_path: Path) -> None:
    run = offline(tmp_path)
    torch.manual_seed(0)
    emb = nn.Embedding(50, 4, sparse=True)  # its gradient is a sparse tensor: 3 rows set, 47 zero
    lin = nn.Linear(4, 2).to(torch.bfloat16)
    run.watch(emb, log="gradients", log_freq=1)
    run.watch(lin, log="all", log_freq=1)
    emb(torch.tensor([1, 2, 3])).sum().backward()
    lin(torch.randn(3, 4, dtype=torch.bfloat16)).sum().backward()
    run.log({"x": 1})
    (row,) = history(run)
    assert_histogram_of(row["gradients/weight"], emb.weight.grad.to_dense())
    assert sum(row["gradients/weight"]["values"]) == 200
    assert_histogram_of(row["parameters/graph_1weight"], lin.weight.float())
    assert_histogram_of(row["gradients/graph_1weight"], lin.weight.grad.float())


def test_a_model_trained_without_its_own_forward_still_logs_gradients(tmp_path: Path) -> None:
    # Lightning's training_step often calls a submodule, not the watched module's forward.
    run = offline(tmp_path)
    outer = nn.ModuleDict({"enc": nn.Linear(6, 4), "head": nn.Linear(4, 2)})
    run.watch(outer, log_freq=2)
    for _ in range(4):
        outer["head"](outer["enc"](torch.randn(3, 6))).sum().backward()
        run.log({"x": 1})
    rows = history(run)
    names = {f"gradients/{m}.{p}" for m in ("enc", "head") for p in ("weight", "bias")}
    assert [watched_keys(r) for r in rows] == [set(), names, set(), names]


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(runstream.UsageError, match=r"before runstream\.init"):
        runstream.watch(nn.Linear(1, 1))
    run = offline(tmp_path)
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="log must be"):
        run.watch(model, log="weights")
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        run.watch("model")
    with pytest.raises(ValueError, match="log_freq"):
        run.watch(model, log_freq=-1)
    run.watch(model)
    with pytest.raises(ValueError, match="already watched"):
        run.watch(model)
    run.finish()
    with pytest.raises(runstream.UsageError):
        run.watch(nn.Linear(2, 2))


def test_disabled_mode_accepts_watch() -> None:
    run = runstream.init(mode="disabled")
    runstream.watch(nn.Linear(2, 2), log="all", log_freq=1)
    runstream.unwatch()
    run.finish()


def test_the_hooks_do_nothing_after_finish(tmp_path: Path) -> None:
    run = offline(tmp_path)
    model = nn.Linear(2, 2)
    run.watch(model, log="all", log_freq=1)
    run.finish()
    assert not model._forward_hooks
    model(torch.randn(1, 2)).sum().backward()  # no error, nothing recorded


def test_on_a_device_the_hooks_never_read_a_tensor_to_the_host(tmp_path: Path, capfd: Any) -> None:
    # A meta tensor has no data: any .item(), .cpu() or data-dependent branch raises.  So hooks
    # that run on a meta model prove they only queue device work (as on a GPU: no sync); the
    # read happens when the row is committed, which here fails, is reported, and logs the rest.
    run = offline(tmp_path)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).to("meta")
    run.watch(model, log="all", log_freq=1)
    model(torch.randn(4, 6, device="meta")).sum().backward()
    ready = run._watcher.ready
    assert len(ready) == 8 and all(t.device.type == "meta" and t.shape == (67,) for t in ready.values())
    assert "watch could not" not in capfd.readouterr().err
    run.log({"loss": 1.0})  # the commit reads them: impossible on meta, so warned and skipped
    assert "watch could not histogram" in capfd.readouterr().err
    (row,) = history(run)
    assert row["loss"] == 1.0 and not watched_keys(row)


# --- distributed: real processes on gloo over 127.0.0.1 ----------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(tmp_path: Path, body: str, timeout: float = 120) -> None:
    """Run ``body`` as two ranks of one process group; each must exit 0 within ``timeout``."""
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(body))
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
        env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
        out = open(tmp_path / f"rank{rank}.log", "wb")  # noqa: SIM115 -- closed below
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, str(script)], cwd=tmp_path, env=env, stdout=out, stderr=out
                ),
                out,
            )
        )
    try:
        for p, _ in procs:
            p.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(
            "distributed training with watch did not finish: "
            + " | ".join((tmp_path / f"rank{r}.log").read_text()[-2000:] for r in (0, 1))
        )
    finally:
        for p, out in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            out.close()
    for rank, (p, _) in enumerate(procs):
        assert p.returncode == 0, (tmp_path / f"rank{rank}.log").read_text()[-3000:]


def rank_history(tmp_path: Path, rank: int) -> list[dict[str, Any]]:
    # Both ranks' init made one run (docs/distributed.md): one node directory, a rank-<r>/ each.
    (node_dir,) = (tmp_path / "runstream").glob("run-*")
    return list(runstream.read_run(node_dir / f"rank-{rank}").history)


@pytest.mark.slow
def test_ddp_with_log_all_finishes_when_ranks_watch_differently(tmp_path: Path) -> None:
    # W&B's watch(log="all") is reported to hang DDP.  Here the ranks even log at different
    # batches (log_freq 1 and 3): nothing in the hooks may wait for the other rank.
    run_ranks(
        tmp_path,
        """
        import os, torch, torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP
        import runstream
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        run = runstream.init(project="ddp", mode="offline", dir=".")
        torch.manual_seed(0)
        model = DDP(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)))
        runstream.watch(model, log="all", log_freq=1 if rank == 0 else 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for i in range(6):
            opt.zero_grad()
            loss = model(torch.randn(4, 8) + rank).pow(2).mean()
            loss.backward()
            opt.step()
            run.log({"loss": loss.item()})
        run.finish()
        dist.destroy_process_group()
        """,
    )
    r0, r1 = rank_history(tmp_path, 0), rank_history(tmp_path, 1)
    assert all("gradients/module.0.weight" in r and "parameters/module.2.bias" in r for r in r0)
    assert [i for i, r in enumerate(r1) if "gradients/module.0.weight" in r] == [2, 5]


@pytest.mark.slow
def test_fsdp_sharded_parameters_are_histogrammed_from_the_local_shard(tmp_path: Path) -> None:
    run_ranks(
        tmp_path,
        """
        import torch, torch.distributed as dist
        from torch.distributed.fsdp import fully_shard
        import runstream
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        run = runstream.init(project="fsdp", mode="offline", dir=".")
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        fully_shard(model[0]); fully_shard(model[2]); fully_shard(model)
        runstream.watch(model, log="all", log_freq=2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for i in range(4):
            opt.zero_grad()
            model(torch.randn(4, 8) + rank).pow(2).mean().backward()
            opt.step()
            run.log({"i": i})
        run.finish()
        dist.destroy_process_group()
        """,
    )
    for rank in (0, 1):
        rows = rank_history(tmp_path, rank)
        assert [i for i, r in enumerate(rows) if "gradients/0.weight" in r] == [1, 3]
        row = rows[1]
        # Each rank holds half of each parameter's rows: 8 of 16 for 0.weight (8 x 8 values).
        assert sum(row["gradients/0.weight"]["values"]) == 64
        assert sum(row["parameters/0.weight"]["values"]) == 64
        assert sum(row["gradients/2.bias"]["values"]) == 2
