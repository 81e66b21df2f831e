"""``init`` and ``finish``: a run's life in the training process, and the module-level globals.

``init`` sets up everything ``log`` needs before returning — run directory, ring, the first
records — and starts the sidecar without waiting for it.  ``finish`` (also run at interpreter
exit, with the exit code of an uncaught exception or ``sys.exit``) closes the ring and waits,
bounded, for the sidecar to journal and fsync everything.

Concurrency contract: ``init``/``finish`` are called from one thread at a time; a process has at
most one active run.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstream.config import Config, load_config, plain_config
from runstream.disabled import DisabledRun
from runstream.errors import UsageError
from runstream.format import record as rec
from runstream.format.atomic import write_json_atomic
from runstream.format.ring_layout import (
    W_ACKED_SEQ,
    W_DROPPED,
    W_EXIT,
    W_FIRST_SEQ,
    W_JOURNALED_SEQ,
    W_MEDIA_DROPPED,
    W_MEDIA_FAILED,
    W_SIDECAR_LOST,
    W_STEP_REGRESSIONS,
    W_SYNCED_SEQ,
    RingMap,
    exit_word,
    loss_counters,
)
from runstream.names import new_run_id, new_run_name, validate_run_id
from runstream.read.local import replay
from runstream.ring import RingWriter, default_ring_path
from runstream.run import Run
from runstream.rundir import create_run_dir, find_run_dirs, update_latest_link
from runstream.settings import Settings, resolve_settings
from runstream.supervisor import SidecarSupervisor, final_write_timeout

RESUME_CHECK_TIMEOUT = 30.0
RESUME_PEEK_TIMEOUT = 5.0
_active: Run | None = None
_lock = threading.RLock()


def say(settings: Settings, msg: str) -> None:
    if not settings.silent:
        print(f"runstream: {msg}", file=sys.stderr)


def _find_local_run(root: Path, run_id: str) -> Path | None:
    for d in reversed(_single_run_dirs(root)):
        if d.name.endswith(f"-{run_id}"):
            return d
    return None


def _single_run_dirs(root: Path) -> list[Path]:
    """``find_run_dirs`` less the node directories of distributed runs (their ranks' run
    directories are inside; a single-process run never resumes one of them)."""
    return [d for d in find_run_dirs(root) if not (d / "node.json").is_file()]


def _resume_target(settings: Settings, resume: Any, run_id: str | None) -> Path | None:
    """W&B's resume rules, over the runs found under this directory."""
    if resume in (None, False):
        return None
    if resume not in (True, "auto", "allow", "must", "never"):
        raise UsageError(
            f"resume must be one of 'allow', 'must', 'never', 'auto', True or None, not {resume!r}"
        )
    if resume in (True, "auto") and run_id is None:
        from runstream.read.local import sidecar_running

        dirs = _single_run_dirs(settings.root_dir)
        if dirs and not sidecar_running(dirs[-1]):
            state, _ = replay(dirs[-1], keep_rows=False)
            if state.state(running=False) == "crashed":
                return dirs[-1]
        return None
    if run_id is None:
        if resume in ("must", "never"):
            raise UsageError(f'resume="{resume}" needs a run id: pass init(id=...) or set RUNSTREAM_RUN_ID')
        return None
    found = _find_local_run(settings.root_dir, run_id)
    if resume == "never" and found is not None:
        raise UsageError(f'resume="never" but run {run_id} already exists in {found}')
    if resume == "must" and found is None:
        raise UsageError(
            f'resume="must" but there is no run {run_id} under {settings.root_dir / "runstream"}'
        )
    return found


# W&B ``init`` parameters that ask for features runstream does not have, and the values that
# ask for them: such a value gets one RuntimeWarning naming the parameter.  ``anonymous`` and
# ``force`` change nothing here whatever their value, so they are accepted silently.
_UNSUPPORTED = {
    "magic": "W&B's automatic framework instrumentation",
    "monitor_gym": "recording OpenAI Gym videos",
    "fork_from": "forking a new run from a step of another run",
    "resume_from": "rewinding a run to an earlier step",
}


def _warn_unsupported(args: dict[str, Any]) -> None:
    for param, feature in _UNSUPPORTED.items():
        value = args[param]
        asked = value is not None if param in ("fork_from", "resume_from") else bool(value)
        if asked:
            warnings.warn(
                f"runstream.init: {param}={value!r} has no effect in runstream ({feature} is not "
                "supported); the run goes on without it",
                RuntimeWarning,
                stacklevel=3,
            )


def init(
    job_type: str | None = None,
    dir: str | os.PathLike[str] | None = None,
    config: Any = None,
    project: str | None = None,
    entity: str | None = None,
    reinit: bool | None = None,
    tags: Sequence[str] | None = None,
    group: str | None = None,
    name: str | None = None,
    notes: str | None = None,
    magic: dict[str, Any] | str | bool | None = None,
    config_exclude_keys: Sequence[str] | None = None,
    config_include_keys: Sequence[str] | None = None,
    anonymous: str | None = None,
    mode: str | None = None,
    allow_val_change: bool | None = None,
    resume: bool | str | None = None,
    force: bool | None = None,
    tensorboard: bool | None = None,
    sync_tensorboard: bool | None = None,
    monitor_gym: bool | None = None,
    save_code: bool | None = None,
    id: str | None = None,
    settings: Settings | Mapping[str, Any] | None = None,
    fork_from: str | None = None,
    resume_from: str | None = None,
) -> Run | DisabledRun:
    """Start a run (or resume one) and return it; ``runstream.log`` and friends then follow it.

    Takes every parameter of W&B's ``wandb.init``, in the order of its documented signature
    (newer W&B's ``fork_from`` and ``resume_from`` last), so that a W&B script runs unchanged; a
    keyword ``init`` does not know is a ``TypeError``.  Each setting it resolves
    (project, entity, name, dir, mode...) is taken from the argument, else from ``settings=``,
    else from a ``RUNSTREAM_*`` environment variable, else from the ``WANDB_*`` one, else from
    its default (``runstream.settings`` lists them all).

    Before returning, ``init`` creates the run directory ``<dir>/runstream/run-<time>-<id>/``
    and the shared-memory ring, writes the run's first records (metadata and config), points
    ``runstream.run``, ``runstream.config``, ``runstream.summary`` and ``runstream.log`` at the
    new run, and starts the sidecar process that journals the run (and streams it to the server
    when online).  It does not wait for the sidecar to start or for the server.

    Args:
        job_type: A label for the kind of job (``"train"``, ``"eval"``...), kept with the run.
        dir: The directory under which the run directory is made.  Default: the current one.
        config: The run's hyperparameters: a dict, an ``argparse.Namespace``, absl flags
            (anything with ``flag_values_dict()``) or the path of a YAML file (W&B's
            ``{value: ..., desc: ...}`` entries are unwrapped).  Becomes ``run.config``.
        project: The project the run belongs to.  Default: ``"uncategorized"``.
        entity: The user or team that owns the project.  Default: the login name.
        reinit: What to do when this process already has an active run.  False or None:
            warn (``RuntimeWarning``) and return the active run unchanged, ignoring every other
            argument.  True: finish the active run first (which blocks as ``finish`` does).
        tags: Strings to label the run with (``run.tags``).
        group: Groups related runs.  In a distributed job, passing a group keeps W&B's pattern
            of one run per rank (each rank a single-process run); without one, the job's ranks
            make one run (docs/distributed.md).
        name: The display name.  Default: a generated ``adjective-noun-N``, or the stored
            name of the run being resumed.
        notes: A longer description of the run.
        magic: Accepted for compatibility; any true value warns that it has no effect.
        config_exclude_keys: Keys of ``config`` not to keep.
        config_include_keys: The only keys of ``config`` to keep.  Giving both is a
            ``UsageError``.
        anonymous: Accepted for compatibility; runstream has no anonymous mode.  No effect.
        mode: ``"online"`` (the default: stream to the server set by ``RUNSTREAM_HOST``,
            ``WANDB_BASE_URL`` or ``runstream login``, keeping a local copy; offline, with a
            message, when no server is configured), ``"offline"`` (local only; upload later
            with ``runstream sync``; ``"dryrun"`` means the same) or ``"disabled"``
            (nothing is written and no process started; see Returns).  W&B's ``"shared"`` is
            ``"online"`` with the processes as ranks of one run (docs/distributed.md).
        allow_val_change: Let a config key that is already set take a new value; otherwise
            such a change raises ``ConfigError``.
        resume: ``None``/``False``: start a new run.  ``True``/``"auto"``: without ``id``,
            resume the latest run under ``dir`` if it crashed, else start a new one; with
            ``id``, as ``"allow"``.  ``"allow"``: resume run ``id`` if it exists (locally, or on
            the server when online), else start it.  ``"must"``: resume run ``id``, which must
            exist.  ``"never"``: start run ``id``, which must not exist.  A resumed run
            continues at the step after its last row, and its config is kept.
        force: Accepted for compatibility; no effect (runstream without a server runs
            offline).
        tensorboard: W&B's alias of ``sync_tensorboard``.
        sync_tensorboard: Log what ``torch.utils.tensorboard``/``tensorboardX`` writers created
            after ``init`` write (scalars, histograms, images, text) into the run as well, at
            their ``global_step``; read on a background thread, flushed at ``finish``
            (docs/tensorboard.md).
        monitor_gym: Gym video recording is not supported: a true value warns that it has no
            effect.
        save_code: Keep a copy of the entry-point script with the run (overrides the
            ``save_code`` setting).
        id: The run's id, unique in its project: 1 to 64 letters, digits, ``-`` or ``_``.
            Needed to resume a particular run.  Default: 8 random lower-case letters and
            digits.
        settings: A dict, or a ``runstream.settings.Settings``, of further settings: any field
            of ``Settings`` (``ring_size``, ``overflow_size``, ``finish_timeout``, ``silent``,
            ``console``...), or W&B's name for it (``run_name``, ``base_url``...).  W&B
            settings for machinery runstream does not have (``start_method``...) are ignored;
            any other key raises ``SettingsError``.
        fork_from: Not supported: any value warns that it has no effect, and ``init`` starts
            a run as it would without it.
        resume_from: Not supported, as ``fork_from``.

    Returns:
        The new (or resumed) :class:`Run`.  When the mode resolves to ``"disabled"`` (the
        argument, ``settings`` or ``RUNSTREAM_MODE``/``WANDB_MODE``), a
        :class:`~runstream.disabled.DisabledRun`: it has ``Run``'s attributes and methods, and
        they record nothing.  With a run already active and no ``reinit``, that run.

    Raises:
        TypeError: An unknown keyword argument (the message names it); a ``config`` of a type
            that cannot be read, with a key that is not a string, or with a value whose
            ``str()`` raises (the message names its key path).
        SettingsError: A setting has a bad value, or ``settings`` has an unknown key.
        ConfigError: The ``config`` YAML file is missing, unreadable or not a mapping; or a
            ``config`` value nests dicts/lists more than 64 levels deep or contains itself (the
            message names its key path).  Checked before anything is created: no run directory
            or sidecar is left behind.
        UsageError: A ``resume`` value or rule is broken (``"must"`` and no such run,
            ``"never"`` and it exists, ``"must"``/``"never"`` without ``id``), ``id`` is not a
            valid run id, both ``config_include_keys`` and ``config_exclude_keys`` are given,
            or, resuming online, the server refused the request or did not answer in time.
        OSError: The run directory, the ring (``/dev/shm`` may be too small for
            ``ring_size``) or the sidecar process could not be created.

    Blocking:
        ``init`` itself does not wait for the sidecar or the network: the time goes to
        creating the ring (``ring_size`` bytes, 64 MiB by default, allocated up front so that
        ``log`` never takes a page fault) and starting a process.  It can wait longer in three
        cases: ``reinit=True`` finishes the active run (up to its ``finish_timeout``);
        resuming a local run reads its journal; and an online run given an ``id`` and a
        ``resume`` asks the server about it, for a few seconds with ``"allow"``/``"auto"``
        (then going on from local state) and for up to about 30 s with ``"must"``/``"never"``
        (then raising ``UsageError``).

    Distributed jobs: under torchrun, SLURM, DeepSpeed, MPI or Ray (or ``RUNSTREAM_RANK`` and
    ``RUNSTREAM_WORLD_SIZE``), with a world size above 1, every rank's ``init`` joins the job's
    one run: the run id is agreed without waiting on other ranks (explicit id, else derived from
    the launcher's job id, else rank 0's, through an initialised ``torch.distributed``), the rank
    writes ``rank-<r>/`` inside its node's directory, and one node sidecar per node journals every
    rank.  Such an ``init`` never asks the server; a rank other than 0 that cannot learn the run
    id raises ``UsageError`` naming ``RUNSTREAM_RUN_ID`` and ``RUNSTREAM_JOB_ID``
    (docs/distributed.md).

    ``init`` and ``finish`` serialise on a lock, and a process has at most one active run.
    The W&B parameters that ask for a feature runstream lacks (``magic``, ``monitor_gym``
    with a true value; ``fork_from``, ``resume_from``
    with any value) each give one ``RuntimeWarning`` per call, in every mode, before anything
    else happens.
    """
    _warn_unsupported(
        {
            "magic": magic,
            "monitor_gym": monitor_gym,
            "fork_from": fork_from,
            "resume_from": resume_from,
        }
    )
    with _lock:
        if _active is not None and not _active._finished:
            if not reinit:
                warnings.warn(
                    f"runstream.init: run {_active.name} ({_active.id}) is still active; returning it. "
                    "Call finish() first or pass reinit=True to start a new run.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return _active
            _active.finish()
        s = resolve_settings(
            mode=mode, dir=dir, project=project, entity=entity, run_id=id, name=name, tags=tags,
            notes=notes, group=group, job_type=job_type, settings=settings,
        )  # fmt: skip
        # Checked (and made plain) before anything is created: a value no run could store fails
        # here, naming its key, instead of leaving a run directory and a sidecar behind.
        cfg_dict = plain_config(load_config(config, config_include_keys, config_exclude_keys))
        if s.mode == "disabled":
            run = DisabledRun(s, cfg_dict)
            _publish(run)
            return run
        from runstream.distributed.start import who_am_i

        # None: one process, today's path (a "shared" mode becomes "online").  A group given
        # here is W&B's one-run-per-rank pattern: kept (docs/distributed.md).
        who = who_am_i(s, grouped=_group_given(group, settings))
        online = None
        if s.mode == "online":
            from runstream.login import credentials

            creds = credentials(s.host)
            if creds.host:
                online = Online(creds.host, creds.api_key)
            else:
                say(s, "no server configured (RUNSTREAM_HOST or `runstream login`): running offline")
        if who is not None:
            from runstream.distributed.start import start_rank

            new = start_rank(s, who, cfg_dict, bool(allow_val_change), save_code, online)
        else:
            new = _start_one(s, cfg_dict, allow_val_change, save_code, online, resume)
        if sync_tensorboard or tensorboard or "runstream.tensorboard" in sys.modules:  # asked, or patch()
            from runstream.tensorboard import start as start_tensorboard

            start_tensorboard(new, bool(sync_tensorboard or tensorboard))
        return new


def _group_given(group: str | None, settings: Settings | Mapping[str, Any] | None) -> bool:
    """Whether the script itself named a group (argument or ``settings=``; not the environment)."""
    if group is not None:
        return True
    if isinstance(settings, Settings):
        return settings.group is not None
    return isinstance(settings, Mapping) and any(settings.get(k) is not None for k in ("group", "run_group"))


def _start_one(
    s: Settings,
    cfg_dict: dict[str, Any],
    allow_val_change: bool | None,
    save_code: bool | None,
    online: Online | None,
    resume: Any,
) -> Run:
    """``init``'s single-process path: settle resume, then start the run."""
    run_id = validate_run_id(s.run_id) if s.run_id else None
    # Online, resume="must" with an id asks the server first (below); without one it is an error.
    must_ask_server = online is not None and resume == "must" and run_id is not None
    target = None if must_ask_server else _resume_target(s, resume, run_id)
    remote = None
    if online is not None and run_id and resume not in (None, False):
        remote = _check_server_resume(online, s, run_id, str(resume))
        if target is None and resume == "must":
            target = _find_local_run(s.root_dir, run_id)
    if target is not None:
        remote = None  # the local journal knows where the run stands
    return _start(s, run_id, target, cfg_dict, bool(allow_val_change), save_code, online, resume, remote)


@dataclass(frozen=True)
class Online:
    url: str
    api_key: str | None


def _check_server_resume(online: Online, s: Settings, run_id: str, resume: str) -> dict[str, Any] | None:
    """The server's view of run ``run_id`` (None: it has none).  resume="must"/"never" wait for
    the answer (bounded); "allow"/"auto" ask briefly, to continue at the server's next step."""
    import urllib.error
    import urllib.request

    url = f"{online.url.rstrip('/')}/api/v1/runs/{s.entity}/{s.project}/{run_id}"
    req = urllib.request.Request(url)
    if online.api_key:
        req.add_header("authorization", f"Bearer {online.api_key}")
    wait = RESUME_CHECK_TIMEOUT if resume in ("must", "never") else RESUME_PEEK_TIMEOUT
    deadline = time.monotonic() + wait
    found: dict[str, Any] | None = None
    while True:
        try:
            with urllib.request.urlopen(req, timeout=min(5.0, wait)) as resp:
                found = json.load(resp)
            break
        except urllib.error.HTTPError as e:
            if e.code == 404:
                break
            raise UsageError(
                f"resume={resume!r}: the server at {online.url} answered {e.code} for run {run_id}"
            ) from None
        except OSError as e:
            if time.monotonic() > deadline:
                if resume not in ("must", "never"):
                    say(s, f"could not ask {online.url} about run {run_id} ({e}); resuming from local state")
                    return None
                raise UsageError(
                    f'resume="{resume}" needs the server\'s answer, but {online.url} did not answer within '
                    f"{RESUME_CHECK_TIMEOUT:.0f}s ({e})"
                ) from None
            time.sleep(0.5)
    if resume == "must" and found is None:
        raise UsageError(f'resume="must" but the server has no run {s.entity}/{s.project}/{run_id}')
    if resume == "never" and found is not None:
        raise UsageError(
            f'resume="never" but run {s.entity}/{s.project}/{run_id} already exists on the server'
        )
    return found


@dataclass
class _Origin:
    """Where a starting run lives, and where it continues from (a new run: step 0, seq 1)."""

    run_id: str
    name: str
    run_dir: Path
    resumed_locally: bool  # from its run directory's journal
    resumed: bool  # from the journal or from the server's copy
    start_step: int = 0
    first_seq: int = 1
    prior_config: dict[str, Any] = field(default_factory=dict)
    prior_metrics: dict[str, Any] = field(default_factory=dict)  # define_metric's, by name


def _start(
    s: Settings,
    run_id: str | None,
    resume_dir: Path | None,
    cfg_dict: dict[str, Any],
    allow_val_change: bool,
    save_code: bool | None,
    online: Online | None = None,
    resume: Any = None,
    remote: dict[str, Any] | None = None,
) -> Run:
    """Start the run ``init`` has settled on: each step below is one function, in order."""
    if save_code is not None:  # init(save_code=...) wins over the setting
        s.save_code = bool(save_code)
    origin = _locate_run(s, run_id, resume_dir, remote)
    update_latest_link(s.root_dir, origin.run_dir)
    ring, writer = _open_ring(s, origin)
    run = _make_run(s, origin, ring, writer, allow_val_change)
    meta = _write_first_records(run, origin, cfg_dict, allow_val_change)
    if origin.prior_metrics:  # define_metric calls made before the resume hold (docs/metrics.md)
        from runstream.metric import restore

        restore(run, origin.prior_metrics, emit=not origin.resumed_locally)
    writer_id = _write_run_json(origin.run_dir, meta)
    continuing = origin.resumed_locally or bool(remote)
    extra_args, extra_env = _sidecar_options(s, online, origin.run_id, writer_id, continuing, resume)
    run._online = online  # type: ignore[attr-defined]
    _start_sidecar(run, s, ring, extra_args, extra_env)
    _publish(run)
    _install_hooks()
    _say_started(s, run, origin, online)
    return run


def _locate_run(
    s: Settings, run_id: str | None, resume_dir: Path | None, remote: dict[str, Any] | None
) -> _Origin:
    """The run's id, name and directory, and the step, seq and config it continues from: those
    of its journal when resumed locally, else a new directory (continuing the server's copy when
    ``remote`` is it)."""
    if resume_dir is not None:
        state, _ = replay(resume_dir, keep_rows=False)
        return _Origin(
            run_id=str(state.run.get("id") or resume_dir.name.rsplit("-", 1)[-1]),
            name=s.name or str(state.run.get("name") or new_run_name()),
            run_dir=resume_dir,
            resumed_locally=True,
            resumed=True,
            start_step=state.last_step + 1,
            first_seq=state.last_seq + 1,
            prior_config=state.config,
            prior_metrics=state.metrics.public() if state.metrics is not None else {},
        )
    run_id = run_id or new_run_id()
    name = s.name or (remote or {}).get("name") or new_run_name()
    origin = _Origin(
        run_id=run_id,
        name=name,
        run_dir=create_run_dir(s.root_dir, run_id, dt.datetime.now()),
        resumed_locally=False,
        resumed=remote is not None,
    )
    if remote is not None:  # resumed from the server's copy on a machine without the run dir
        origin.start_step = int(remote.get("last_step", -1)) + 1
        origin.prior_config = dict(remote.get("config") or {})
        origin.prior_metrics = dict(remote.get("metrics") or {})
    return origin


def _open_ring(s: Settings, origin: _Origin) -> tuple[RingMap, RingWriter]:
    """Create the shared-memory ring and its writer, which warns once when it starts dropping."""
    ring = RingMap.create(default_ring_path(origin.run_id, origin.run_dir), s.ring_size)
    return ring, _ring_writer(s, origin, ring)


def _ring_writer(s: Settings, origin: _Origin, ring: RingMap) -> RingWriter:
    """The producer of ``ring``, which warns once when it starts dropping."""
    writer = RingWriter(ring, s.overflow_size, first_seq=origin.first_seq)

    def warn_drop() -> None:
        from runstream.console import deferred

        with deferred():  # called inside the ring's push: a wrapped print must not push again
            print(
                f"runstream: warning: the sidecar is not keeping up: the ring ({ring.capacity} bytes) and "
                f"the overflow ({s.overflow_size} bytes) are full, so records are being dropped; they are "
                "counted in summary _runstream/dropped_records and shown by runstream inspect",
                file=sys.stderr,
            )

    writer.on_first_drop = warn_drop
    return writer


def _make_run(s: Settings, origin: _Origin, ring: RingMap, writer: RingWriter, allow_val_change: bool) -> Run:
    """The ``Run`` object, its config holding what a resumed run had (nothing is written yet)."""
    config = Config()
    config.update(origin.prior_config, allow_val_change=True)
    config._allow_val_change = allow_val_change
    run = Run(s, origin.run_id, origin.name, origin.run_dir, config, writer, start_step=origin.start_step)
    run._ring = ring  # type: ignore[attr-defined]
    run._resumed = origin.resumed
    return run


def _write_first_records(
    run: Run,
    origin: _Origin,
    cfg_dict: dict[str, Any],
    allow_val_change: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Publish the RUN record (the metadata, returned; ``extra``: a distributed rank's identity)
    and the CONFIG records, then let config changes publish themselves."""
    s = run._settings
    meta = {
        "id": origin.run_id,
        "name": origin.name,
        "project": s.project,
        "entity": s.entity,
        "tags": list(s.tags),
        "notes": s.notes,
        "group": s.group,
        "job_type": s.job_type,
        "start_time": run.start_time,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "program": sys.argv[0] if sys.argv else None,
        "args": sys.argv[1:],
        "python": sys.version.split()[0],
        "save_code": s.save_code,
        "resumed": origin.resumed,
    }
    if origin.resumed:
        meta.pop("start_time")  # runtime keeps counting from the first start
    if extra:
        meta.update(extra)
    run._emit(rec.KIND_RUN, meta)
    config = run.config

    def emit_config(delta: dict[str, Any]) -> None:
        run._check_live("run.config")  # after finish: raise, as W&B does, and store nothing
        run._emit(rec.KIND_CONFIG, delta)

    config._emit = emit_config
    config.update(cfg_dict, allow_val_change=True if origin.resumed_locally else allow_val_change)
    if not cfg_dict:
        run._emit(rec.KIND_CONFIG, {})  # so config.yaml exists from the start
    return meta


def _write_run_json(run_dir: Path, meta: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """Write ``run.json`` (who writes this run directory; ``extra``: a distributed rank's
    identity); returns the writer id."""
    writer_id = _writer_id(run_dir)
    info = {k: meta.get(k) for k in ("id", "name", "project", "entity", "pid", "host", "program", "args")}
    info.update(extra or {})
    write_json_atomic(run_dir / "run.json", {**info, "writer_id": writer_id, "created": time.time()})
    return writer_id


def _sidecar_options(
    s: Settings, online: Online | None, run_id: str, writer_id: str, continuing: bool, resume: Any
) -> tuple[list[str], dict[str, str]]:
    """The sidecar's extra arguments and environment: an online run's server, identity and
    upload deadline (its key goes in the environment, never on the command line)."""
    extra_args: list[str] = []
    extra_env: dict[str, str] = {}
    if online is not None:
        extra_args = [
            "--url", online.url, "--entity", s.entity, "--project", s.project, "--run-id", run_id,
            "--writer-id", writer_id, "--resume", "allow" if continuing else _resume_arg(resume),
            "--upload-timeout", str(max(min(s.finish_timeout - 3.0, s.finish_timeout * 0.8), 0.1)),
        ]  # fmt: skip
        if online.api_key:
            extra_env["RUNSTREAM_API_KEY"] = online.api_key  # never on the command line
    return extra_args, extra_env


def _start_sidecar(
    run: Run, s: Settings, ring: RingMap, extra_args: list[str], extra_env: dict[str, str]
) -> None:
    """Start capturing the console (its pipes go to the sidecar), then the sidecar itself under
    its supervisor; if the sidecar cannot start, the terminal gets its fds back."""
    from runstream import console

    cap = console.start(s.console, run._emit, lambda m: say(s, m))
    run._console = cap  # type: ignore[attr-defined]
    if cap is not None:
        extra_args += cap.sidecar_args()
    sup = SidecarSupervisor(ring.path, run._dir, s, extra_args, extra_env, cap.pass_fds() if cap else None)
    if cap is not None:
        sup.on_give_up = cap.no_sidecar
    try:
        sup.start()
    except BaseException:
        if cap is not None:  # no sidecar: the terminal gets its fds back
            cap.teardown()
            cap.close()
        raise
    run._sidecar = sup


def _say_started(s: Settings, run: Run, origin: _Origin, online: Online | None) -> None:
    verb = "resumed" if origin.resumed_locally else "started"
    where = f"streaming to {online.url} as {run.path}" if online else "offline"
    say(s, f"{verb} run {origin.name} ({origin.run_id}) {where}; local copy in {origin.run_dir}")


def _writer_id(run_dir: Path) -> str:
    """One writer per run directory: seqs continue across local resumes, so the id does too."""
    import json
    import secrets

    try:
        wid = json.loads((run_dir / "run.json").read_text()).get("writer_id")
        if wid:
            return str(wid)
    except (OSError, ValueError):
        pass
    return secrets.token_hex(8)


def _resume_arg(resume: Any) -> str:
    return {True: "allow", "auto": "allow", "allow": "allow", "must": "must", "never": "never"}.get(
        resume, ""
    )


def _publish(run: Run | DisabledRun) -> None:
    """Point the module-level names (runstream.run, .config, .summary, .log) at ``run``."""
    global _active
    import runstream

    _active = run if isinstance(run, Run) else None
    runstream.run = run
    runstream.config = run.config
    runstream.summary = run.summary
    # Rebinding the module attribute removes one call layer from ``runstream.log(...)``.
    runstream.log = run.log


def _unpublish() -> None:
    global _active
    import runstream

    _active = None
    runstream.run = None
    runstream.config = runstream._PreInitConfig()
    runstream.summary = None
    runstream.log = runstream._log_before_init


def finish_run(run: Run, exit_code: int | None) -> None:
    with _lock:
        if run._finished:
            return
        if getattr(run, "_tensorboard", None) is not None:  # its last rows go in before the pending one
            from runstream.tensorboard import finish as finish_tensorboard

            finish_tensorboard(run)
        s = run._settings
        run._commit_pending()
        writer = run._writer
        deadline = time.monotonic() + s.finish_timeout
        # The overflow waits for room in the ring only until the sidecar's share of the timeout
        # begins: a sidecar stuck on a full disk must still have the time to give up on it and
        # count the loss (final_write_timeout, and half as much again to exit) before finish
        # stops waiting for it.
        close_by = deadline - 1.5 * final_write_timeout(s.finish_timeout)
        cap = getattr(run, "_console", None)
        if cap is not None:  # its last lines go in before the exit record and the ring's close
            while not writer.drain_overflow() and time.monotonic() < close_by:
                time.sleep(0.001)  # room for them, after a sidecar that fell behind
            cap.teardown()
        code = 0 if exit_code is None else int(exit_code)
        w = run._ring.words  # type: ignore[attr-defined]
        dropped_before = int(w[W_DROPPED])
        run._emit(rec.KIND_EXIT, {"exit_code": code, "state": "finished" if code == 0 else "failed"})
        exit_out = int(w[W_DROPPED]) == dropped_before  # not dropped for want of room
        while not writer.drain_overflow() and time.monotonic() < close_by:
            time.sleep(0.001)
        exit_out = exit_out and not writer.overflow_bytes  # the exit record is the last one queued
        writer.abandon_overflow()  # what finish_timeout could not move is counted as dropped
        w[W_EXIT] = exit_word(code)
        if not exit_out:
            # The exit record goes through W_EXIT instead (the sidecar writes it): not a loss.
            w[W_DROPPED] = w[W_DROPPED] - 1
        writer.close()
        run._finished = True
        # A pending row sends every later log() down the slow path (the fast one, in Python or C,
        # does not look at _finished), where a finished run raises UsageError.
        run._pending = {}
        sup = run._sidecar
        sidecar_code = sup.stop(max(deadline - time.monotonic(), 1.0)) if sup else None
        if cap is not None:
            cap.close()  # no sidecar will read the console pipes again
        ring: RingMap = run._ring  # type: ignore[attr-defined]
        w = ring.words
        synced = int(w[W_SYNCED_SEQ])
        written, acked = int(w[W_JOURNALED_SEQ]), int(w[W_ACKED_SEQ])
        journaled, lost, unjournaled = _finish_figures(w, writer.last_seq, sidecar_code)
        # Media values lost without their record (docs/media.md, "Limits"): their rows were kept.
        media_lost = int(w[W_MEDIA_DROPPED]) + int(w[W_MEDIA_FAILED])
        if not exit_out and sidecar_code == 0:
            journaled += 1  # the exit record, which the sidecar wrote from W_EXIT
        last_words = False
        if sidecar_code not in (0, None):
            # No sidecar could run: the exit record, if it is among what the ring still holds,
            # is kept by writing it again; the rest of that is lost, and counted in the journal.
            exit_unjournaled = exit_out and unjournaled > 0
            last_words = _write_last_words(
                run._dir, w, writer.last_seq + 1, code, unjournaled - exit_unjournaled
            )
            if last_words and (exit_unjournaled or not exit_out):
                journaled += 1
                lost -= exit_unjournaled
                unjournaled -= exit_unjournaled
        if _active is run:
            _unpublish()
        ring.close()
        if sidecar_code == 0 or last_words:  # nothing in it is still to be journaled
            try:
                os.unlink(ring.path)
            except FileNotFoundError:
                pass
    rows = run._step
    who = getattr(run, "_who", None)  # a rank of a distributed run: the line is that rank's
    msg = f"run {run.name} ({run.id})" + (f" rank {who.rank}/{who.world_size}" if who else "")
    msg += f" {'finished' if code == 0 else f'failed (exit code {code})'}: "
    msg += f"{rows} steps, {journaled} records journaled in {run.dir}, {lost} lost"
    if media_lost:
        msg += f", {media_lost} media values not stored"
    if lost or media_lost:
        msg += " (see runstream inspect)"
    if sidecar_code is None:
        msg += (
            f"; the sidecar was still writing at the {s.finish_timeout:.0f}s finish timeout "
            f"(synced up to seq {synced}); it finishes in the background"
        )
    elif sidecar_code != 0:
        msg += (
            f"; no sidecar could run to journal the last {unjournaled} records (counted as lost"
            + ("" if last_words else ", in this line only: the journal could not be written")
            + f"; the sidecar exited with code {sidecar_code}, see {_logs_dir(run)})"
        )
    online = getattr(run, "_online", None)
    unsent = online is not None and acked < written
    if unsent:
        msg += (
            f"; the server has {acked} of {written} records. Upload the rest with:\n"
            f"    runstream sync {run.dir}"
        )
    if lost or media_lost or sidecar_code != 0 or unsent:
        print(f"runstream: warning: {msg}", file=sys.stderr)  # shown even when silent
    else:
        say(s, msg)


def _logs_dir(run: Run) -> Path:
    """Where the sidecar's logs are: the run directory's, or a rank's node directory's."""
    base = Path(run.dir)
    return (base.parent if getattr(run, "_who", None) is not None else base) / "logs"


def _finish_figures(w: memoryview, last_seq: int, sidecar_code: int | None) -> tuple[int, int, int]:
    """The finish line's figures from the ring's words: records journaled, records lost (every
    loss counter, docs/ring-format.md), and of those the records no sidecar took from the ring.

    Every record the producer published (seqs ``W_FIRST_SEQ..last_seq``) is journaled unless a
    sidecar counted it lost (``W_SIDECAR_LOST``); a sidecar that exited 0 accounted for all of
    them.  If the last one died instead, the records after the journal's highest seq
    (``W_JOURNALED_SEQ``) never reached the journal; if it is still running, they are on their
    way (not counted as lost, and the line says the sidecar is still writing)."""
    first = int(w[W_FIRST_SEQ]) or 1
    published = max(last_seq - first + 1, 0)
    through = min(int(w[W_JOURNALED_SEQ]), last_seq)
    unjournaled = 0 if sidecar_code == 0 else max(last_seq - max(through, first - 1), 0)
    sidecar_lost = int(w[W_SIDECAR_LOST])
    journaled = max(published - sidecar_lost - unjournaled, 0)
    lost = int(w[W_DROPPED]) + int(w[W_STEP_REGRESSIONS]) + sidecar_lost
    if sidecar_code is not None:
        lost += unjournaled
    return journaled, lost, unjournaled


def _write_last_words(run_dir: Path, w: memoryview, seq: int, code: int, unjournaled: int) -> bool:
    """No sidecar could run at finish: write what one writes at exit, the loss counters (with the
    ``unjournaled`` records counted in ``sidecar_lost_records``) and the exit record, as one frame
    in a segment of its own, so that inspect and the summary show the loss too.  Under the
    sidecar's lock (no late sidecar writes beside it); the seqs follow the producer's last, which
    the journal never got.  True when it is on disk."""
    import fcntl

    from runstream.format.frame import CODEC_NONE, TYPE_BATCH, encode_frame, parse_segment_name, segment_name

    try:
        lock = os.open(run_dir / "sidecar.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a sidecar is alive after all: the words are its to write
        journal = run_dir / "journal"
        journal.mkdir(exist_ok=True)
        indexes = [i for n in os.listdir(journal) if (i := parse_segment_name(n)) is not None]
        stats = loss_counters(w)
        stats["sidecar_lost_records"] += unjournaled
        now = time.time()
        ended = {"exit_code": code, "state": "finished" if code == 0 else "failed"}
        data = rec.encode(seq, rec.KIND_STATS, 0, now, rec.pack_body(stats), rec.FLAG_SIDECAR)
        data += rec.encode(seq + 1, rec.KIND_EXIT, 0, now, rec.pack_body(ended), rec.FLAG_SIDECAR)
        frame = encode_frame(TYPE_BATCH, CODEC_NONE, seq, seq + 1, data)
        path = journal / segment_name(max(indexes, default=0) + 1)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(frame)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        dfd = os.open(journal, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        w[W_SIDECAR_LOST] = stats["sidecar_lost_records"]
        return True
    except OSError:
        return False
    finally:
        os.close(lock)


def finish(exit_code: int | None = None, quiet: bool | None = None) -> None:
    """Finish the active run, if there is one (``runstream.run.finish``); otherwise do nothing.

    Args:
        exit_code: 0 or ``None`` marks the run finished; anything else marks it failed with
            that code.
        quiet: Accepted for compatibility with W&B; ignored.

    Blocking:
        As :meth:`Run.finish`: it waits, bounded by the ``finish_timeout`` setting (60 s by
        default), for the sidecar to journal and fsync the run and, online, for the server to
        acknowledge it; what the deadline cuts off is reported on stderr.  A disabled run
        finishes at once.  Afterwards ``runstream.run`` and ``runstream.summary`` are ``None``
        again, and ``runstream.log`` and ``runstream.config`` raise ``UsageError`` until the
        next ``init``.
    """
    run = _active
    if run is not None:
        run.finish(exit_code)
    else:
        import runstream

        if runstream.run is not None:  # a disabled run
            runstream.run.finish(exit_code)
            _unpublish()


# --- interpreter exit -------------------------------------------------------------------------
_hooks_installed = False
_exit_code: int | None = None


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    prev_hook = sys.excepthook
    prev_exit = sys.exit

    def excepthook(tp: Any, value: Any, tb: Any) -> None:
        global _exit_code
        _exit_code = 130 if issubclass(tp, KeyboardInterrupt) else 1
        prev_hook(tp, value, tb)

    def exit_(code: Any = None) -> None:
        global _exit_code
        _exit_code = code if isinstance(code, int) else (0 if code is None else 1)
        prev_exit(code)

    sys.excepthook = excepthook
    sys.exit = exit_  # type: ignore[assignment]
    atexit.register(_at_exit)
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _at_exit() -> None:
    run = _active
    if run is not None and not run._finished:
        run.finish(exit_code=_exit_code or 0)


def _after_fork_in_child() -> None:
    """A forked child (e.g. a DataLoader worker) must not write the parent's ring: two producers
    would break the single-producer contract.  Its run becomes inert, with one warning if used."""
    run = _active
    if run is None:
        return
    warned = False

    def inert(*args: Any, **kwargs: Any) -> None:
        nonlocal warned
        if not warned:
            warned = True
            print(
                f"runstream: warning: process {os.getpid()} is a fork of the training process; "
                "its log() calls are ignored (log from the process that called init)",
                file=sys.stderr,
            )

    import runstream

    run.log = inert  # type: ignore[method-assign]
    run._emit = inert  # type: ignore[method-assign]
    runstream.log = inert
    run._finished = True
    run._sidecar = None
    cap = getattr(run, "_console", None)
    if cap is not None:
        cap.after_fork_in_child()
