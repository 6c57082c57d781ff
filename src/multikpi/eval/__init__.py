"""Evaluation: per-task metrics on labelled rows."""
from multikpi.eval.evaluate import estimates, model_outputs, task_metrics
from multikpi.eval.metrics import binary_metrics, regression_metrics

__all__ = ["binary_metrics", "estimates", "model_outputs", "regression_metrics", "task_metrics"]
