"""Models: the fused embedding, sharing architectures, task towers and the task graph."""
from multikpi.models.build import ARCHITECTURES, build_model
from multikpi.models.multitask import MultiTaskModel
from multikpi.models.task_graph import TaskGraph

__all__ = ["ARCHITECTURES", "MultiTaskModel", "TaskGraph", "build_model"]
