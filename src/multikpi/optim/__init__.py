"""Optimizers: per-subnet parameter groups, optimizers and learning-rate schedules."""
from multikpi.optim.build import OPTIMIZERS, OptimizerSet, build_optimizers
from multikpi.optim.param_groups import ParamGroup, build_param_groups

__all__ = ["OPTIMIZERS", "OptimizerSet", "ParamGroup", "build_optimizers", "build_param_groups"]
