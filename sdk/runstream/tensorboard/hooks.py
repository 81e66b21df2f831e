"""Patching TensorBoard writers to learn their log directories (W&B's ``tensorboard.patch``).

The ``FileWriter`` classes of ``torch.utils.tensorboard.writer`` and ``tensorboardX.writer`` (what
every ``SummaryWriter`` writes through) are patched in place: ``__init__`` reports the writer's
log directory to the active :class:`~runstream.tensorboard.sync.TensorBoardSync`, and
``add_event`` (called on the training code's thread for each value written) lets it log the rows
it has ready.  A module not imported yet is patched when it is: an import hook on
``sys.meta_path`` waits for it, so patching imports neither torch nor tensorboardX.

``tf.summary`` writes the same event files from C++, which no Python patch sees: give its log
directory to :func:`runstream.tensorboard.patch` (``root_logdir``) or sync it after the fact
with ``runstream import-tensorboard``.

Concurrency contract: ``install``/``set_sync`` run on the thread calling ``init``/``finish``;
the patched methods run on whatever thread uses the writer.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
import time
import weakref
from collections.abc import Sequence
from types import ModuleType
from typing import Any

# module -> the class in it whose instances write event files
TARGETS = {"torch.utils.tensorboard.writer": "FileWriter", "tensorboardX.writer": "FileWriter"}

_sync: Any = None  # the active TensorBoardSync, or None
_writers: weakref.WeakSet[Any] = weakref.WeakSet()  # live patched writers, flushed at finish
# Writers made while no run synced (after patch(), before init): the next run follows them.  One
# made during an earlier run is not followed by the next: its file holds that run's values.
_unclaimed: weakref.WeakSet[Any] = weakref.WeakSet()
keep_unclaimed = False  # runstream.tensorboard.patch() was called (and not unpatch())
_hook: _ImportHook | None = None


def set_sync(sync: Any) -> None:
    """Make ``sync`` (or None) the receiver of writers' log directories and calls."""
    global _sync
    _sync = sync
    if sync is not None:
        for w in list(_unclaimed):  # writers made after patching but before this run started
            try:
                sync.add_logdir(_logdir(w))
            except Exception:
                pass
        _unclaimed.clear()


QUEUE_WAIT = 2.0  # seconds finish waits for a tensorboardX writer's worker to empty its queue


def flush_writers() -> None:
    """Flush every live patched writer, so what it holds reaches its event file.

    Blocking: torch's writers flush synchronously; tensorboardX's ``flush`` does not wait for
    the events its worker process has not taken yet, so its queue is waited for (at most
    ``QUEUE_WAIT`` seconds per writer) before and after."""
    for w in list(_writers):
        try:
            _wait_for_queue(w)
            w.flush()
        except Exception:
            pass  # a closed writer has nothing left to flush


def _wait_for_queue(writer: Any) -> None:
    q = getattr(getattr(writer, "event_writer", None), "_event_queue", None)
    if q is None or not hasattr(q, "empty"):
        return
    deadline = time.monotonic() + QUEUE_WAIT
    while not q.empty() and time.monotonic() < deadline:
        time.sleep(0.005)
    # The worker writes the event it took last right after taking it: a moment is enough.
    time.sleep(0.02)


def _logdir(writer: Any) -> str:
    get = getattr(writer, "get_logdir", None)
    return str(get() if get is not None else writer.logdir)


def _patch_class(cls: type) -> None:
    if getattr(cls, "_runstream_patched", False):
        return
    target: Any = cls  # a writer class, whose methods are replaced below
    orig_init, orig_add = target.__init__, target.add_event

    @functools.wraps(orig_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        orig_init(self, *args, **kwargs)
        try:
            _writers.add(self)
            if _sync is not None:
                _sync.add_logdir(_logdir(self))
            elif keep_unclaimed:
                _unclaimed.add(self)
        except Exception:  # the writer works whatever happens to syncing
            pass

    @functools.wraps(orig_add)
    def add_event(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = orig_add(self, *args, **kwargs)
        s = _sync
        if s is not None:
            try:
                s.drain()
            except Exception:
                pass
        return result

    target.__init__ = __init__
    target.add_event = add_event
    target._runstream_patched = True


def _patch_module(module: ModuleType) -> None:
    cls = getattr(module, TARGETS[module.__name__], None)
    if isinstance(cls, type):
        _patch_class(cls)


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then patches the module it made."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        _patch_module(module)

    def __getattr__(self, name: str) -> Any:  # get_source, is_package...: the real loader's
        return getattr(self.inner, name)


class _ImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a target module, asks the finders after it and wraps the
    loader they return, so the module is patched as soon as it is executed."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def install() -> None:
    """Patch the writer classes already imported, and the others when they are imported."""
    global _hook
    for name in TARGETS:
        module = sys.modules.get(name)
        if module is not None:
            _patch_module(module)
    if _hook is None:
        _hook = _ImportHook()
        sys.meta_path.insert(0, _hook)
