"""Who may call the server: API-key checks for gRPC streams and HTTP requests, and when auth is on.

A call presents its key as ``authorization: Bearer <key>`` or ``x-runstream-api-key: <key>``
(gRPC metadata or HTTP headers; names are case-insensitive).  A missing, malformed, unknown or
revoked key is ``UNAUTHENTICATED``; a valid key used on another entity is ``PERMISSION_DENIED``.
With auth off (loopback without ``--auth``) keys are ignored and every call is let through.

No message here ever contains a key: only key ids, which are hashes of keys.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

import grpc

from runstream.format.api_key import looks_like_key
from runstream_ingest.server.auth.keys import KeyInfo, KeyStore

BEARER = "bearer "
KEY_HEADER = "x-runstream-api-key"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})
_HOW_TO = "run `runstream login` or set RUNSTREAM_API_KEY"


class AuthError(Exception):
    """A refused call: ``code`` is UNAUTHENTICATED or PERMISSION_DENIED."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return 401 if self.code == grpc.StatusCode.UNAUTHENTICATED else 403


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` is reachable from this machine only.  Unknown names count as not:
    a name may resolve to a public address, and guessing wrong must turn auth on, not off."""
    h = host.strip().strip("[]").lower()
    if h in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # "", "0.0.0.0"-style wildcards parse; hostnames land here


def auth_required(bind_host: str, flag: bool) -> bool:
    """Auth is on whenever the server binds a non-loopback address; ``--auth`` turns it on for loopback."""
    return flag or not is_loopback(bind_host)


def insecure_warning(bind_host: str, tls: bool) -> str | None:
    """The loud warning for a non-loopback bind without TLS, or None when there is nothing to say."""
    if tls or is_loopback(bind_host):
        return None
    bar = "!" * 78
    return (
        f"{bar}\n"
        f"WARNING: runstream server is listening on {bind_host!r} WITHOUT TLS.\n"
        "API keys and run data cross the network in clear text: anyone on the path can read\n"
        "them and reuse the keys.  Pass --tls-cert and --tls-key, or put a TLS proxy in front.\n"
        f"{bar}"
    )


def _presented_key(items: Iterable[tuple[str, object]]) -> str | None:
    found: set[str] = set()
    for name, value in items:
        if not isinstance(value, str):  # binary (-bin) metadata
            continue
        lname = name.lower()
        if lname == "authorization":
            if value[: len(BEARER)].lower() != BEARER:
                raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "authorization must be 'Bearer <API key>'")
            found.add(value[len(BEARER) :].strip())
        elif lname == KEY_HEADER:
            found.add(value.strip())
    if len(found) > 1:
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "two different API keys were presented")
    return found.pop() if found else None


class Authenticator:
    """Checks one call's key against the store.  ``required=False`` lets everything through."""

    def __init__(self, store: KeyStore, required: bool) -> None:
        self.store = store
        self.required = required

    def check(self, metadata: Iterable[tuple[str, object]], entity: str | None) -> KeyInfo | None:
        """The caller's key, checked for access to ``entity`` (None: any valid key will do).

        Returns None when auth is off.  Raises ``AuthError``.  ``metadata`` is gRPC invocation
        metadata or HTTP header items.
        """
        if not self.required:
            return None
        key = _presented_key(metadata)
        if not key:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"this server needs an API key: {_HOW_TO}")
        if not looks_like_key(key):
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED, "the API key is not a runstream key (bad format or checksum)"
            )
        info = self.store.authenticate(key)
        if info is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"the API key is unknown or revoked: {_HOW_TO}")
        if entity is not None and entity != info.entity:
            raise AuthError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"API key {info.id} belongs to entity {info.entity!r}, not {entity!r}",
            )
        self.store.touch(info.id)
        return info

    def check_http(self, headers: Mapping[str, str], entity: str | None) -> KeyInfo | None:
        """``check`` for an HTTP request's headers; ``AuthError.http_status`` gives 401 or 403."""
        return self.check(headers.items(), entity)

    def recheck(self, key: KeyInfo | None) -> None:
        """Per batch on an open stream: raises UNAUTHENTICATED once the key has been revoked."""
        if key is None:
            return
        if not self.store.is_active(key.id):
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"API key {key.id} was revoked")
        self.store.touch(key.id)
