"""``runstream.Histogram``: counts and bin edges, computed when it is made (as W&B does).

A histogram is small and plain, so it needs no sidecar work: it is logged as W&B's value
``{"_type": "histogram", "values": [...], "bins": [...]}`` in the row itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from runstream.media.base import as_array

MAX_BINS = 512


class Histogram:
    """A histogram to log: ``run.log({"weights": runstream.Histogram(w)})``.

    Args:
        sequence: The values (a list, numpy array or tensor, any shape: flattened).  NaN and
            infinities are left out of the counts.
        np_histogram: Instead of ``sequence``, a ``(counts, bin_edges)`` pair such as
            ``np.histogram`` returns.
        num_bins: Bins for ``sequence``: 1 to 512 (64 by default).

    Raises:
        ValueError: Neither or both inputs, more than 512 bins, edges that are not one more
            than the counts.

    Attributes:
        histogram (list[float]): The counts.
        bins (list[float]): The bin edges, one more than the counts.
    """

    def __init__(
        self,
        sequence: Sequence[Any] | Any | None = None,
        np_histogram: tuple[Any, Any] | None = None,
        num_bins: int = 64,
    ) -> None:
        if np_histogram is not None:
            if sequence is not None:
                raise ValueError("runstream.Histogram: give sequence or np_histogram, not both")
            if not isinstance(np_histogram, (tuple, list)) or len(np_histogram) != 2:
                raise ValueError(
                    "runstream.Histogram: np_histogram must be a (counts, bin_edges) pair, "
                    "as np.histogram returns"
                )
            counts = as_array(np_histogram[0], "Histogram").ravel()
            edges = as_array(np_histogram[1], "Histogram").ravel()
            if len(edges) != len(counts) + 1:
                raise ValueError(
                    f"runstream.Histogram: {len(edges)} bin edges for {len(counts)} counts; "
                    "len(bins) must be len(counts) + 1"
                )
        elif sequence is None:
            raise ValueError("runstream.Histogram: give sequence or np_histogram")
        else:
            if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
                raise ValueError(f"runstream.Histogram: num_bins must be a positive int, not {num_bins!r}")
            values = as_array(sequence, "Histogram").ravel()
            try:
                counts, edges = np.histogram(values, bins=num_bins)
            except ValueError:  # NaN or an infinity made the range not finite: count the rest
                counts, edges = np.histogram(values[np.isfinite(values)], bins=num_bins)
        if len(counts) > MAX_BINS:
            raise ValueError(
                f"runstream.Histogram: {len(counts)} bins; the maximum length of a histogram is {MAX_BINS}"
            )
        self.histogram: list[Any] = counts.tolist()
        self.bins: list[float] = edges.astype(np.float64).tolist()

    def to_json(self) -> dict[str, Any]:
        """W&B's value: ``{"_type": "histogram", "values": counts, "bins": edges}``."""
        return {"_type": "histogram", "values": self.histogram, "bins": self.bins}

    def __repr__(self) -> str:
        return f"<runstream.Histogram {len(self.histogram)} bins>"


def array_value(arr: Any) -> Any:
    """What ``log`` stores for an array or tensor, as W&B does: one element as a number, up to 32
    as a (nested) list, more as a 32-bin histogram of all its values."""
    a = as_array(arr, "log")
    if a.size == 1:
        return a.reshape(()).item()
    if a.size <= 32:
        return a.tolist()
    return Histogram(a, num_bins=32).to_json()
