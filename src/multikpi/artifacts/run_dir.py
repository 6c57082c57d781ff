"""The run directory: what `train` writes and `evaluate`, `predict`, `rank` and the server read.

    config.yaml         the resolved config
    model.safetensors   model weights (safetensors: no pickled objects)
    loss.safetensors    the combiner's learned state (e.g. uncertainty log-variances)
    encoders/           encoders.json + one Parquet vocabulary per categorical column
    serving.json        prediction-time settings: batch size, precision, calibration, ids, score, top_k
    metrics.json        RunMetrics: splits, loss weights, timing, calibration report, gate usage
    history.jsonl       one line per training step: raw per-task losses, effective weights, lrs
    train_log.jsonl     one line per epoch
    calibration.json    with a valid split: isotonic thresholds and Platt a, b per binary task
    manifest.json       package version and the sha256 of every file above; written last

Every file is written to a temporary name and renamed into place; the manifest is written last,
so a run without one did not finish. Loading verifies every checksum.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from multikpi.artifacts.files import write_atomic, write_json, write_jsonl, write_yaml
from multikpi.artifacts.manifest import MANIFEST, model_version, verify_run, write_manifest
from multikpi.artifacts.metrics import RunMetrics
from multikpi.artifacts.serving import SERVING, ServingSettings
from multikpi.config.load import config_from_dict
from multikpi.config.schema import RunConfig
from multikpi.data.encoders import FeatureEncoder
from multikpi.errors import ArtifactError
from multikpi.models.build import build_model
from multikpi.models.multitask import MultiTaskModel

CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
CALIBRATION = "calibration.json"


@dataclass(frozen=True)
class RunArtifacts:
    """Everything training produced that is saved besides the config."""

    encoder: FeatureEncoder
    model: nn.Module
    combiner: nn.Module
    metrics: RunMetrics
    history: list[dict[str, Any]]
    epochs_log: list[dict[str, Any]]
    serving: ServingSettings
    calibration: dict[str, Any] | None = None  # the calibration.json payload, when fitted


@dataclass(frozen=True)
class LoadedRun:
    """A finished run read back: the config, encoders, model (eval mode, on the CPU), serving
    settings, the calibration payload (None when not fitted) and the model version."""

    run_dir: Path
    config: RunConfig
    encoder: FeatureEncoder
    model: MultiTaskModel
    serving: ServingSettings
    calibration: dict[str, Any] | None
    version: str


def serving_settings(config: RunConfig) -> ServingSettings:
    """The serving settings a run of `config` gets."""
    return ServingSettings(batch_size=config.train.eval_batch_size, precision=config.train.precision,
                           calibration=config.decide.calibration, id_columns=tuple(config.data.id_columns),
                           score=config.decide.score, top_k=config.decide.top_k)


def start_run_dir(run_dir: Path, config: RunConfig) -> None:
    """Create the run directory for a fresh run: clear what an earlier run left (its manifest marks
    it complete, its checkpoint would be resumed) and write the resolved config, so that a crashed
    run can be resumed with `--resume`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST, CHECKPOINT):
        (run_dir / stale).unlink(missing_ok=True)
    write_yaml(run_dir / CONFIG, config.model_dump(mode="json"))


def save_run(run_dir: Path, config: RunConfig, artifacts: RunArtifacts) -> str:
    """Write every artifact atomically, then the manifest with their checksums. Returns the model
    version (the manifest's sha256)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MANIFEST).unlink(missing_ok=True)  # the run is incomplete until it is rewritten
    files = []
    for name, data in artifacts.encoder.files().items():
        write_atomic(run_dir / "encoders" / name, data)
        files.append(run_dir / "encoders" / name)
    write_yaml(run_dir / CONFIG, config.model_dump(mode="json"))
    _save_tensors(run_dir / "model.safetensors", artifacts.model.state_dict())
    _save_tensors(run_dir / "loss.safetensors", artifacts.combiner.state_dict())
    artifacts.serving.save(run_dir / SERVING)
    artifacts.metrics.save(run_dir / "metrics.json")
    write_jsonl(run_dir / "history.jsonl", artifacts.history)
    write_jsonl(run_dir / "train_log.jsonl", artifacts.epochs_log)
    names = [CONFIG, "model.safetensors", "loss.safetensors", SERVING, "metrics.json", "history.jsonl",
             "train_log.jsonl"]
    if artifacts.calibration is not None:
        write_json(run_dir / CALIBRATION, artifacts.calibration)
        names.append(CALIBRATION)
    return write_manifest(run_dir, files + [run_dir / n for n in names])


def load_run(run_dir: str | Path) -> LoadedRun:
    """Verify the run's manifest (version, checksums), then load config, encoders, weights, serving
    settings and the calibration payload. Raises ArtifactError naming what is wrong."""
    run_dir = Path(run_dir)
    files = verify_run(run_dir)
    config = config_from_dict(yaml.safe_load((run_dir / CONFIG).read_text()), source=str(run_dir))
    encoder = FeatureEncoder.load(run_dir / "encoders")
    model = build_model(config.model, config.tasks, encoder)
    try:
        model.load_state_dict(load_file(run_dir / "model.safetensors"))
    except (SafetensorError, RuntimeError, OSError) as err:
        raise ArtifactError(f"weights in {str(run_dir)!r} cannot be loaded: {str(err).splitlines()[0]}") from None
    serving = ServingSettings.load(run_dir / SERVING) if SERVING in files else serving_settings(config)
    return LoadedRun(run_dir, config, encoder, model.eval(), serving, _calibration(run_dir, files),
                     model_version(run_dir))


def _calibration(run_dir: Path, files: dict[str, str]) -> dict[str, Any] | None:
    """The calibration payload, or None when the run has none (a file the manifest does not list
    is ignored)."""
    path = run_dir / CALIBRATION
    if CALIBRATION not in files or not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{str(path)!r} is not a valid calibration file: {err}") from None
    if not isinstance(payload, dict):
        raise ArtifactError(f"{str(path)!r} is not a valid calibration file: not a JSON object")
    return payload


def _save_tensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    write_atomic(path, save({k: v.detach().cpu().contiguous() for k, v in state.items()}))
