"""Files kept with a run (docs/files.md): ``runstream.save`` and the read API's ``ApiFile``.

``save`` resolves its glob in the training process (a directory listing, nothing read), links
``live`` and ``end`` files into the run's ``files/`` (so the sidecar sees their latest content
without copying them again after each change) and sends one KIND_FILE record per file through the
ring; the sidecar copies ``now`` files (a 1 GB copy must not stall training), hashes and uploads.

Concurrency contract: ``save`` runs on the training thread, as ``log`` does; an ``ApiFile``
belongs to the thread that uses it.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runstream.errors import UsageError
from runstream.format import record as rec

if TYPE_CHECKING:
    from runstream.read.api_runs import ApiRun
    from runstream.run import Run

POLICIES = ("live", "now", "end")
CHUNK = 1 << 20


def ignored(rel: str, globs: Any) -> bool:
    """Whether ``ignore_globs`` keep the file at ``rel`` (under files/) from upload: a glob
    matches the whole path or its last part."""
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(name, g) for g in globs)


def _base_of(pattern: str) -> str:
    """The directory of ``pattern`` up to its first wildcard: where a saved path starts."""
    parts = Path(pattern).parts
    keep = []
    for p in parts[:-1]:
        if glob.has_magic(p):
            break
        keep.append(p)
    return str(Path(*keep)) if keep else os.sep


def resolve(glob_str: Any, base_path: Any = None) -> list[tuple[str, str]]:
    """(path under files/, absolute source) for each file ``glob_str`` matches now.

    W&B's rules: a relative glob keeps its path below the current directory (``models/a.pt``);
    an absolute one keeps the names below its directory; ``base_path`` sets that directory, and
    the glob must lie under it."""
    if not isinstance(glob_str, str | os.PathLike) or not os.fspath(glob_str):
        raise TypeError(f"runstream.save takes a path or glob (str or os.PathLike), not {glob_str!r}")
    raw = os.fspath(glob_str)
    pattern = os.path.abspath(raw)
    if base_path is not None:
        if not isinstance(base_path, str | os.PathLike):
            raise TypeError(f"runstream.save: base_path must be a path, not {base_path!r}")
        base = os.path.abspath(os.fspath(base_path))
    elif os.path.isabs(raw):
        base = _base_of(pattern)
    else:
        base = os.getcwd()
    rel = os.path.relpath(pattern, base)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ValueError(
            f"runstream.save: {raw!r} is not under base_path {base!r}: a file is kept at its path "
            "relative to base_path, so the glob must not walk above it"
        )
    out = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        if os.path.isfile(match):
            out.append((Path(os.path.relpath(match, base)).as_posix(), match))
    return out


def save(run: Run, glob_str: Any, base_path: Any = None, policy: str = "live") -> list[str]:
    """``Run.save``: see docs/files.md.  Returns the paths under ``files/`` that were saved."""
    if policy not in POLICIES:
        raise ValueError(f"runstream.save: policy must be 'live', 'now' or 'end', not {policy!r}")
    if run._finished:
        raise UsageError(f"run {run.id} is finished; runstream.save() needs a running run")
    globs = run._settings.ignore_globs
    matches = [(rel, src) for rel, src in resolve(glob_str, base_path) if not ignored(rel, globs)]
    if not matches:
        print(
            f"runstream: warning: save({os.fspath(glob_str)!r}) matches no file (that ignore_globs "
            "let through); nothing was saved",
            file=sys.stderr,
        )
        return []
    files = Path(run.dir) / "files"
    for rel, source in matches:
        value: dict[str, Any] = {"path": rel, "policy": policy}
        if policy == "now":
            value["source"] = source  # the sidecar copies it
        else:
            _link(source, files / rel)
        run._emit(rec.KIND_FILE, value)
    return [rel for rel, _ in matches]


def _link(source: str, dest: Path) -> None:
    """``dest`` becomes a symlink to ``source`` (replacing what was there), unless it is it."""
    if os.path.lexists(dest) and os.path.exists(dest) and os.path.samefile(source, dest):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.link.tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(source, tmp)
    os.replace(tmp, dest)


def save_active(glob_str: Any = None, base_path: Any = None, policy: str = "live") -> list[str] | bool | None:
    """``runstream.save``: keep files with the active run; :meth:`Run.save` has the details.

    Args:
        glob_str: A path or glob of the files to keep (``str`` or ``os.PathLike``).
        base_path: The directory the saved paths are relative to.
        policy: ``"live"`` (uploaded again after each change), ``"now"`` or ``"end"``.

    Returns:
        The paths under the run's ``files/`` that were saved (``[]`` when nothing matched);
        ``None`` for a disabled run, which saves nothing; ``True`` for ``save()`` without
        arguments (old W&B's "persist the run", which runstream does as changes are made).

    Raises:
        UsageError: No run is active, or it is finished.
        TypeError, ValueError: As :meth:`Run.save`.

    Lists the matching files and links them into the run directory; it reads no file's content
    and never waits for the sidecar or the network.
    """
    import runstream

    if runstream.run is None:
        raise UsageError("runstream.save() was called before runstream.init(): start a run first")
    return runstream.run.save(glob_str, base_path=base_path, policy=policy)


# --- the read API ----------------------------------------------------------------------------
class ApiFile:
    """One file of a run on the server (W&B's ``File``): ``name`` (its path under files/),
    ``size``, ``sha256``, ``policy``, ``updated_at``, ``url``; ``download`` streams it to disk."""

    def __init__(self, run: ApiRun, data: dict[str, Any]) -> None:
        self._run = run
        self.name: str = data["path"]
        self.size: int | None = data.get("size")
        self.sha256: str | None = data.get("sha256")
        self.policy: str | None = data.get("policy")
        self.updated_at: float | None = data.get("time")
        api = run._api
        self.url = f"{api.host}/api/v1/runs/{run.path}/files/{urllib.parse.quote(self.name)}"

    def __repr__(self) -> str:
        return f"<runstream.ApiFile {self.name} ({self.size} bytes)>"

    def download(
        self, root: str | os.PathLike[str] = ".", replace: bool = False, exist_ok: bool = False
    ) -> Path:
        """Write the file to ``root/<name>`` a chunk at a time, checking its sha256; returns the
        path.  An existing file is an error unless ``replace`` (overwrite) or ``exist_ok`` (keep)."""
        from runstream.read.api import ApiError, authorized, http_error

        root_dir = Path(root).resolve()
        dest = (root_dir / self.name).resolve()
        if root_dir not in dest.parents:
            raise ValueError(f"file name {self.name!r} would be written outside {root_dir}")
        if dest.exists() and not replace:
            if exist_ok:
                return dest
            raise FileExistsError(f"{dest} exists: pass replace=True to overwrite it")
        api = self._run._api
        req = authorized(self.url, api.api_key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        h = hashlib.sha256()
        try:
            with urllib.request.urlopen(req, timeout=api.timeout) as resp, open(tmp, "wb") as out:
                expect = resp.headers.get("X-Runstream-Sha256") or self.sha256
                while chunk := resp.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            if expect and h.hexdigest() != expect:
                raise ApiError(f"{self.name}: the download hashes to {h.hexdigest()}, not {expect}")
            os.replace(tmp, dest)
        except urllib.error.HTTPError as e:
            raise http_error(e, "GET", self.url) from None
        except OSError as e:
            raise ApiError(f"{self.name} could not be downloaded from {api.host}: {e}") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        return dest


def run_files(run: ApiRun) -> list[ApiFile]:
    return [ApiFile(run, f) for f in run._api._get(f"/api/v1/runs/{run.path}/files")["files"]]


def run_file(run: ApiRun, name: str) -> ApiFile:
    from runstream.read.api import NotFoundError

    for f in run_files(run):
        if f.name == name:
            return f
    raise NotFoundError(f"run {run.path} has no file {name!r}")
