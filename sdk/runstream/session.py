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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runstream.config import Config, load_config
from runstream.errors import UsageError
from runstream.format import record as rec
from runstream.names import new_run_id, new_run_name, validate_run_id
from runstream.read.local import replay
from runstream.ring import (
    W_ACKED_SEQ,
    W_DROPPED,
    W_JOURNALED,
    W_JOURNALED_SEQ,
    W_SIDECAR_LOST,
    W_STEP_REGRESSIONS,
    W_SYNCED_SEQ,
    RingMap,
    RingWriter,
    default_ring_path,
)
from runstream.run import Run
from runstream.rundir import create_run_dir, find_run_dirs, update_latest_link, write_json_atomic
from runstream.settings import Settings, resolve_settings
from runstream.supervisor import SidecarSupervisor

RESUME_CHECK_TIMEOUT = 30.0
RESUME_PEEK_TIMEOUT = 5.0
_active: Run | None = None
_lock = threading.RLock()


def say(settings: Settings, msg: str) -> None:
    if not settings.silent:
        print(f"runstream: {msg}", file=sys.stderr)


def _find_local_run(root: Path, run_id: str) -> Path | None:
    for d in reversed(find_run_dirs(root)):
        if d.name.endswith(f"-{run_id}"):
            return d
    return None


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

        dirs = find_run_dirs(settings.root_dir)
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


def init(
    project: str | None = None,
    entity: str | None = None,
    name: str | None = None,
    notes: str | None = None,
    tags: Any = None,
    group: str | None = None,
    job_type: str | None = None,
    config: Any = None,
    config_exclude_keys: Any = None,
    config_include_keys: Any = None,
    dir: Any = None,
    id: str | None = None,
    resume: Any = None,
    reinit: bool | None = None,
    mode: str | None = None,
    allow_val_change: bool | None = None,
    save_code: bool | None = None,
    settings: Any = None,
    **ignored: Any,
) -> Any:
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
        cfg_dict = load_config(config, config_include_keys, config_exclude_keys)
        if s.mode == "disabled":
            from runstream.disabled import DisabledRun

            run = DisabledRun(s, cfg_dict)
            _publish(run)
            return run
        online = None
        if s.mode == "online":
            from runstream.login import credentials

            creds = credentials(s.host)
            if creds.host:
                online = Online(creds.host, creds.api_key)
            else:
                say(s, "no server configured (RUNSTREAM_HOST or `runstream login`): running offline")
        run_id = validate_run_id(s.run_id) if s.run_id else None
        target = _resume_target(s, resume, run_id) if online is None or resume != "must" else None
        remote = None
        if online is not None and run_id and resume not in (None, False):
            remote = _check_server_resume(online, s, run_id, str(resume))
            if target is None and resume == "must":
                target = _find_local_run(s.root_dir, run_id)
        if target is not None:
            remote = None  # the local journal knows where the run stands
        return _start(
            s, run_id, target, cfg_dict, bool(allow_val_change), save_code, ignored, online, resume, remote
        )


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


def _start(
    s: Settings,
    run_id: str | None,
    resume_dir: Path | None,
    cfg_dict: dict[str, Any],
    allow_val_change: bool,
    save_code: bool | None,
    ignored: dict[str, Any],
    online: Online | None = None,
    resume: Any = None,
    remote: dict[str, Any] | None = None,
) -> Run:
    if save_code is not None:  # init(save_code=...) wins over the setting
        s.save_code = bool(save_code)
    start_step, first_seq = 0, 1
    prior_config: dict[str, Any] = {}
    if resume_dir is not None:
        state, _ = replay(resume_dir, keep_rows=False)
        run_id = str(state.run.get("id") or resume_dir.name.rsplit("-", 1)[-1])
        name = s.name or str(state.run.get("name") or new_run_name())
        start_step = state.last_step + 1
        first_seq = state.last_seq + 1
        prior_config = state.config
        run_dir = resume_dir
    else:
        run_id = run_id or new_run_id()
        name = s.name or (remote or {}).get("name") or new_run_name()
        run_dir = create_run_dir(s.root_dir, run_id, dt.datetime.now())
        if remote is not None:  # resumed from the server's copy on a machine without the run dir
            start_step = int(remote.get("last_step", -1)) + 1
            prior_config = dict(remote.get("config") or {})
    update_latest_link(s.root_dir, run_dir)
    ring = RingMap.create(default_ring_path(run_id, run_dir), s.ring_size)
    writer = RingWriter(ring, s.overflow_size, first_seq=first_seq)

    def warn_drop() -> None:
        from runstream.console import deferred

        with deferred():  # called inside the ring's push: a wrapped print must not push again
            print(
                f"runstream: warning: the sidecar is not keeping up: the ring ({s.ring_size} bytes) and the "
                f"overflow ({s.overflow_size} bytes) are full, so records are being dropped; they are "
                "counted in summary _runstream/dropped_records and shown by runstream inspect",
                file=sys.stderr,
            )

    writer.on_first_drop = warn_drop
    config = Config()
    config.update(prior_config, allow_val_change=True)
    config._allow_val_change = allow_val_change
    run = Run(s, run_id, name, run_dir, config, writer, start_step=start_step)
    run._ring = ring  # type: ignore[attr-defined]
    meta = {
        "id": run_id,
        "name": name,
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
        "resumed": resume_dir is not None or remote is not None,
    }
    if resume_dir is not None or remote is not None:
        meta.pop("start_time")  # runtime keeps counting from the first start
    run._emit(rec.KIND_RUN, meta)
    config._emit = lambda delta: run._emit(rec.KIND_CONFIG, delta)
    config.update(cfg_dict, allow_val_change=True if resume_dir is not None else allow_val_change)
    if not cfg_dict:
        run._emit(rec.KIND_CONFIG, {})  # so config.yaml exists from the start
    writer_id = _writer_id(run_dir)
    info = {k: meta.get(k) for k in ("id", "name", "project", "entity", "pid", "host", "program", "args")}
    write_json_atomic(run_dir / "run.json", {**info, "writer_id": writer_id, "created": time.time()})
    extra_args: list[str] = []
    extra_env: dict[str, str] = {}
    if online is not None:
        extra_args = [
            "--url", online.url, "--entity", s.entity, "--project", s.project, "--run-id", run_id,
            "--writer-id", writer_id, "--resume", "allow" if resume_dir or remote else _resume_arg(resume),
            "--upload-timeout", str(max(min(s.finish_timeout - 3.0, s.finish_timeout * 0.8), 0.1)),
        ]  # fmt: skip
        if online.api_key:
            extra_env["RUNSTREAM_API_KEY"] = online.api_key  # never on the command line
    run._online = online  # type: ignore[attr-defined]
    from runstream import console

    cap = console.start(s.console, run._emit, lambda m: say(s, m))
    run._console = cap  # type: ignore[attr-defined]
    if cap is not None:
        extra_args += cap.sidecar_args()
    sup = SidecarSupervisor(ring.path, run_dir, s, extra_args, extra_env, cap.pass_fds() if cap else None)
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
    _publish(run)
    _install_hooks()
    verb = "resumed" if resume_dir is not None else "started"
    where = f"streaming to {online.url} as {run.path}" if online else "offline"
    say(s, f"{verb} run {name} ({run_id}) {where}; local copy in {run_dir}")
    return run


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


def _publish(run: Any) -> None:
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
        s = run._settings
        run._commit_pending()
        writer = run._writer
        deadline = time.monotonic() + s.finish_timeout
        cap = getattr(run, "_console", None)
        if cap is not None:  # its last lines go in before the exit record and the ring's close
            while not writer.drain_overflow() and time.monotonic() < deadline:
                time.sleep(0.001)  # room for them, after a sidecar that fell behind
            cap.teardown()
        code = 0 if exit_code is None else int(exit_code)
        run._emit(rec.KIND_EXIT, {"exit_code": code, "state": "finished" if code == 0 else "failed"})
        while not writer.drain_overflow() and time.monotonic() < deadline:
            time.sleep(0.001)
        writer.abandon_overflow()  # what finish_timeout could not move is counted as dropped
        writer.close()
        run._finished = True
        sup = run._sidecar
        sidecar_code = sup.stop(max(deadline - time.monotonic(), 1.0)) if sup else None
        if cap is not None:
            cap.close()  # no sidecar will read the console pipes again
        ring: RingMap = run._ring  # type: ignore[attr-defined]
        w = ring.words
        journaled, synced = int(w[W_JOURNALED]), int(w[W_SYNCED_SEQ])
        written, acked = int(w[W_JOURNALED_SEQ]), int(w[W_ACKED_SEQ])
        dropped = int(w[W_DROPPED]) + int(w[W_STEP_REGRESSIONS]) + int(w[W_SIDECAR_LOST])
        if _active is run:
            _unpublish()
        ring.close()
        if sidecar_code == 0:
            try:
                os.unlink(ring.path)
            except FileNotFoundError:
                pass
    rows = run._step
    msg = f"run {run.name} ({run.id}) {'finished' if code == 0 else f'failed (exit code {code})'}: "
    msg += f"{rows} steps, {journaled} records journaled in {run.dir}"
    if dropped:
        msg += f"; {dropped} records dropped (see runstream inspect)"
    if sidecar_code != 0:
        msg += (
            f"; the sidecar was still writing at the {s.finish_timeout:.0f}s finish timeout "
            f"(synced up to seq {synced}); it finishes in the background"
        )
    online = getattr(run, "_online", None)
    unsent = online is not None and acked < written
    if unsent:
        msg += (
            f"; the server has {acked} of {written} records. Upload the rest with:\n"
            f"    runstream sync {run.dir}"
        )
    if dropped or sidecar_code != 0 or unsent:
        print(f"runstream: warning: {msg}", file=sys.stderr)  # shown even when silent
    else:
        say(s, msg)


def finish(exit_code: int | None = None, quiet: bool | None = None) -> None:
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
