"""``runstream server``'s command-line arguments (kept apart so the CLI loads without grpc)."""

from __future__ import annotations

import argparse
from pathlib import Path

from runstream_ingest.server.alert_config import webhook_arg
from runstream_ingest.server.auth.keys_cli import DB_NAME, DEFAULT_DATA_DIR, data_dir

__all__ = ["DB_NAME", "DEFAULT_DATA_DIR", "DEFAULT_PORT", "add_server_args", "data_dir"]

DEFAULT_PORT = 7780
DEFAULT_HTTP_MAX_CONNECTIONS = 1000
DEFAULT_HTTP_HEADER_TIMEOUT = 30.0
# aiohttp's own default (3,630 s) lets idle sockets pile up; a client whose idle connection was
# closed just opens another.
DEFAULT_HTTP_IDLE_TIMEOUT = 75.0
DEFAULT_MEMORY_BUDGET = 512 << 20


def _positive(kind: type[int] | type[float]):  # type: ignore[no-untyped-def]
    """An argparse type: a number above zero (a zero cap or timeout would shut every client out)."""

    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} is not above zero")
        return value

    return parse


def add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT}; 0: any)"
    )
    p.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default: HTTP port + 1; 0: any)")
    p.add_argument("--data-dir", default=None, help=f"where the database lives (default {DEFAULT_DATA_DIR})")
    p.add_argument("--auth", action="store_true", help="require API keys on loopback too")
    p.add_argument("--tls-cert", type=Path, default=None)
    p.add_argument("--tls-key", type=Path, default=None)
    p.add_argument(
        "--heartbeat-timeout", type=float, default=120.0, help="seconds before a silent run is marked crashed"
    )
    p.add_argument(
        "--advertise-grpc-port",
        type=int,
        default=None,
        help="gRPC port to tell clients (when they reach the server through a proxy)",
    )
    p.add_argument("--max-message", type=int, default=16 << 20, help="largest gRPC message in bytes")
    # Limits on what clients can make the server hold (docs/server-limits.md).
    p.add_argument(
        "--http-max-connections",
        type=_positive(int),
        default=DEFAULT_HTTP_MAX_CONNECTIONS,
        help="open HTTP connections at most; past it the oldest idle one is closed, or the new one "
        f"refused with 503 when none is idle (default {DEFAULT_HTTP_MAX_CONNECTIONS}; lowered to "
        "leave open files for gRPC when the open-files limit is lower)",
    )
    p.add_argument(
        "--http-header-timeout",
        type=_positive(float),
        default=DEFAULT_HTTP_HEADER_TIMEOUT,
        help=f"seconds a new HTTP connection has to send its first request head "
        f"(default {DEFAULT_HTTP_HEADER_TIMEOUT:g})",
    )
    p.add_argument(
        "--http-idle-timeout",
        type=_positive(float),
        default=DEFAULT_HTTP_IDLE_TIMEOUT,
        help=f"seconds an HTTP keep-alive connection may wait for its next request "
        f"(default {DEFAULT_HTTP_IDLE_TIMEOUT:g})",
    )
    p.add_argument(
        "--memory-budget",
        type=_positive(int),
        default=DEFAULT_MEMORY_BUDGET,
        help="bytes that received batches of all streams may hold together, compressed and "
        f"decompressed, until stored (default {DEFAULT_MEMORY_BUDGET >> 20} MiB); past it streams wait",
    )
    # Files kept with runs (docs/files.md, "Who may read a blob"): unset, each comes from its
    # RUNSTREAM_SERVER_* variable or its default there.
    p.add_argument(
        "--max-file-size", type=_positive(int), default=None, help="bytes one file may have (default 64 GiB)"
    )
    p.add_argument(
        "--upload-quota",
        type=_positive(int),
        default=None,
        help="bytes of unfinished uploads one entity may hold (default 64 GiB)",
    )
    p.add_argument(
        "--upload-expiry",
        type=_positive(float),
        default=None,
        help="seconds an unfinished upload may go untouched before it is removed (default 86400)",
    )
    # Alerts (docs/alerts.md): where runstream.alert calls are POSTed, per entity.
    p.add_argument(
        "--alert-webhook",
        action="append",
        type=webhook_arg,
        default=[],
        metavar="ENTITY=URL",
        help="POST the alerts of ENTITY's runs to URL (JSON; Slack incoming webhooks accepted); "
        "repeat for more entities; *=URL for every entity without its own",
    )
    p.add_argument(
        "--public-url",
        default=None,
        help="the dashboard's address as users reach it, for links in alerts (default: the address served)",
    )
    p.add_argument(
        "--alert-retry-base",
        type=_positive(float),
        default=1.0,
        help="seconds before retrying a failed alert delivery; doubles per attempt, at most 300 (default 1)",
    )
    p.add_argument(
        "--alert-max-attempts",
        type=_positive(int),
        default=10,
        help="delivery attempts of one alert before it is marked failed (default 10)",
    )
