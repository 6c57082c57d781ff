"""Models: the fused embedding, sharing architectures, task towers and the task graph."""
from multikpi.models.build import BUILDERS, build_model
from multikpi.models.multitask import MultiTaskModel
from multikpi.models.protocols import SharingArchitecture
from multikpi.models.task_graph import Edge, TaskGraph

__all__ = ["BUILDERS", "Edge", "MultiTaskModel", "SharingArchitecture", "TaskGraph", "build_model"]
