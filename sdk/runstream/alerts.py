"""``runstream.alert`` and ``AlertLevel``: W&B's alerts, kept with the run (docs/alerts.md).

An alert is one ``KIND_ALERT`` record (docs/ring-format.md, "Records"), pushed into the ring like
a config change: it never waits for the sidecar, the disk or the network.  The server stores it
with the run, lists it, and POSTs it to the webhook configured for the run's entity.

Rate limit (W&B's ``wait_duration``): after an alert with a given title is recorded, further
alerts with the same title are dropped until ``wait_duration`` has passed.  W&B applies the limit
on its server; runstream applies it here, in the training process, so that it works offline and
the same way for every reader, and a loop that calls ``alert`` at every step costs no record, no
storage and no webhook call per step.  The drops are counted: the next recorded alert with that
title carries ``suppressed`` (how many were dropped since the previous one), and ``alert``
returns ``False`` for a dropped alert.

Concurrency contract: as ``Run`` (one thread at a time); the limiter belongs to its run.
"""

from __future__ import annotations

import enum
import math
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from runstream.errors import UsageError
from runstream.format import record as rec

if TYPE_CHECKING:
    from runstream.run import Run

DEFAULT_WAIT = 60.0  # seconds: W&B's default ``wait_duration`` (one minute)
MAX_TITLE = 64  # W&B: "the title ... must be less than 64 characters long"
MAX_TEXT = 16_384  # characters kept of ``text``; longer text is cut (and says so)


class AlertLevel(str, enum.Enum):
    """How serious an alert is (W&B's ``wandb.AlertLevel``); its value is the level's name."""

    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"


def parse_level(level: Any) -> AlertLevel:
    """``level`` as an ``AlertLevel``: ``None`` is INFO; a str is a level's name (any case).

    Raises:
        TypeError: ``level`` is neither an ``AlertLevel``, a str nor None.
        ValueError: A str that names no level.
    """
    if level is None:
        return AlertLevel.INFO
    if isinstance(level, AlertLevel):
        return level
    if not isinstance(level, str):
        raise TypeError(
            f"runstream.alert: level must be a runstream.AlertLevel or one of 'INFO', 'WARN', "
            f"'ERROR', not a {type(level).__name__}"
        )
    try:
        return AlertLevel[level.upper()]
    except KeyError:
        raise ValueError(
            f"runstream.alert: level must be one of 'INFO', 'WARN', 'ERROR', not {rec.show_key(level)}"
        ) from None


def parse_wait(wait_duration: Any) -> float:
    """``wait_duration`` in seconds.  ``None`` and 0 mean the default, one minute (as in W&B,
    whose ``wait_duration or timedelta(minutes=1)`` treats 0 the same way).

    Raises:
        TypeError: Not an int, float or ``datetime.timedelta`` (a bool is refused too).
        ValueError: Negative, NaN or infinite.
    """
    if wait_duration is None:
        return DEFAULT_WAIT
    if isinstance(wait_duration, timedelta):
        seconds = wait_duration.total_seconds()
    elif isinstance(wait_duration, (int, float)) and not isinstance(wait_duration, bool):
        seconds = float(wait_duration)
    else:
        raise TypeError(
            "runstream.alert: wait_duration must be seconds (an int or float) or a "
            f"datetime.timedelta, not a {type(wait_duration).__name__}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"runstream.alert: wait_duration must be a finite number of seconds >= 0, not {seconds}"
        )
    return seconds or DEFAULT_WAIT


def _check_text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"runstream.alert: {name} must be a str, not a {type(value).__name__}")
    return value


class AlertLimiter:
    """Per-title rate limit of one run (see the module docstring); monotonic clock, so a change
    of the wall clock neither floods nor silences alerts."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}  # title -> when its last recorded alert was made
        self._dropped: dict[str, int] = {}  # title -> alerts dropped since then

    def admit(self, title: str, wait: float) -> int | None:
        """None when an alert titled ``title`` must be dropped now (counted); else how many were
        dropped since the previous one with that title (and the window starts again)."""
        now = self._clock()
        last = self._last.get(title)
        if last is not None and now - last < wait:
            self._dropped[title] = self._dropped.get(title, 0) + 1
            return None
        self._last[title] = now
        return self._dropped.pop(title, 0)


def record_alert(run: Run, title: Any, text: Any, level: Any, wait_duration: Any) -> bool:
    """Validate an alert and push its record into ``run``'s ring (``Run.alert``'s body)."""
    title = _check_text("title", title)
    text = _check_text("text", text)
    if not title.strip():
        raise ValueError("runstream.alert: title must not be empty")
    if len(title) > MAX_TITLE:
        raise ValueError(
            f"runstream.alert: title is {len(title)} characters long; at most {MAX_TITLE} are allowed"
        )
    lvl = parse_level(level)
    wait = parse_wait(wait_duration)
    if run._finished:
        raise UsageError("runstream.alert: the run is finished")
    limiter: AlertLimiter | None = getattr(run, "_alerts", None)
    if limiter is None:
        limiter = run._alerts = AlertLimiter()
    suppressed = limiter.admit(title, wait)
    if suppressed is None:
        return False
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 40] + f"... [{len(text) - MAX_TEXT + 40} characters cut]"
    t = time.time()
    body = {
        "title": title,
        "text": text,
        "level": lvl.value,
        "wait_duration": wait,
        "time": t,
        "step": run._step,
        "suppressed": suppressed,
    }
    run._push(rec.KIND_ALERT, run._step, t, rec.pack_body(body))
    return True


def alert(
    title: str,
    text: str,
    level: str | AlertLevel | None = None,
    wait_duration: int | float | timedelta | None = None,
) -> bool:
    """Send an alert from the active run: ``runstream.run.alert(...)`` (see :meth:`Run.alert`).

    Raises:
        UsageError: No run is active (before ``init`` or after ``finish``).
        TypeError, ValueError: As :meth:`Run.alert`.
    """
    import runstream

    run = runstream.run
    if run is None:
        raise UsageError("runstream.alert() was called before runstream.init(): start a run first")
    return bool(run.alert(title, text, level=level, wait_duration=wait_duration))
