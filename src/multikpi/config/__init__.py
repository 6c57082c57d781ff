"""Configuration: typed specs, YAML loading with overrides, cross-field validation."""
from multikpi.config.load import apply_overrides, config_from_dict, load_config
from multikpi.config.schema import (
    DataSpec,
    LossSpec,
    ModelSpec,
    OptimizerSpec,
    OptimSpec,
    RunConfig,
    TaskSpec,
    TrainSpec,
)
from multikpi.config.validate import subnet_names, validate_config

__all__ = [
    "DataSpec", "LossSpec", "ModelSpec", "OptimSpec", "OptimizerSpec", "RunConfig", "TaskSpec", "TrainSpec",
    "apply_overrides", "config_from_dict", "load_config", "subnet_names", "validate_config",
]
