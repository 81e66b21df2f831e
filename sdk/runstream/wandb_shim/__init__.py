"""Run code that does ``import wandb`` itself, unchanged, against runstream (opt-in).

Libraries such as Lightning's ``WandbLogger``, Hugging Face's ``Trainer(report_to="wandb")`` and
Accelerate's ``WandBTracker`` import ``wandb`` and its submodules (``wandb.sdk.lib``,
``wandb.wandb_run``, ``wandb.env``...) and check the installed ``wandb`` distribution, so
``sys.modules["wandb"] = runstream`` is not enough for them.  The shim makes ``import wandb`` and
those submodules resolve to runstream, and answers ``importlib.metadata`` for ``wandb`` with a
stand-in distribution (version :data:`WANDB_VERSION`).  Two ways to switch it on:

* a whole process tree: ``runstream as-wandb python train.py`` (or put :func:`pythonpath_dir`
  first on ``PYTHONPATH``): a ``wandb`` stub package and ``wandb-*.dist-info`` in that folder
  install the shim when ``wandb`` is first imported, in every Python child process too;
* the current process (a notebook): ``import runstream.wandb_shim; runstream.wandb_shim.install()``
  before anything imports ``wandb``.

Without either, ``import wandb`` fails as before.  The details: docs/wandb-shim.md.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from runstream.errors import UsageError
from runstream.wandb_shim.modules import BUILDERS, PACKAGES, SHIM_MARK, WANDB_VERSION, build

__all__ = ["WANDB_VERSION", "install", "installed", "pythonpath_dir", "uninstall"]

_PYTHONPATH_DIR = Path(__file__).resolve().parent / "pythonpath"
_DIST_INFO = _PYTHONPATH_DIR / f"wandb-{WANDB_VERSION.split('+')[0]}.dist-info"


def pythonpath_dir() -> Path:
    """The folder to put first on ``PYTHONPATH`` to switch the shim on for a process tree.

    Returns:
        The folder holding the ``wandb`` stub package and its ``wandb-*.dist-info``.
    """
    return _PYTHONPATH_DIR


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return build(spec.name)

    def exec_module(self, module: ModuleType) -> None:
        return None  # built complete by create_module


class WandbFinder(importlib.abc.MetaPathFinder):
    """The ``sys.meta_path`` entry that serves ``wandb`` and its known submodules from runstream,
    and the ``wandb`` distribution to ``importlib.metadata``."""

    _loader = _Loader()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in BUILDERS:
            return None  # other wandb.* names are missing, as in any package without them
        return importlib.util.spec_from_loader(
            fullname, self._loader, origin="runstream.wandb_shim", is_package=fullname in PACKAGES
        )

    def find_distributions(self, context: Any = None) -> Iterator[importlib.metadata.Distribution]:
        name = getattr(context, "name", None)
        if name is not None and name.lower().replace("-", "_").replace(".", "_") != "wandb":
            return iter(())
        if _on_sys_path():
            return iter(())  # the path finder already reports the dist-info in that folder
        return iter((importlib.metadata.PathDistribution(_DIST_INFO),))


def _on_sys_path() -> bool:
    for entry in sys.path:
        try:
            if entry and Path(entry).resolve() == _PYTHONPATH_DIR:
                return True
        except OSError:
            continue
    return False


def _finder() -> WandbFinder | None:
    return next((f for f in sys.meta_path if isinstance(f, WandbFinder)), None)


def installed() -> bool:
    """Whether the shim is switched on in this process.

    Returns:
        True when ``import wandb`` resolves to runstream here.
    """
    return _finder() is not None


def install() -> ModuleType:
    """Make ``import wandb`` (and ``wandb.sdk...``, ``wandb.wandb_run``, ``wandb.env``) resolve to
    runstream in this process, and ``importlib.metadata.version("wandb")`` report
    :data:`WANDB_VERSION`.  Calling it again does nothing more.

    Call it before anything imports ``wandb``.  It does not reach child processes (spawned
    DataLoader workers, DDP ranks); for those use ``runstream as-wandb`` / :func:`pythonpath_dir`.

    Returns:
        The ``wandb`` module, a proxy over ``runstream``.

    Raises:
        UsageError: The real ``wandb`` package is already imported in this process.

    Blocking:
        No: it changes ``sys.meta_path`` and ``sys.modules`` only.
    """
    current = sys.modules.get("wandb")
    if current is not None and not getattr(current, SHIM_MARK, False) and not _is_stub(current):
        raise UsageError(
            f"runstream.wandb_shim.install(): the real wandb package is already imported "
            f"(from {getattr(current, '__file__', None)}); call install() before anything imports wandb"
        )
    if _finder() is None:
        sys.meta_path.insert(0, WandbFinder())
    if current is None or not getattr(current, SHIM_MARK, False):
        # The stub on PYTHONPATH is replaced while it is being imported: the import statement
        # then returns whatever sys.modules["wandb"] holds when the stub's code ends.
        sys.modules["wandb"] = importlib.import_module("wandb") if current is None else _fresh("wandb")
    return sys.modules["wandb"]


def _fresh(name: str) -> ModuleType:
    spec = WandbFinder().find_spec(name)
    assert spec is not None
    return importlib.util.module_from_spec(spec)


def _is_stub(module: ModuleType) -> bool:
    file = getattr(module, "__file__", None)
    return isinstance(file, str) and Path(file).resolve().parent.parent == _PYTHONPATH_DIR


def uninstall() -> None:
    """Switch the shim off in this process: remove its finder and forget the ``wandb`` modules
    it made (code that kept a reference to them keeps working on runstream).  The stub folder
    stays on ``sys.path`` if it was put there; take it off ``PYTHONPATH`` for that."""
    finder = _finder()
    if finder is not None:
        sys.meta_path.remove(finder)
    for name in [n for n in sys.modules if n == "wandb" or n.startswith("wandb.")]:
        if getattr(sys.modules[name], SHIM_MARK, False):
            del sys.modules[name]
