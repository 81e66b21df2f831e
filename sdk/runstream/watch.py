"""``runstream.watch``: histograms of a torch model's gradients and parameters (docs/watch.md).

W&B's ``watch`` keeps a tensor hook on every parameter and, every ``log_freq`` batches, reads
each gradient to the host inside the backward pass (``.item()`` for its range, ``.cpu()`` for
its counts), so each logged batch stalls the device once per parameter, and each batch pays a
Python call per parameter.  Here:

* Between logged batches the only work is one forward hook per watched model that counts
  (and, on the first backward only, a hook on one parameter that checks the forward was seen).
* On a logged batch the forward hook records the parameters' histograms and arms one-shot
  gradient hooks; both compute on the tensor's device with ops that never wait for it (no
  ``.item()``: the range is kept as a tensor), and keep a 67-number result per tensor.  On the
  CPU, which has no queue to stall, the range is read at once and the counts are a bincount.
* The results are read to the host in one transfer per device when the row they belong to is
  committed (``Run._commit_pending`` calls :meth:`Watcher.fill`), i.e. with the user's next
  committing ``log``, which is where W&B's ``commit=False`` histograms go too.
* Hooks never call collectives and never depend on what other ranks do, so DDP cannot hang on
  them; an FSDP-sharded (DTensor) parameter is histogrammed from its local shard, and its
  gradient after FSDP has reduce-scattered it (``register_post_accumulate_grad_hook``, which
  FSDP calls on the sharded parameter).

torch is imported only when ``watch`` is called, so ``import runstream`` stays light.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runstream.run import Run

NUM_BINS = 64
_LOG_CHOICES = ("gradients", "parameters", "all", None)


class _Model:
    """One watched model: its names, counters and hook handles."""

    def __init__(self, module: Any, prefix: str, log_freq: int, params: bool, grads: bool) -> None:
        self.module = module
        self.prefix = prefix
        self.log_freq = log_freq
        self.params = params
        self.grads = grads
        self.forwards = 0  # forward calls since the last parameter histograms (W&B's count)
        self.grad_forwards = 0  # forward calls under grad mode since gradients were last armed
        self.seen_forward = False
        self.handles: list[Any] = []  # until unwatch: the forward hook, fallback gradient hooks
        self.armed: list[Any] = []  # one-shot gradient hooks of the last logged batch
        self.fallback = False  # the model is trained without its own forward: W&B's per-parameter counting
        self.sentinel: Any = None  # hook on the last trainable parameter until the forward is seen
        self.sentinel_key = ""
        self.sentinel_count = 0
        self.sentinel_done = False


class Watcher:
    """A run's watched models and the histograms waiting for the next committed row.

    Made by the first ``Run.watch``; the run keeps it as ``run._watcher``.  Hooks run on the
    training thread or on autograd's device threads while the training thread waits in
    ``backward()``, so the run's one-thread contract holds.
    """

    def __init__(self, run: Run) -> None:
        import torch  # the caller checked that it imports

        self._torch = torch
        self._run = run
        self._models: dict[int, _Model] = {}
        self._next_idx = 0
        self._graph_warned = False
        self._failed = False  # a histogram failed: warned once
        # name -> on a device, a 67-element tensor there (64 counts, min, max, finite count); on
        # the CPU, (counts or None, min, max, n): see _stats
        self.ready: dict[str, Any] = {}
        try:
            from torch.distributed.tensor import DTensor

            self._dtensor: Any = DTensor
        except ImportError:  # torch built without distributed
            self._dtensor = None

    # --- watch / unwatch ------------------------------------------------------------------------
    def add(self, models: Any, log: str | None, log_freq: int, idx: int | None, log_graph: bool) -> None:
        """Validate, then hook each model (see ``Run.watch``)."""
        torch = self._torch
        if log not in _LOG_CHOICES:
            raise ValueError(
                f"runstream.watch: log must be 'gradients', 'parameters', 'all' or None, not {log!r}"
            )
        if isinstance(log_freq, bool) or not hasattr(log_freq, "__index__") or int(log_freq) < 0:
            raise ValueError(f"runstream.watch: log_freq must be an int >= 0 (batches), not {log_freq!r}")
        log_freq = int(log_freq)
        if idx is not None and (isinstance(idx, bool) or not isinstance(idx, int) or idx < 0):
            raise ValueError(f"runstream.watch: idx must be an int >= 0 or None, not {idx!r}")
        seq = list(models) if isinstance(models, (list, tuple)) else [models]
        if not seq:
            raise ValueError("runstream.watch: no model given")
        for m in seq:
            if not isinstance(m, torch.nn.Module):
                kind = f"{type(m).__module__}.{type(m).__name__}"
                raise TypeError(f"runstream.watch: expected a torch.nn.Module, not {kind}")
            if id(m) in self._models:
                raise ValueError(f"runstream.watch: {type(m).__name__} is already watched; unwatch it first")
        if log_graph and not self._graph_warned:
            self._graph_warned = True
            print(
                "runstream: watch(log_graph=True): the model graph is not recorded (histograms are)",
                file=sys.stderr,
            )
        if idx is None:
            idx = self._next_idx
        for local, m in enumerate(seq):
            self._next_idx += 1  # per model, whether or not idx was given (W&B's count)
            if log is None:
                continue
            gidx = idx + local
            w = _Model(
                m,
                f"graph_{gidx}" if gidx > 0 else "",
                max(log_freq, 1),
                log in ("parameters", "all"),
                log in ("gradients", "all"),
            )
            w.handles.append(m.register_forward_hook(self._make_forward_hook(w)))
            if w.grads:
                trainable = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
                if trainable:
                    name, last = trainable[-1]
                    w.sentinel_key = f"gradients/{w.prefix}{name}"
                    w.sentinel = self._grad_hook(last, functools.partial(self._sentinel, w))
            self._models[id(m)] = w

    def remove(self, models: Any = None) -> None:
        """Take the hooks off ``models`` (a module or a list), or off every watched model.
        Histograms already made still go into the next committed row."""
        if models is None:
            targets = list(self._models.values())
        else:
            seq = list(models) if isinstance(models, (list, tuple)) else [models]
            targets = []
            for m in seq:
                w = self._models.get(id(m))
                if w is None:
                    print(f"runstream: warning: unwatch: {type(m).__name__} is not watched", file=sys.stderr)
                else:
                    targets.append(w)
        for w in targets:
            for h in [*w.handles, *w.armed, w.sentinel]:
                if h is not None:
                    h.remove()
            w.handles, w.armed, w.sentinel = [], [], None
            self._models.pop(id(w.module), None)

    # --- hooks ------------------------------------------------------------------------------------
    def _make_forward_hook(self, w: _Model) -> Callable[..., None]:
        def after_forward(module: Any, inputs: Any, output: Any) -> None:
            w.seen_forward = True
            if w.sentinel_done:
                w.sentinel.remove()
                w.sentinel, w.sentinel_done = None, False
            if w.armed:  # the last logged batch's gradient hooks have had their backward
                for h in w.armed:
                    h.remove()
                w.armed = []
            if w.params:
                w.forwards += 1
                if w.forwards >= w.log_freq:
                    w.forwards = 0
                    self._safely(self._log_parameters, w)
            if w.grads and not w.fallback and self._torch.is_grad_enabled():
                w.grad_forwards += 1
                if w.grad_forwards >= w.log_freq:
                    w.grad_forwards = 0
                    self._safely(self._arm, w)

        return after_forward

    def _sentinel(self, w: _Model, grad: Any) -> None:
        """Each backward through the model, until its own forward is seen.  A model trained
        without calling its forward (a LightningModule whose ``training_step`` calls a
        submodule, say) cannot be counted by the forward hook, so on its first backward it
        falls back to W&B's scheme: a counting hook on every trainable parameter."""
        if w.fallback:
            w.sentinel_count += 1
            if w.sentinel_count >= w.log_freq:
                w.sentinel_count = 0
                self._keep(w.sentinel_key, grad)
            return
        if w.seen_forward:
            w.sentinel_done = True  # the forward hook counts; it removes this hook next time
            return
        w.fallback = True
        for name, p in w.module.named_parameters():
            key = f"gradients/{w.prefix}{name}"
            if p.requires_grad and key != w.sentinel_key:
                # The sentinel is the last parameter, whose gradient autograd usually computes
                # first, so these hooks still see this backward and every count starts alike.
                count = [0]

                def counted(g: Any, key: str = key, count: list[int] = count) -> None:
                    count[0] += 1
                    if count[0] >= w.log_freq:
                        count[0] = 0
                        self._keep(key, g)

                w.handles.append(self._grad_hook(p, counted))
        self._sentinel(w, grad)  # the sentinel's own parameter, counted like the others

    def _arm(self, w: _Model) -> None:
        """Hook each trainable parameter's gradient for the coming backward, once."""
        shot: set[str] = set()
        for name, p in w.module.named_parameters():
            if p.requires_grad:
                key = f"gradients/{w.prefix}{name}"
                shot.add(key)

                def once(grad: Any, key: str = key) -> None:
                    if key in shot:
                        shot.discard(key)
                        self._keep(key, grad)

                w.armed.append(self._grad_hook(p, once))

    def _grad_hook(self, p: Any, fn: Callable[[Any], None]) -> Any:
        """Call ``fn(grad)`` when ``p``'s gradient is computed.  An FSDP-sharded (DTensor)
        parameter gets its gradient assigned by FSDP after the reduce-scatter, not by autograd,
        so only the post-accumulate hook, which FSDP calls, sees it."""
        if self._dtensor is not None and isinstance(p, self._dtensor):
            return p.register_post_accumulate_grad_hook(lambda q: self._safely(fn, q.grad))
        return p.register_hook(lambda g: self._safely(fn, g))

    def _log_parameters(self, w: _Model) -> None:
        for name, p in w.module.named_parameters():
            self._keep(f"parameters/{w.prefix}{name}", p)

    def _keep(self, key: str, tensor: Any) -> None:
        run = self._run
        if tensor is None or run._finished:
            return
        stats = self._stats(tensor)
        if stats is None:
            return
        self.ready[key] = stats
        if run._pending is None:
            # An empty pending row sends the next log() down the path that commits through
            # _commit_pending, which calls fill(); plain log() calls never look at watch.
            run._pending = {}

    def _safely(self, fn: Callable[..., None], *args: Any) -> None:
        """Logging must not break training: a failure in a hook is reported once, not raised."""
        try:
            fn(*args)
        except Exception as e:  # anything from torch, on any tensor type
            self._warn(e)

    def _warn(self, e: Exception) -> None:
        if not self._failed:
            self._failed = True
            print(f"runstream: warning: watch could not histogram a tensor ({e!r}); skipped", file=sys.stderr)

    # --- the histogram, on the device --------------------------------------------------------------
    def _stats(self, tensor: Any) -> Any:
        """The histogram of ``tensor``'s finite values, not yet read: on a device, one float64
        tensor there of 64 counts, min, max and the finite count, computed without waiting for
        the device; on the CPU, where there is nothing to wait for, ``(counts, min, max, n)``
        with the range read first (two passes fewer).  None when the tensor is empty."""
        torch = self._torch
        with torch.no_grad():
            x = tensor.detach()
            if self._dtensor is not None and isinstance(x, self._dtensor):
                x = x.to_local()  # this rank's shard: no collective
            if x.is_sparse:  # an Embedding(sparse=True) gradient: its implicit zeros count, as in W&B
                x = x.to_dense()  # a temporary of the parameter's size, like the ones below
            x = x.reshape(-1)
            if x.numel() == 0:
                return None
            if x.dtype not in (torch.float32, torch.float64):
                x = x.float()  # histc has no half/bfloat16/int kernels everywhere
            if x.device.type == "cpu":
                lo_t, hi_t = torch.aminmax(x)
                lo, hi = float(lo_t), float(hi_t)
                if math.isfinite(lo) and math.isfinite(hi):
                    if lo == hi:
                        return (None, lo, hi, x.numel())
                    # bincount of the bin indices: half the time of CPU histc, same counts.
                    idx = (x - lo).mul_(NUM_BINS / (hi - lo)).to(torch.int64).clamp_(0, NUM_BINS - 1)
                    return (torch.bincount(idx, minlength=NUM_BINS), lo, hi, x.numel())
            fin = torch.isfinite(x)
            inf = float("inf")
            lo_t = torch.where(fin, x, inf).min()
            hi_t = torch.where(fin, x, -inf).max()
            # Scale into [0, 64] with tensor arithmetic so histc's range is a constant: histc
            # with a tensor-derived range would read it to the host, a device sync.
            scaled = (x - lo_t).mul_(NUM_BINS / (hi_t - lo_t)).clamp_(0, NUM_BINS).masked_fill_(~fin, -1.0)
            counts = torch.histc(scaled, NUM_BINS, 0, NUM_BINS)
            tail = torch.stack([lo_t.double(), hi_t.double(), fin.sum().double()])
            return torch.cat([counts.double(), tail])

    # --- into the row ---------------------------------------------------------------------------------
    def fill(self, row: dict[str, Any]) -> None:
        """Put the waiting histograms into ``row`` (the row being committed) as W&B's histogram
        values (``runstream.Histogram``'s format); a key the user logged in the same row keeps
        the user's value.

        Blocking: one device-to-host copy per device, which waits for the device to reach the
        hooks' work (usually done by then: it ran during the backward)."""
        if not self.ready:
            return
        ready, self.ready = self.ready, {}
        torch = self._torch
        host: dict[str, tuple[Any, float, float, int]] = {}
        by_device: dict[Any, list[str]] = {}
        for key, t in ready.items():
            if isinstance(t, tuple):
                host[key] = (None if t[0] is None else t[0].tolist(), t[1], t[2], t[3])
            else:
                by_device.setdefault(t.device, []).append(key)
        for keys in by_device.values():
            try:
                read = torch.stack([ready[k] for k in keys]).cpu().tolist()
            except Exception as e:  # a device error must not fail the user's log()
                self._warn(e)
                continue
            for key, r in zip(keys, read, strict=True):
                lo, hi, n = r[NUM_BINS], r[NUM_BINS + 1], int(r[NUM_BINS + 2])
                host[key] = ([int(c) for c in r[:NUM_BINS]], lo, hi, n)
        for key, (counts, lo, hi, n) in host.items():
            if key in row or n == 0 or not (math.isfinite(lo) and math.isfinite(hi)):
                continue  # all NaN/inf: nothing to draw (W&B skips it too)
            if counts is None or lo == hi:  # one value: one bin, as W&B logs it
                counts, edges = [n], [lo, hi]
            else:
                edges = [lo + (hi - lo) * i / NUM_BINS for i in range(NUM_BINS)] + [hi]
            row[key] = {"_type": "histogram", "values": counts, "bins": edges}


def watcher_of(run: Run) -> Watcher:
    """The run's watcher, made on first use; raises ImportError naming torch when it is missing."""
    w: Watcher | None = run._watcher
    if w is None:
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise ImportError("runstream.watch only works with PyTorch: could not import torch") from e
        w = run._watcher = Watcher(run)
    return w


def watch_active(
    models: Any,
    criterion: Any = None,
    log: str | None = "gradients",
    log_freq: int = 1000,
    idx: int | None = None,
    log_graph: bool = False,
) -> None:
    """``runstream.watch``: :meth:`runstream.Run.watch` of the active run (the same arguments,
    errors and non-blocking behaviour); nothing in disabled mode.

    Raises:
        UsageError: No run is active (before ``init``, or after ``finish``).
        TypeError, ValueError, ImportError: As :meth:`runstream.Run.watch`.
    """
    import runstream

    run = runstream.run
    if run is None:
        from runstream.errors import UsageError

        raise UsageError("runstream.watch() was called before runstream.init(): start a run first")
    run.watch(models, criterion, log, log_freq, idx, log_graph)  # type: ignore[arg-type]


def unwatch_active(models: Any = None) -> None:
    """``runstream.unwatch``: :meth:`runstream.Run.unwatch` of the active run.

    Raises:
        UsageError: No run is active (before ``init``, or after ``finish``).
    """
    import runstream

    run = runstream.run
    if run is None:
        from runstream.errors import UsageError

        raise UsageError("runstream.unwatch() was called before runstream.init(): start a run first")
    run.unwatch(models)
