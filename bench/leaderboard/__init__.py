"""Leaderboard tables (Markdown, CSV, HTML) and plots from finished cell records: the table model
(table.py), its files (render.py), the plots (plots.py) and the command line (__main__.py,
`python -m bench.leaderboard`)."""

from bench.leaderboard.table import (
    COST,
    Block,
    Suite,
    UnusableRecord,
    build,
    check_record,
    direction,
    label_cells,
    read_cells,
    to_cell,
)

__all__ = ["COST", "Block", "Suite", "UnusableRecord", "build", "check_record", "direction", "label_cells",
           "read_cells", "to_cell"]
