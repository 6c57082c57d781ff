"""Training: the recipe (`train`) and the Run it returns."""
from multikpi.train.loop import train
from multikpi.train.run import Run

__all__ = ["Run", "train"]
