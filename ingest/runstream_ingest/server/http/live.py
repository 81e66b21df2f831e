"""Live updates: which runs changed, pushed to dashboards as server-sent events (docs/http-api.md,
"Live updates").

The server calls ``notify(run_path)`` when it has stored a batch of a run, marked it crashed, or
edited or deleted it.  Each ``GET /api/v1/events/{entity}/{project}`` stream subscribes to its
project; a subscriber holds the set of its project's runs changed since it last sent, so a run
storing 20 batches a second costs one event per ``MIN_INTERVAL_S``, not twenty, and a slow browser
never makes the server queue more than one entry per run.

Concurrency contract: event loop only (``notify`` is called from the gRPC handlers and the
janitor, which run on the same loop).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

MIN_INTERVAL_S = 0.25  # at most this often per stream: well inside the 2 s a chart may lag
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream


class Subscriber:
    def __init__(self, hub: LiveHub, project: str, runs: frozenset[str] | None) -> None:
        self.hub, self.project, self.runs = hub, project, runs
        self.changed: set[str] = set()
        self.wake = asyncio.Event()

    def offer(self, run_path: str) -> None:
        if self.runs is None or run_path.rsplit("/", 1)[-1] in self.runs:
            self.changed.add(run_path)
            self.wake.set()

    async def next(self, timeout: float) -> set[str]:
        """The run paths changed since the last call; empty after ``timeout`` without any."""
        try:
            await asyncio.wait_for(self.wake.wait(), timeout)
        except asyncio.TimeoutError:
            return set()
        self.wake.clear()
        out, self.changed = self.changed, set()
        return out

    def close(self) -> None:
        self.hub._subs[self.project].discard(self)


class LiveHub:
    def __init__(self) -> None:
        self._subs: defaultdict[str, set[Subscriber]] = defaultdict(set)

    def subscribe(self, entity: str, project: str, runs: frozenset[str] | None = None) -> Subscriber:
        """Changes to the project's runs (only ``runs``, by id, when given); ``close`` when done."""
        sub = Subscriber(self, f"{entity}/{project}", runs)
        self._subs[sub.project].add(sub)
        return sub

    def notify(self, run_path: str) -> None:
        # A distributed run's member row ("<id>~r3", "<id>~n0") changed: the run did.
        run_path = run_path.partition("~")[0]
        project = run_path.rsplit("/", 1)[0]
        subs = self._subs.get(project)
        if not subs:
            self._subs.pop(project, None)
            return
        for sub in subs:
            sub.offer(run_path)

    def subscribers(self) -> int:
        return sum(len(s) for s in self._subs.values())
