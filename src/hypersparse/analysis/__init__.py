"""Tables and figures built only from run folders (metrics.json, history.csv, traces, model.pt).

Nothing here touches live training objects, so every table and figure can be rebuilt from
``results/runs`` without retraining.
"""

from hypersparse.analysis.figures import FIGURES, NothingToPlotError, plot_figure
from hypersparse.analysis.runs import collect_runs, select_runs
from hypersparse.analysis.tables import (
    aggregate,
    write_replication,
    write_table,
    write_tables,
)

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
