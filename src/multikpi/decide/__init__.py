"""Deciding on several KPIs: calibrated estimates, a safe fusion formula, ranking within groups,
offline ranking metrics, and a search for the formula's weights (docs/deciding.md).

Only the dependency-free modules are imported here (the config validation imports the formula
parser); import `multikpi.decide.calibration`, `.score`, `.tune` and `.report` directly."""
from multikpi.decide.formula import Formula, FormulaError, parse_formula
from multikpi.decide.ranking import Ranking, rank_groups, ranking_metrics

__all__ = ["Formula", "FormulaError", "Ranking", "parse_formula", "rank_groups", "ranking_metrics"]
