"""What does ``watch`` cost a training loop, beside wandb's?  (issue 12; ``make bench``)

Two small models trained on the CPU (torch, one thread): a CNN (two 3x3 convolutions and a
linear head, batches of 16 RGB 32x32 images) and a transformer encoder (2 layers, d_model 64,
4 heads, batches of 8 sequences of 32 tokens).  For each, and for ``log_freq`` 1, 10 and 100, a
real offline run trains two instances of the model in alternating blocks of steps (ABBA): one
watched (``watch(model, log=..., log_freq=...)``), one not; each step also logs its loss, so the
difference is watch's own cost.  Figures, per (model, log_freq, tracker):

* ``base_ms``: the median time of a step of the unwatched instance;
* ``overhead_us`` / ``overhead_pct``: median over blocks of the watched block's time per step
  minus the unwatched block's (a block is ``log_freq`` steps, at least 10, so it holds the same
  number of logged batches: the logged batch's cost is spread over its block);
* ``logged_step_us``: the median extra time of a logged step (the one whose row gets histograms,
  the ``log`` that reads them included);
* ``between_us``: the median extra time of the steps between logged ones (should be ~0).

Each figure is given for two clocks: ``cpu``, the training thread's CPU time (torch runs on that
one thread, hooks and histograms included; the trackers' own processes are not in it), which a
busy machine does not inflate, and ``wall``, elapsed time.

The same script runs for runstream (this Python) and for wandb (``--wandb-python PATH``, default
``$RUNSTREAM_BENCH_WANDB_PYTHON``: a Python with wandb and torch; see bench/README.md), one
subprocess per model and tracker, so both measure the same models on the same torch.  Without
it the wandb figures are skipped.  Prints a table, then the figures as one JSON object on the
last line (or into ``--json PATH``).  A report: it always exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

WORKER = r"""
import json, os, shutil, statistics, sys, tempfile, time
import torch
from torch import nn

tracker_name, p = sys.argv[1], json.loads(sys.argv[2])
torch.set_num_threads(1)
if tracker_name == "wandb":
    import wandb as tracker
    version = tracker.__version__
else:
    import runstream as tracker
    version = tracker.__version__
pc, tt = time.perf_counter_ns, time.thread_time_ns


def build(kind):
    torch.manual_seed(0)
    if kind == "cnn":
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten(), nn.Linear(32, 10))
        x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
        return model, lambda m: nn.functional.cross_entropy(m(x), y)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(256, 64)
            layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(64, 256)

        def forward(self, tokens):
            return self.head(self.enc(self.emb(tokens)))

    tokens = torch.randint(0, 256, (8, 32))
    return Tiny(), lambda m: nn.functional.cross_entropy(m(tokens).reshape(-1, 256), tokens.reshape(-1))


def step(model, loss_of, opt):
    c0, t0 = tt(), pc()
    opt.zero_grad()
    loss = loss_of(model)
    loss.backward()
    opt.step()
    tracker.log({"loss": loss.item()})
    return pc() - t0, tt() - c0


out = {"version": version, "torch": torch.__version__, "results": []}
tmp = tempfile.mkdtemp(prefix="runstream-bench-watch-")
try:
    for freq in p["freqs"]:
        run = tracker.init(project="bench-watch", mode="offline", dir=tmp)
        watched, loss_w = build(p["model"])
        plain, loss_p = build(p["model"])
        opt_w = torch.optim.SGD(watched.parameters(), lr=1e-3)
        opt_p = torch.optim.SGD(plain.parameters(), lr=1e-3)
        tracker.watch(watched, log=p["log"], log_freq=freq)
        block = max(freq, 10)
        for _ in range(max(block, 20)):  # warm-up: allocator, caches, the first histograms
            step(plain, loss_p, opt_p)
            step(watched, loss_w, opt_w)
        n_w = max(block, 20)  # forward calls of the watched model so far (W&B's count)
        # per clock (0: wall, 1: this thread's CPU): block means and step samples
        per_w, per_p = ([], []), ([], [])
        logged, between, base = ([], []), ([], []), ([], [])
        blocks = max(4, p["steps"] // block)
        for b in range(blocks):
            order = ("w", "p") if b % 4 in (0, 3) else ("p", "w")
            for side in order:
                total = [0, 0]
                for _ in range(block):
                    if side == "w":
                        n_w += 1
                        t = step(watched, loss_w, opt_w)
                        into = logged if n_w % freq == 0 else between
                    else:
                        t = step(plain, loss_p, opt_p)
                        into = base
                    for c in (0, 1):
                        into[c].append(t[c])
                        total[c] += t[c]
                for c in (0, 1):
                    (per_w if side == "w" else per_p)[c].append(total[c] / block)
        run.finish()
        med = statistics.median
        r = {"log_freq": freq, "steps": len(base[0]) + len(logged[0]) + len(between[0])}
        for c, clock in enumerate(("wall", "cpu")):
            b0 = med(base[c])
            r[clock] = {
                "base_ms": b0 / 1e6,
                "overhead_us": (med(per_w[c]) - med(per_p[c])) / 1e3,
                "overhead_pct": 100 * (med(per_w[c]) - med(per_p[c])) / med(per_p[c]),
                "logged_step_us": (med(logged[c]) - b0) / 1e3 if logged[c] else None,
                "between_us": (med(between[c]) - b0) / 1e3 if between[c] else None,
            }
        out["results"].append(r)
finally:
    shutil.rmtree(tmp, ignore_errors=True)
print(json.dumps(out), flush=True)
"""

MODELS = ("cnn", "transformer")
FREQS = (1, 10, 100)


def run_side(python: str, tracker: str, params: dict[str, Any]) -> dict[str, Any]:
    """One tracker, one model, every log_freq, in a fresh subprocess; its JSON line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    env |= {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [python, "-c", WORKER, tracker, json.dumps(params)],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
        timeout=1800,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{tracker} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument(
        "--quick", action="store_true", help="200 steps per setting, not 1,000 (~5 min with wandb)"
    )
    ap.add_argument(
        "--log", default="all", choices=["gradients", "parameters", "all"], help="watch's log= (default all)"
    )
    ap.add_argument(
        "--wandb-python",
        default=os.environ.get("RUNSTREAM_BENCH_WANDB_PYTHON"),
        help="a Python with wandb and torch",
    )
    ap.add_argument("--json", type=Path, help="write the JSON here instead of the last line of stdout")
    args = ap.parse_args()
    steps = 200 if args.quick else 1000
    trackers = [("runstream", sys.executable)]
    if args.wandb_python:
        trackers.append(("wandb", args.wandb_python))
    else:
        print("wandb: no --wandb-python given; its figures are skipped (see bench/README.md)")
    out: dict[str, Any] = {
        "log": args.log,
        "steps": steps,
        "cpus": os.cpu_count(),
        "models": {},
        "errors": {},
    }
    print(f"watch(model, log={args.log!r}) on the CPU (torch, 1 thread), {steps}+ steps per setting")
    head = (
        "model",
        "log_freq",
        "tracker",
        "clock",
        "base ms",
        "overhead/step",
        "%",
        "logged step",
        "between",
    )
    print("{:<12} {:>8} {:<10} {:<5} {:>8} {:>14} {:>6} {:>12} {:>9}".format(*head))
    for model in MODELS:
        out["models"][model] = {}
        for tracker, python in trackers:  # alternate trackers per model: drift hits both alike
            params = {"model": model, "freqs": list(FREQS), "log": args.log, "steps": steps}
            try:
                got = run_side(python, tracker, params)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                out["errors"][f"{model}/{tracker}"] = str(e)
                print(f"{model:<12} {tracker}: failed: {e}")
                continue
            out["models"][model][tracker] = got
            out.setdefault("versions", {})[tracker] = got["version"]
            out["torch"] = got["torch"]
            for r in got["results"]:
                for clock in ("cpu", "wall"):
                    f = r[clock]
                    print(
                        f"{model:<12} {r['log_freq']:>8} {tracker:<10} {clock:<5} {f['base_ms']:>8.2f} "
                        f"{f['overhead_us']:>11.0f} us {f['overhead_pct']:>5.1f}% "
                        f"{fmt(f['logged_step_us'], '>9.0f')} us {fmt(f['between_us'], '>6.0f')} us"
                    )
    print("(overhead/step: median over blocks, logged batches' cost included;")
    print(" logged step, between: median extra time of a logged step, of the steps between;")
    print(" cpu: the training thread's CPU time, what a busy machine does not inflate; wall: elapsed)")
    text = json.dumps(out)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
