"""Shippers run on an event loop in a thread of the test process, as they run on the sidecar's
loop, while the test drives servers, proxies and journals from the main thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runstream_ingest.sidecar.shipper import Identity, Shipper

IDENT = Identity("tests", "shipping", "run1", "writer1")
PATH = f"{IDENT.entity}/{IDENT.project}/{IDENT.run_id}"
WAIT_S = 30.0  # generous deadlines: the machine may be loaded; passing tests never wait them out


@dataclass
class Shipping:
    shipper: Shipper
    task: asyncio.Task[None]
    acks: list[int] = field(default_factory=list)  # every on_acked call, in order


class LoopThread:
    """An event loop in a thread, running shippers as the sidecar's loop does.  The shipper's
    counters are plain ints, read from the test thread; everything else goes through the loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-shipper", daemon=True)
        self.thread.start()
        self.running: list[Shipping] = []

    def call(self, fn: Callable[[], object], timeout: float = 10.0) -> object:
        async def run() -> object:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def start(self, run_dir: Path, url: str) -> Shipping:
        def make() -> Shipping:
            acks: list[int] = []
            s = Shipper(run_dir, IDENT, url, None, on_acked=acks.append)
            return Shipping(s, self.loop.create_task(s.run()), acks)

        shipping = self.call(make)
        assert isinstance(shipping, Shipping)
        self.running.append(shipping)
        return shipping

    def wake(self, s: Shipping) -> None:
        # Not needed for correctness (the shipper looks at its journal every 250 ms): only quicker.
        self.loop.call_soon_threadsafe(s.shipper.wake)

    def wait_acked(self, s: Shipping, seq: int, timeout: float = WAIT_S) -> bool:
        fut = asyncio.run_coroutine_threadsafe(s.shipper.wait_acked(seq, timeout), self.loop)
        return bool(fut.result(timeout + 10))

    def stop(self, s: Shipping, check: bool = True) -> None:
        """Cancel its task, as the sidecar does at exit; with ``check``, it must not have died on
        its own before."""

        async def cancel() -> BaseException | None:
            if s.task.done():
                return None if s.task.cancelled() else s.task.exception()
            s.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await s.task
            return None

        self.running.remove(s)
        died = asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(15)
        assert died is None or not check, f"the shipper's task died: {died!r}"

    def close(self) -> None:
        async def cancel_the_rest() -> None:
            # As asyncio.run does at exit: a cancelled shipper leaves its wait tasks pending.
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            for s in list(self.running):
                self.stop(s)
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(cancel_the_rest(), self.loop).result(15)
            for coro in (self.loop.shutdown_asyncgens(), self.loop.shutdown_default_executor()):
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(coro, self.loop).result(15)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(15)
            if not self.thread.is_alive():
                self.loop.close()
