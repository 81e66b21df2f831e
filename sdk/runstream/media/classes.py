"""W&B's two small media helpers: ``Classes`` (a class-id set) and ``box3d`` (a 3-D box).

``Classes`` is what W&B uses to name the class ids of image masks and boxes in tables and
artifacts; its JSON is ``{"_type": "classes", "class_set": [{"id": ..., "name": ...}, ...]}``.
``box3d`` builds one box of an ``Object3D.from_point_cloud`` scene: W&B's ``Box3D`` dict
``{"corners": 8 x (x, y, z), "color": (r, g, b), "label": str | None, "score": float | None}``,
which runstream's ``Object3D`` scenes store as they are (docs/media.md).

No numpy at import: ``box3d`` imports it when called.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any


class Classes:
    """A set of class ids and their names (W&B's ``wandb.Classes``).

    Args:
        class_set: A sequence of ``{"id": int | str, "name": str}`` dicts.

    Raises:
        TypeError: ``class_set`` is not a sequence of mappings.
        ValueError: An entry lacks ``"id"`` or ``"name"``.
    """

    _log_type = "classes"

    def __init__(self, class_set: Sequence[Mapping[str, Any]]) -> None:
        if isinstance(class_set, (str, bytes)) or not isinstance(class_set, Sequence):
            raise TypeError(
                f"runstream.Classes: class_set must be a list of dicts, not {type(class_set).__name__}"
            )
        checked = []
        for i, entry in enumerate(class_set):
            if not isinstance(entry, Mapping):
                raise TypeError(f"runstream.Classes: class_set[{i}] is a {type(entry).__name__}, not a dict")
            if "id" not in entry or "name" not in entry:
                raise ValueError(
                    f"runstream.Classes: class_set[{i}] needs both 'id' and 'name', got {dict(entry)!r}"
                )
            checked.append(dict(entry))
        self._class_set = checked

    @property
    def class_set(self) -> list[dict[str, Any]]:
        """The entries, as given (copies)."""
        return [dict(e) for e in self._class_set]

    def to_json(self, run_or_artifact: Any = None) -> dict[str, Any]:
        """W&B's JSON: ``{"_type": "classes", "class_set": [...]}``."""
        return {"_type": self._log_type, "class_set": self.class_set}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Classes) and self._class_set == other._class_set

    def __hash__(self) -> int:
        return hash(tuple(sorted((str(e["id"]), str(e["name"])) for e in self._class_set)))

    def __repr__(self) -> str:
        return f"Classes({self._class_set!r})"


def box3d(
    *,
    center: Any,
    size: Any,
    orientation: Any,
    color: Sequence[float],
    label: str | None = None,
    score: float | None = None,
) -> dict[str, Any]:
    """A 3-D box for ``Object3D.from_point_cloud(boxes=[...])`` (W&B's ``wandb.box3d``).

    Args:
        center: The box's centre, 3 numbers.
        size: Its extent along its own x, y and z axes, 3 numbers.
        orientation: The rotation from world to box axes as a quaternion ``[r, x, y, z]``
            (not necessarily normalised, not zero).
        color: ``(r, g, b)``, each between 0 and 1.
        label: Shown with the box.
        score: A confidence shown with the box.

    Returns:
        ``{"corners": 8 (x, y, z) tuples, "color", "label", "score"}``: the corners are the unit
        cube's ``(+-1, +-1, +-1)`` in ``itertools.product`` order, scaled by ``size / 2``,
        rotated and moved to ``center``, as W&B computes them.

    Raises:
        ValueError: A shape other than 3, 3 and 4 numbers, or a zero quaternion.
    """
    import numpy as np

    c = np.asarray(center, dtype=np.float64)
    s = np.asarray(size, dtype=np.float64)
    q = np.asarray(orientation, dtype=np.float64)
    if c.shape != (3,) or s.shape != (3,) or q.shape != (4,):
        raise ValueError(
            f"runstream.box3d: center and size need 3 numbers and orientation 4, got shapes "
            f"{c.shape}, {s.shape}, {q.shape}"
        )
    norm = math.sqrt(float(q @ q))
    if norm == 0:
        raise ValueError("runstream.box3d: orientation is the zero quaternion")
    r, i, j, k = q / norm
    # Row-vector convention (points @ rot), the same matrix W&B uses.
    rot = np.array(
        (
            (1 - 2 * (j * j + k * k), 2 * (i * j + k * r), 2 * (i * k - j * r)),
            (2 * (i * j - k * r), 1 - 2 * (i * i + k * k), 2 * (j * k + i * r)),
            (2 * (i * k + j * r), 2 * (j * k - i * r), 1 - 2 * (i * i + j * j)),
        )
    )
    unit = np.array(list(itertools.product((-1, 1), (-1, 1), (-1, 1))), dtype=np.float64)
    corners = c + (0.5 * s * unit) @ rot
    return {
        "corners": tuple(tuple(float(v) for v in pt) for pt in corners),
        "color": tuple(float(v) for v in color),
        "label": label,
        "score": score,
    }
