"""Serving: the run directory and the Predictor."""
from multikpi.serve.predictor import Predictor

__all__ = ["Predictor"]
