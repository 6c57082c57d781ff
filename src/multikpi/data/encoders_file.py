"""The schema of encoders.json: a run's encoders are read as data and checked as such, so that a
tampered or truncated file is one clear error instead of a traceback or silent wrong estimates."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from multikpi.errors import ArtifactError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DenseStatsFile(_Strict):
    mean: float
    std: float = Field(gt=0)
    log1p: bool
    indicator: bool
    bin_edges: list[float] | None = None

    @field_validator("bin_edges")
    @classmethod
    def _increasing(cls, edges: list[float] | None) -> list[float] | None:
        if edges is not None and any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError("bin edges must be strictly increasing")
        return edges


class LabelStatsFile(_Strict):
    kind: Literal["binary", "regression"]
    label: str
    transform: Literal["none", "log1p"]
    mean: float
    std: float = Field(gt=0)
    train_on: str | None
    loss: Literal["mse", "poisson", "tweedie"] = "mse"
    tweedie_power: float = Field(1.5, gt=1.0, lt=2.0)
    smearing: float = Field(1.0, gt=0)
    clip: tuple[float, float] | None = None


class EncodersFile(_Strict):
    categorical: list[str]
    dense: dict[str, DenseStatsFile]
    labels: dict[str, LabelStatsFile] = Field(min_length=1)
    column_stats: dict[str, dict[str, float]] = Field(default_factory=dict)
    weight: str | None = None
    hash_buckets: dict[str, int] = Field(default_factory=dict)  # column -> B > 0: its tail is hashed into B rows
    position: str | None = None


def parse_encoders_file(payload: Any, source: str) -> EncodersFile:
    """Validate the parsed JSON of encoders.json; ArtifactError naming the first problem."""
    try:
        parsed = EncodersFile.model_validate(payload)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ArtifactError(f"{source} is not a valid encoders file: `{where}`: {first['msg']}") from None
    duplicates = sorted({c for c in parsed.categorical if parsed.categorical.count(c) > 1})
    if duplicates:
        raise ArtifactError(f"{source} is not a valid encoders file: categorical columns {duplicates} appear twice")
    bad = sorted(c for c, b in parsed.hash_buckets.items() if c not in parsed.categorical or not 0 < b <= 1 << 26)
    if bad:
        raise ArtifactError(f"{source} is not a valid encoders file: `hash_buckets` of {bad} must name categorical "
                            f"columns with 1 to {1 << 26} buckets")
    return parsed
