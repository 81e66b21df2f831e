"""``runstream server``'s command-line arguments (kept apart so the CLI loads without grpc)."""

from __future__ import annotations

import argparse
from pathlib import Path

from runstream_ingest.server.auth.keys_cli import DB_NAME, DEFAULT_DATA_DIR, data_dir

__all__ = ["DB_NAME", "DEFAULT_DATA_DIR", "DEFAULT_PORT", "add_server_args", "data_dir"]

DEFAULT_PORT = 7780


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
