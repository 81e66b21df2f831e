"""The demo's training: a small simulated run.  Online when RUNSTREAM_HOST names a server (as
`make demo` arranges), offline otherwise."""

import math
import random
import sys
import time

import runstream

LR = float(sys.argv[1]) if len(sys.argv) > 1 else 1e-3  # `make demo` trains a few learning rates

EPOCHS, STEPS_PER_EPOCH = 5, 20_000

with runstream.init(
    project="demo",
    config={"lr": LR, "arch": "cnn", "epochs": EPOCHS, "batch_size": 128},
    tags=["baseline"],
    settings={"stats_interval": 0.5},  # system metrics twice a second (default: every 2 s)
) as run:
    best = 0.0
    for epoch in range(EPOCHS):
        for i in range(STEPS_PER_EPOCH):
            t = epoch * STEPS_PER_EPOCH + i
            loss = 2.0 * math.exp(-t * LR / 30) + random.random() * 0.05
            run.log({"train": {"loss": loss, "lr": run.config.lr}, "epoch": epoch})
        acc = min(1.0, 1 - math.exp(-(epoch + 1) * LR * 500) + random.random() * 0.01)
        best = max(best, acc)
        run.log({"val": {"acc": acc}}, commit=False)
        print(f"epoch {epoch}: train/loss {loss:.4f}  val/acc {acc:.4f}")  # kept in the Console tab
        time.sleep(0.5)  # "evaluation": gives the System tab a few samples per run
    run.summary["best_acc"] = best
