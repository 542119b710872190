"""Tables and figures built only from run folders (metrics.json, history.csv, traces, model.pt).

Nothing here touches live training objects, so every table and figure can be rebuilt from
``results/runs`` without retraining.
"""

import importlib
from typing import Any

# Imported on first use, so a table job never loads matplotlib and nothing here loads torch
# unless weights are read: each workflow job is a fresh process.
_LAZY = {
    "FIGURES": "figures",
    "NothingToPlotError": "figures",
    "plot_figure": "figures",
    "collect_runs": "runs",
    "select_runs": "runs",
    "aggregate": "tables",
    "write_replication": "tables",
    "write_table": "tables",
    "write_tables": "tables",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FIGURES",
    "NothingToPlotError",
    "aggregate",
    "collect_runs",
    "plot_figure",
    "select_runs",
    "write_replication",
    "write_table",
    "write_tables",
]
