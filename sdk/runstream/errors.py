"""Exceptions users can catch.  ``Error`` is the base of every runstream-specific error."""

from __future__ import annotations


class Error(Exception):
    """Base class of runstream's errors (W&B scripts catch ``wandb.Error``; this is its twin)."""


class UsageError(Error):
    """The API was called in a way it cannot honour (e.g. ``log`` before ``init``)."""


class ConfigError(Error, ValueError):
    """A config key was changed without ``allow_val_change``, or a config source was unreadable."""


class SettingsError(Error, ValueError):
    """A setting (argument, environment variable or ``settings=`` entry) has a bad value."""


class RecordTooLargeError(Error, ValueError):
    """One record is larger than the ring can ever hold."""


class NotSupportedError(Error, NotImplementedError):
    """A W&B feature runstream does not have yet (artifacts, sweeps...); the message says what
    is missing and what to do instead.  Under ``mode="disabled"`` such calls do nothing instead.
    """
