"""What keeping a large file with a run costs, and how fast its content goes up.  (``make bench``)

One case, ``file_upload`` (parameters and targets in bench/cases/file_upload/case.json):

* **the training process**: ``runstream.save(path, policy="now")`` of a large file in an offline
  run: the call's time (a glob, one record: the copy is the sidecar's);
* **the upload**: in a child process (so its peak RSS is the upload's), ``hash_file`` then
  ``BlobClient.upload`` to a real server on 127.0.0.1 -- the code the sidecar runs -- as MB/s of
  the file, hash and the server's verification included; the child's peak RSS over its RSS before;
* **dedup**: the same upload again, which the server answers from one ``HEAD``;
* **resume**: an upload stopped after half its parts, then resumed: the share of the file sent
  twice.

Prints text, then the same figures as one JSON object on the last line (or into ``--json PATH``).
Exits 0 even when a target fails -- it is a report -- unless ``--check`` is given.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from tests.support.server import running_server

import runstream
from _common import arg_parser, emit, load_case, machine, print_targets, record_case

CHILD = """
import json, sys, time
from pathlib import Path
from runstream_ingest.sidecar.sources.blob_upload import PART, BlobClient, hash_file

url, path = sys.argv[1], Path(sys.argv[2])
def rss_mib(field):  # VmHWM, not ru_maxrss, which starts from the parent's at fork
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
before = rss_mib("VmRSS")
t0 = time.perf_counter()
sha, size = hash_file(path)
client = BlobClient(url, None)
sent = client.upload(path, sha, size)
took = time.perf_counter() - t0
peak = rss_mib("VmHWM")
t1 = time.perf_counter()
again = client.upload(path, sha, size)
dedup = time.perf_counter() - t1
print(json.dumps({"sha": sha, "size": size, "sent": sent, "took": took, "rss_before": before,
                  "rss_peak": peak, "dedup_s": dedup, "dedup_sent": again}))
"""

RESUME = """
import json, sys
from pathlib import Path
from runstream_ingest.sidecar.sources.blob_upload import PART, BlobClient, hash_file

url, path = sys.argv[1], Path(sys.argv[2])
sha, size = hash_file(path)
client = BlobClient(url, None)
with open(path, "rb") as f:  # the first half of the parts, then the upload "dies"
    offset = 0
    while offset < size // 2:
        part = f.read(PART)
        status, _, body = client._request("PUT", sha, part, offset=offset, size=size)
        offset = int(body["offset"])
sent = client.upload(path, sha, size)
print(json.dumps({"size": size, "held": offset, "sent": sent}))
"""


def make_file(path: Path, size: int) -> None:
    """Sparse, with a random 4 KiB block every 64 MiB: unique content, cheap to make and read."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, 64 << 20):
            f.seek(off)
            f.write(os.urandom(4096))


def child(code: str, url: str, path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", code, url, str(path)], capture_output=True, text=True, check=True, timeout=600
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def save_call_ms(path: Path, d: Path) -> float:
    run = runstream.init(
        project="bench",
        mode="offline",
        dir=d,
        settings={"silent": True, "console": "off", "disable_stats": True, "disable_code": True},
    )
    try:
        t0 = time.perf_counter()
        run.save(str(path), policy="now")
        return (time.perf_counter() - t0) * 1e3
    finally:
        run.finish()


def case_upload(p: dict[str, Any]) -> dict[str, Any]:
    size = int(p["size_mb"]) << 20
    rows = []
    with tempfile.TemporaryDirectory(prefix="runstream-bench-files-") as tmp:
        d = Path(tmp)
        with running_server(d / "server") as srv:
            for i in range(int(p["repeat"])):
                path = d / f"big-{i}.bin"
                make_file(path, size)
                call = save_call_ms(path, d / "runs")
                up = child(CHILD, srv.url, path)
                path.unlink()
                make_file(path, size)
                res = child(RESUME, srv.url, path)
                path.unlink()
                for blob in (d / "server" / "blobs").glob("??/*"):
                    blob.unlink()  # the disk holds one repetition's blobs at a time
                row = {
                    "save_call_ms": call,
                    "upload_mb_s": up["size"] / 1e6 / up["took"],
                    "upload_rss_growth_mib": up["rss_peak"] - up["rss_before"],
                    "dedup_ms": up["dedup_s"] * 1e3,
                    "resume_resent_pct": 100 * (res["sent"] - (res["size"] - res["held"])) / res["size"],
                }
                rows.append(row)
                print(
                    f"  repeat {i + 1}: save() {row['save_call_ms']:.2f} ms; hash+upload "
                    f"{row['upload_mb_s']:.0f} MB/s, peak RSS +{row['upload_rss_growth_mib']:.1f} MiB; "
                    f"dedup {row['dedup_ms']:.1f} ms; resumed at {res['held'] >> 20} MiB, "
                    f"{row['resume_resent_pct']:.2f} % sent twice",
                    flush=True,
                )
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, {"file_upload": None}, "a 256 MB file, twice")
    a = ap.parse_args(argv)
    out: dict[str, Any] = {"quick": a.quick, "machine_before": machine()}
    print(f"runstream file upload benchmark{' (--quick)' if a.quick else ''}: {out['machine_before']}")
    case = load_case("file_upload", a.quick, a.repeat)
    p = case["parameters"]
    load = machine()["load"]
    print(f"file_upload: {p['size_mb']} MB, {p['repeat']} repeats (load average {load})")
    fig = case_upload(p)
    print("  medians: " + ", ".join(f"{k} {v:.2f}" for k, v in fig.items()))
    cases: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    record_case(cases, targets, case, load, fig)
    print_targets(out, targets)
    return emit(out, cases, targets, a.json, a.check)


if __name__ == "__main__":
    sys.exit(main())
