"""Regenerate the Python code for proto/ (``make proto``); ``--check`` fails when it is stale.

protoc names the generated module after the proto's path (``runstream/v1/ingest_pb2.py``), which
would shadow the ``runstream`` SDK package, so the code goes into ``runstream_ingest/wire/`` and
the gRPC module's import of its message module is made relative.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "ingest" / "runstream_ingest" / "wire"
PROTOS = ["runstream/v1/ingest.proto"]


def generate(out: Path) -> dict[str, str]:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(PROTO_DIR / p) for p in PROTOS],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        files: dict[str, str] = {}
        for path in sorted(Path(tmp).rglob("*.py*")):
            text = path.read_text()
            text = text.replace("from runstream.v1 import ingest_pb2", "from . import ingest_pb2")
            files[path.name] = text
    return files


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--check", action="store_true", help="fail if the checked-in code differs")
    args = p.parse_args()
    files = generate(OUT_DIR)
    stale = []
    for name, text in files.items():
        target = OUT_DIR / name
        old = target.read_text() if target.exists() else ""
        if old != text:
            stale.append(name)
            if args.check:
                sys.stdout.writelines(
                    difflib.unified_diff(
                        old.splitlines(True), text.splitlines(True), str(target), "generated"
                    )
                )
            else:
                OUT_DIR.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
    init = OUT_DIR / "__init__.py"
    if not init.exists() and not args.check:
        init.write_text('"""Generated protobuf and gRPC code for proto/ (regenerate with `make proto`)."""\n')
    if args.check and stale:
        print(f"\nstale generated code: {', '.join(stale)}; run `make proto`", file=sys.stderr)
        return 1
    print(("up to date: " if args.check else "generated: ") + ", ".join(sorted(files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
