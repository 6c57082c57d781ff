"""Evaluation: per-task metrics (as mergeable accumulators) and calibration of binary probabilities."""
from multikpi.eval.accumulators import BinaryAccumulator, RegressionAccumulator
from multikpi.eval.evaluate import SplitMetrics, estimates, evaluate_split, model_outputs, task_metrics
from multikpi.eval.metrics import binary_metrics, regression_metrics

__all__ = ["BinaryAccumulator", "RegressionAccumulator", "SplitMetrics", "binary_metrics", "estimates",
           "evaluate_split", "model_outputs", "regression_metrics", "task_metrics"]
