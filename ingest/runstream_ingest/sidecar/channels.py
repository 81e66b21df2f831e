"""The gRPC side of shipping: finding a server's gRPC port, and channels to it.

``discover`` asks a server's one HTTP address (``/api/v1/info``) for its gRPC port.  A single
sidecar's shipper makes a channel per session (``make_channel``); a node sidecar's shippers share
one ``ChannelPool`` channel, so every stream of a node rides one HTTP/2 connection
(docs/distributed.md, "The node sidecar").

Concurrency contract: ``ChannelPool`` is used from one asyncio event loop; ``discover`` blocks
(callers run it on an executor).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class Target:
    url: str  # the server's one address, http(s)://host:port
    grpc_addr: str  # host:port, from /api/v1/info
    tls: bool
    api_key: str | None


def discover(url: str, api_key: str | None, timeout: float = 5.0) -> Target:
    """Ask the server which gRPC port goes with its HTTP address (raises OSError when down)."""
    base = url.rstrip("/")
    req = urllib.request.Request(base + "/api/v1/info")  # needs no key: none is sent
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        info = json.load(resp)
    host = base.split("://", 1)[-1].rsplit(":", 1)[0]
    return Target(base, f"{host}:{info['grpc_port']}", base.startswith("https://"), api_key)


CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),  # the server's limit is the one that counts
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


# A shared channel lives through outages: gRPC's own reconnect back-off (up to 120 s by default)
# must not outlast the shippers' (30 s), or a server that came back would wait for the channel.
SHARED_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]


def make_channel(target: Target, extra: list[tuple[str, int]] | None = None) -> grpc.aio.Channel:
    options = CHANNEL_OPTIONS + (extra or [])
    if target.tls:
        return grpc.aio.secure_channel(target.grpc_addr, grpc.ssl_channel_credentials(), options)
    return grpc.aio.insecure_channel(target.grpc_addr, options)


class ChannelPool:
    """One gRPC channel shared by many shippers of one server (a node sidecar's ranks and its
    own writer): HTTP/2 multiplexes their streams over one connection, so N ranks cost one
    connection and one discovery, not N.

    ``get`` discovers the server's gRPC address once and keeps the channel; a failed stream calls
    ``failed``, after which the next ``get`` (at most once a second) asks ``/api/v1/info`` again
    and replaces the channel if the address changed (a restarted server on another port) or the
    channel is not connected (its streams are failing anyway; a new one connects at once).  A
    healthy channel is kept, so one rank's refused stream does not cut the others'.  Loop-only,
    like the shippers that use it."""

    REDISCOVER_EVERY = 1.0

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url
        self.api_key = api_key
        self.target: Target | None = None
        self.channel: grpc.aio.Channel | None = None
        self.opened = 0  # channels made over the pool's life (tests: one per address)
        self._stale = False
        self._checked = 0.0
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    async def get(self) -> tuple[Target, grpc.aio.Channel]:
        async with self._lock:
            now = time.monotonic()
            if self.channel is None or (self._stale and now - self._checked >= self.REDISCOVER_EVERY):
                self._checked = now
                loop = asyncio.get_running_loop()
                target = await loop.run_in_executor(None, discover, self.url, self.api_key)
                self._stale = False
                if (
                    self.channel is None
                    or self.target is None
                    or target.grpc_addr != self.target.grpc_addr
                    or self.channel.get_state() != grpc.ChannelConnectivity.READY
                ):
                    if self.channel is not None:  # its streams are failing: closed after a grace
                        task = asyncio.create_task(self.channel.close(grace=5.0))
                        self._closing.add(task)
                        task.add_done_callback(self._closing.discard)
                    self.target, self.channel = target, make_channel(target, SHARED_CHANNEL_OPTIONS)
                    self.opened += 1
            assert self.target is not None and self.channel is not None
            return self.target, self.channel

    def failed(self) -> None:
        self._stale = True

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        self.channel = None
        if self._closing:
            _, late = await asyncio.wait(list(self._closing), timeout=1.0)
            for t in late:
                t.cancel()
