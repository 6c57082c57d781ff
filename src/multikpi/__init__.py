"""multikpi: learn several feed KPIs with one multi-task network, and rank on them."""
__version__ = "0.1.0"

from multikpi.api import evaluate, load_config, predict, rank, train  # noqa: E402
from multikpi.errors import ArtifactError, ConfigError, DataError, MultiKPIError, TrainingError  # noqa: E402
from multikpi.serve.predictor import Predictor  # noqa: E402
from multikpi.train.run import Run  # noqa: E402

__all__ = ["ArtifactError", "ConfigError", "DataError", "MultiKPIError", "Predictor", "Run", "TrainingError",
           "__version__", "evaluate", "load_config", "predict", "rank", "train"]
