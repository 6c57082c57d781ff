"""Reports: tables and figures of runs, comparisons and decisions."""
from multikpi.report.tables import format_value, render_table

__all__ = ["format_value", "render_table"]
