"""serving.json: how a run is used at prediction time, fixed when it is trained, so that training
and serving cannot drift apart. `Predictor` and the server read it; nothing is re-specified."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from multikpi.artifacts.files import write_json
from multikpi.errors import ArtifactError

SERVING = "serving.json"


@dataclass(frozen=True)
class ServingSettings:
    """batch_size: rows per forward pass; precision: auto | fp32 | bf16; calibration: auto | none |
    isotonic | platt (of binary probabilities); id_columns: passed through by predict and rank;
    score / top_k: the fusion formula and cut-off of `rank`; device: where the model runs."""

    batch_size: int
    precision: str
    calibration: str
    id_columns: tuple[str, ...]
    score: str | None
    top_k: int
    device: str = "cpu"

    def save(self, path: Path) -> None:
        write_json(path, {**asdict(self), "id_columns": list(self.id_columns)})

    @classmethod
    def load(cls, path: Path) -> ServingSettings:
        try:
            payload: dict[str, Any] = json.loads(path.read_text())
            return cls(batch_size=int(payload["batch_size"]), precision=str(payload["precision"]),
                       calibration=str(payload["calibration"]), id_columns=tuple(payload["id_columns"]),
                       score=payload["score"], top_k=int(payload["top_k"]), device=str(payload["device"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ArtifactError(f"{str(path)!r} is not a valid serving file: {err}") from None
