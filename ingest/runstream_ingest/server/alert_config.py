"""``--alert-webhook ENTITY=URL``: where each entity's alerts are POSTed (docs/alerts.md).

Kept apart from the delivery loop (``alerts.py``) so that ``args.py`` can check the option
without loading the storage or aiohttp.  Pure functions: safe from any thread.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from urllib.parse import urlsplit

ANY_ENTITY = "*"  # the webhook of every entity that has none of its own


def parse_webhook(spec: str) -> tuple[str, str]:
    """One ``ENTITY=URL`` into ``(entity, url)``.

    Raises:
        ValueError: No ``=``, an empty entity, or a URL that is not ``http(s)://`` with a host;
            the message names the spec (but not a URL's path, which may hold a token).
    """
    entity, sep, url = spec.partition("=")
    entity, url = entity.strip(), url.strip()
    if not sep or not entity:
        raise ValueError(f"--alert-webhook {entity or spec[:40]!r}...: expected ENTITY=URL (or *=URL)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"--alert-webhook for entity {entity!r}: the URL must start with http:// or https:// "
            "and name a host"
        )
    return entity, url


def parse_webhooks(specs: Iterable[str]) -> dict[str, str]:
    """Every ``--alert-webhook`` into ``{entity: url}``.

    Raises:
        ValueError: As ``parse_webhook``, or an entity given twice.
    """
    out: dict[str, str] = {}
    for spec in specs:
        entity, url = parse_webhook(spec)
        if entity in out:
            raise ValueError(f"--alert-webhook: entity {entity!r} is given twice")
        out[entity] = url
    return out


def webhook_arg(spec: str) -> str:
    """An argparse ``type``: checks one ``ENTITY=URL`` and keeps it as it is."""
    try:
        parse_webhook(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return spec
