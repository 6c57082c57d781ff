"""Training: the recipe (`train`), the training module and its step, checkpoints, the Run."""
from multikpi.training.module import MultiTaskTraining, StepOutput, build_training
from multikpi.training.recipe import train
from multikpi.training.run import Run
from multikpi.training.step import train_step

__all__ = ["MultiTaskTraining", "Run", "StepOutput", "build_training", "train", "train_step"]
