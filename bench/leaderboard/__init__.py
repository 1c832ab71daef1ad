"""Leaderboard tables (Markdown, CSV, HTML) and plots from finished cell records: records read and
checked (cells.py), seeds folded into rows (seeds.py), the table model (rows.py, table.py), paired
marks and differences (compare.py), baselines and sizing (sizing.py), its files (text.py,
render.py, csv_table.py), the plots (plots.py) and the command line (__main__.py,
`python -m bench.leaderboard`)."""

from bench.leaderboard.cells import COST, UnusableRecord, check_record, direction, read_cells, to_cell
from bench.leaderboard.rows import Block, Suite
from bench.leaderboard.table import build, label_cells

__all__ = ["COST", "Block", "Suite", "UnusableRecord", "build", "check_record", "direction", "label_cells",
           "read_cells", "to_cell"]
