"""``CustomChart``: a table with the chart W&B's ``plot.*`` helpers name (docs/media.md, "Charts").

Logged under ``key``, it becomes the table at ``key + "_table"`` and the chart's spec in the run's
config at ``_wandb.visualize.<key>``, as W&B stores it; the dashboard draws it from the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runstream.media.table import Table


@dataclass
class CustomChart:
    """What ``runstream.plot.line`` (and the other helpers) return; log it like any value.

    Attributes:
        table: The data.
        panel_def_id: W&B's chart id (``"wandb/line/v0"``...).
        fields: Which column plays which part (``{"x": "epoch", "y": "loss"}``).
        strings: Titles and axis names.
    """

    table: Table
    panel_def_id: str
    fields: dict[str, Any]
    strings: dict[str, Any] = field(default_factory=dict)
    split_table: bool = False

    def spec(self, table_key: str) -> dict[str, Any]:
        """W&B's ``_wandb.visualize`` entry for this chart, its table logged at ``table_key``."""
        return {
            "panel_type": "Vega2",
            "panel_config": {
                "panelDefId": self.panel_def_id,
                "fieldSettings": dict(self.fields),
                "stringSettings": dict(self.strings),
                "transform": {"name": "tableWithLeafColNames"},
                "userQuery": {
                    "queryFields": [
                        {
                            "name": "runSets",
                            "args": [{"name": "runSets", "value": "${runSets}"}],
                            "fields": [
                                {"name": "id", "fields": []},
                                {"name": "name", "fields": []},
                                {"name": "_defaultColorIndex", "fields": []},
                                {
                                    "name": "summaryTable",
                                    "args": [{"name": "tableKey", "value": table_key}],
                                    "fields": [],
                                },
                            ],
                        }
                    ]
                },
            },
        }

    def table_key(self, key: str) -> str:
        return f"Custom Chart Tables/{key}_table" if self.split_table else f"{key}_table"
