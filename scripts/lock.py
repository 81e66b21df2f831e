"""Refresh ``constraints.txt`` (``make lock``): the exact version of everything ``make install`` puts
in ``.venv``.

``make install`` installs with ``pip install -c constraints.txt``, so a fresh clone gets the versions
this file names and a new release on the package index cannot change what CI runs.  This script is
the one deliberate way to move them: in a fresh temporary venv it installs the newest pip, setuptools
and wheel, then the project's dependencies and its ``test`` extra as pyproject.toml states them, with
no constraints, and writes ``pip freeze --all`` (less the project, which is installed editable).

The project's requirements are installed by name rather than as ``.[test]`` so that locking does not
build the project (its C extension, its package data): only what it depends on is resolved.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"
PROJECT = "runstream"
BOOTSTRAP = ["pip", "setuptools", "wheel"]

HEADER = """\
# The exact version of every package `make install` puts in .venv: a pip constraints file
# (`pip install -c constraints.txt`), so a fresh clone installs these and a new release on the
# package index cannot change what the tests run with.
# Made by `make lock` (scripts/lock.py) with CPython {python} on {platform}:
# a fresh venv, the newest {bootstrap},
# then an unconstrained install of pyproject.toml's dependencies and its [test] extra;
# `pip freeze --all`, less {project} itself.
# Refresh it on purpose with `make lock` (then `make install`); do not edit it by hand.
"""


def requirements(pyproject: Path) -> list[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: locking is a maintainer's step, 3.11+ is fine for it
        raise SystemExit("scripts/lock.py needs Python 3.11+ (tomllib): `make lock PY=python3.11`") from None
    project = tomllib.loads(pyproject.read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["test"]]


def run(*cmd: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def freeze(reqs: list[str], keep: Path | None = None) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="runstream-lock-") as tmp:
        venv = Path(tmp) / "venv"
        run(sys.executable, "-m", "venv", str(venv))
        py = str(venv / "bin" / "python")
        pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        print(f"installing the newest {', '.join(BOOTSTRAP)} in a fresh venv", flush=True)
        run(*pip, "--upgrade", *BOOTSTRAP)
        if keep is None:
            print(f"installing {len(reqs)} requirements from pyproject.toml, unconstrained", flush=True)
            run(*pip, *reqs)
        else:
            # A new requirement is resolved; everything the lock already names stays where it is.
            print(f"installing {len(reqs)} requirements from pyproject.toml, within {keep.name}", flush=True)
            run(*pip, "-c", str(keep), *reqs)
        lines = run(py, "-m", "pip", "freeze", "--all", "--disable-pip-version-check").splitlines()
    pins = []
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        name = line.split("==")[0].strip()
        if name.lower() == PROJECT:
            continue
        # A constraints file can only hold plain pins: an editable or URL install here would mean
        # the lock names something no index can give a fresh clone.
        if "==" not in line or line.startswith("-e"):
            raise SystemExit(f"cannot lock {line!r}: not a plain `name==version` from the index")
        pins.append(line)
    return sorted(pins, key=lambda pin: pin.split("==")[0].lower())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=LOCK, help=f"default: {LOCK.name}")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep every version the current lock names; resolve only requirements new to it",
    )
    args = p.parse_args()
    pins = freeze(requirements(ROOT / "pyproject.toml"), keep=LOCK if args.keep else None)
    header = HEADER.format(
        python=platform.python_version(),
        platform=f"{platform.system().lower()} {platform.machine()}",
        bootstrap=", ".join(BOOTSTRAP),
        project=PROJECT,
    )
    args.output.write_text(header + "".join(f"{pin}\n" for pin in pins))
    print(f"wrote {len(pins)} pins to {args.output}; now `make install`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
