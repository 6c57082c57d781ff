"""Deciding on several KPIs: one fused score per row from calibrated estimates, ranking within
groups, offline ranking metrics, and a search for the formula's weights (docs/deciding.md)."""
from multikpi.decide.ranking import Ranking, rank_groups, ranking_metrics

__all__ = ["Ranking", "rank_groups", "ranking_metrics"]
