"""``runstream.Table``: rows of columns, cells of numbers, strings or media.

The table travels as one MEDIA record (its rows msgpack'd, media cells as their own MEDIA records
before it) and the sidecar writes W&B's ``{"columns", "data"}`` JSON file (docs/media.md, "Table").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from runstream.media.base import Media

MAX_ROWS = 10_000  # rows kept when a table is logged to a run (W&B's limit); more are cut, counted


class Table(Media):
    """A table to log: ``run.log({"preds": runstream.Table(columns=["x", "y"], data=rows)})``.

    Args:
        columns: Column names (``["Input", "Output", "Expected"]`` by default, as W&B).
        data: Rows: a list of lists, or a 2-D numpy array.
        rows: An alias of ``data`` (W&B's older name).
        dataframe: A pandas DataFrame: its columns and rows (``columns`` is then ignored).
        allow_mixed_types: Accepted for W&B compatibility; cells are never type-checked.

    Raises:
        ValueError: A row whose length is not the number of columns.
        TypeError: ``data`` that is not rows.

    Cells may be int, float, bool, str, None, numpy scalars, lists, dicts, or media objects
    (``Image``, ``Audio``...), which are written as files and referenced by their pointer.
    """

    _log_type = "table-file"

    def __init__(
        self,
        columns: Sequence[str] | None = None,
        data: Any = None,
        rows: Any = None,
        dataframe: Any = None,
        dtype: Any = None,
        optional: Any = True,
        allow_mixed_types: bool = False,
        log_mode: str | None = None,
    ) -> None:
        data = rows if data is None else data
        if dataframe is not None:
            columns = [str(c) for c in dataframe.columns]
            data = [[_cell(v) for v in row] for row in dataframe.itertuples(index=False, name=None)]
        self.columns: list[str] = [
            str(c) for c in (columns if columns is not None else ["Input", "Output", "Expected"])
        ]
        self.data: list[list[Any]] = []
        self.log_mode = log_mode or "IMMUTABLE"
        if data is not None:
            if isinstance(data, np.ndarray):
                if data.ndim != 2:
                    raise TypeError(
                        f"runstream.Table: data must be 2-D rows, not an array of shape {data.shape}"
                    )
                data = data.tolist()
            if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
                raise TypeError(f"runstream.Table: data must be a list of rows, not {type(data).__name__}")
            for row in data:
                self.add_data(*row)

    def add_data(self, *data: Any) -> None:
        """Append one row: ``table.add_data(1, "cat", runstream.Image(img))``.

        Raises:
            ValueError: The row does not have one value per column.
        """
        if len(data) != len(self.columns):
            raise ValueError(
                f"runstream.Table.add_data: {len(data)} values for {len(self.columns)} columns {self.columns}"
            )
        self.data.append([_cell(v) for v in data])

    def add_column(self, name: str, data: Sequence[Any], optional: bool = False) -> None:
        """Add a column: ``name`` must be new and ``data`` have one value per row."""
        if not isinstance(name, str):
            raise TypeError(f"runstream.Table.add_column: the name must be a str, not {type(name).__name__}")
        if name in self.columns:
            raise ValueError(f"runstream.Table.add_column: column {name!r} exists already")
        values = list(data.tolist() if isinstance(data, np.ndarray) else data)
        if self.data and len(values) != len(self.data):
            raise ValueError(
                f"runstream.Table.add_column: {len(values)} values for a table of {len(self.data)} rows"
            )
        if not self.data:
            self.data = [[] for _ in values]
        self.columns.append(name)
        for row, v in zip(self.data, values, strict=True):
            row.append(_cell(v))

    def get_column(self, name: str, convert_to: str | None = None) -> Any:
        """The values of column ``name``, a list (or a numpy array with ``convert_to="numpy"``)."""
        if name not in self.columns:
            raise KeyError(f"runstream.Table: no column {name!r}; the columns are {self.columns}")
        i = self.columns.index(name)
        values = [row[i] for row in self.data]
        return np.array(values) if convert_to == "numpy" else values

    def get_index(self) -> list[int]:
        """The row numbers, 0 to len - 1."""
        return list(range(len(self.data)))

    def get_dataframe(self) -> Any:
        """The table as a pandas DataFrame (pandas must be installed)."""
        import pandas as pd  # type: ignore[import-untyped, unused-ignore]

        return pd.DataFrame(self.data, columns=self.columns)

    def add_computed_columns(self, fn: Any) -> None:
        """W&B's ``add_computed_columns``: ``fn(ndx, row)`` returns a dict of new columns."""
        new: dict[str, list[Any]] = {}
        for i, row in enumerate(self.data):
            for k, v in fn(i, dict(zip(self.columns, row, strict=True))).items():
                new.setdefault(k, []).append(v)
        for k, vals in new.items():
            self.add_column(k, vals)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"<runstream.Table {len(self.data)} rows x {len(self.columns)} columns>"

    def _meta(self) -> tuple[dict[str, Any], list[Any]]:
        raise NotImplementedError("tables are packed by runstream.media.pack, which handles their cells")


def _cell(v: Any) -> Any:
    """A cell as it will be packed: numpy scalars and tensors as numbers or lists."""
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if type(v).__module__.startswith("torch") and hasattr(v, "tolist"):
        return v.detach().cpu().tolist()
    return v
