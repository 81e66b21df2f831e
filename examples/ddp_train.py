"""Distributed data-parallel training on the CPU, every rank logging to ONE run.

    torchrun --nproc-per-node 4 examples/ddp_train.py            # one run, 4 ranks
    RUNSTREAM_HOST=http://127.0.0.1:7780 torchrun --nproc-per-node 4 examples/ddp_train.py

The script is what a single-process script would be: ``runstream.init`` on every rank, no rank
guard, no hand-passed run id (docs/distributed.md).  Each rank trains a small model with
``DistributedDataParallel`` (gloo backend, so no GPU is needed) on its own shard of a synthetic
regression problem and logs its own loss; the run keeps each rank's rows as that rank's, so
``loss`` stays ``loss`` and the dashboard shows rank 0, all ranks, or their mean with a band.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import runstream


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--project", default="ddp-demo")
    args = ap.parse_args()

    dist.init_process_group("gloo")  # torchrun's RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts them)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)

    # This rank's shard: its own inputs of one shared target function.
    gen = torch.Generator().manual_seed(1000 + rank)
    x = torch.randn(256, 8, generator=gen)
    y = (x[:, :4].sum(dim=1, keepdim=True) - x[:, 4:].sum(dim=1, keepdim=True)).tanh()

    # Every rank calls init: one run for the whole job (its id comes from torchrun's job).
    run = runstream.init(
        project=args.project, config={"lr": args.lr, "world_size": world, "steps": args.steps}
    )
    print(f"rank {rank} of {world} on pid {os.getpid()}", flush=True)  # kept as this rank's line
    for _ in range(args.steps):
        i = torch.randint(0, x.shape[0], (32,), generator=gen)
        loss = nn.functional.mse_loss(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()  # DDP averages the gradients over every rank here
        opt.step()
        # This rank's loss at this rank's step; the weights' norm is the same on every rank (DDP).
        norm = torch.cat([p.detach().flatten() for p in model.parameters()]).norm().item()
        run.log({"loss": loss.item(), "weight_norm": norm})
    run.finish()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
