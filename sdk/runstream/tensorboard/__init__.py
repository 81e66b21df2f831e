"""TensorBoard into runstream: live with ``init(sync_tensorboard=True)``, afterwards with
``runstream import-tensorboard DIR`` (docs/tensorboard.md).

    run = runstream.init(project="demo", sync_tensorboard=True)
    writer = torch.utils.tensorboard.SummaryWriter("runs/exp1")   # or tensorboardX's
    writer.add_scalar("loss", loss, global_step=step)            # -> history "loss" at step

Event files are read by runstream itself (``tfrecord``, ``event``): neither tensorboard nor
protobuf is needed at run time, and importing this package imports neither (nor numpy, until an
event is converted).  Scalars, histograms, images and text are imported, with W&B's key names
(``convert``); the step rule is ``reader.StepLogger``'s.
"""

from __future__ import annotations

from typing import Any

__all__ = ["patch", "unpatch"]

_requested = False  # patch() was called: every run started from now on syncs
_root_logdir: str | None = None


def patch(
    root_logdir: str | None = None,
    pytorch: bool | None = None,
    tensorboard_x: bool | None = None,
    save: bool = True,
) -> None:
    """Sync TensorBoard writers into the active run, and into every run started later.

    W&B's ``wandb.tensorboard.patch``; ``init(sync_tensorboard=True)`` calls it for one run.
    The writer classes of ``torch.utils.tensorboard`` and ``tensorboardX`` are patched (now if
    imported, else when they are), so writers created from now on are followed.

    Args:
        root_logdir: Keys of event files in a directory below it are prefixed by that
            directory's path relative to it (``train/loss``).  Also watched itself, which is how
            ``tf.summary`` writers (which no Python patch sees) are synced.
        pytorch: Accepted for W&B compatibility: both libraries are always patched.
        tensorboard_x: As ``pytorch``.
        save: Accepted for W&B compatibility; event files are not copied into the run (their
            contents are).

    Blocking: never; reading happens on a background thread.
    """
    global _requested, _root_logdir
    from runstream.tensorboard import hooks as _patch

    _requested = True
    _root_logdir = str(root_logdir) if root_logdir else None
    _patch.install()
    _patch.keep_unclaimed = True
    import runstream

    run = runstream.run
    if run is not None and getattr(run, "_tensorboard", None) is None and hasattr(run, "_writer"):
        start(run)


def unpatch() -> None:
    """Runs started from now on do not sync TensorBoard (unless ``init`` asks).  A run already
    syncing keeps syncing until it finishes."""
    global _requested, _root_logdir
    from runstream.tensorboard import hooks

    _requested, _root_logdir = False, None
    hooks.keep_unclaimed = False
    hooks._unclaimed.clear()


def start(run: Any, asked: bool = True) -> None:
    """Start syncing into ``run`` (called by ``init``) when ``asked`` or :func:`patch` was called.
    Never raises: a failure is said on stderr and the run goes on without syncing."""
    if not (asked or _requested):
        return
    from runstream.session import say

    try:
        from runstream.tensorboard import hooks as _patch
        from runstream.tensorboard.sync import TensorBoardSync

        _patch.install()
        sync = TensorBoardSync(run, _root_logdir, lambda msg: say(run._settings, msg))
        run._tensorboard = sync
        _patch.set_sync(sync)
        if _root_logdir:
            sync.add_logdir(_root_logdir)
    except Exception as e:
        say(
            run._settings,
            f"tensorboard sync could not start ({type(e).__name__}: {e}); the run goes on without it",
        )


def finish(run: Any) -> None:
    """Called by ``finish`` before the run's last row is committed: flush the writers, read
    every event file to its end and log what is left (bounded; see ``TensorBoardSync.finish``)."""
    sync = getattr(run, "_tensorboard", None)
    if sync is None:
        return
    from runstream.tensorboard import hooks as _patch

    run._tensorboard = None
    if _patch._sync is sync:
        _patch.set_sync(None)
    sync.finish(_patch.flush_writers)
