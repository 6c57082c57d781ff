"""Crash-safe checkpoints and exact resume.

A checkpoint holds everything the loop needs to continue as if it had never stopped: model,
combiner, optimizers and schedulers, the global torch RNG state, the number of batches already done
in the current epoch (the batch source's order is a function of the seed and the epoch alone), the
step counter, the partial epoch loss sums, and the history so far. It is written with torch.save to a temporary
file, fsync'ed and renamed over `checkpoint.pt`, so a crash at any moment leaves the previous
checkpoint intact; it is read back with `torch.load(weights_only=True)` (no arbitrary pickles).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from multikpi.artifacts.files import write_atomic_with
from multikpi.artifacts.run_dir import CHECKPOINT
from multikpi.data.datasets import ParquetDataset, is_single_local_file
from multikpi.errors import ArtifactError
from multikpi.optim.build import OptimizerSet

FORMAT = 2


@dataclass
class LoopState:
    """Where the loop is. `epoch` is 1-based; `batches_done` counts batches of that epoch."""

    epoch: int = 1
    batches_done: int = 0
    step: int = 0
    epoch_loss_sums: dict[str, list[float]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_log: list[dict[str, Any]] = field(default_factory=list)
    selection: dict[str, Any] | None = None  # training.selection.Selection.state_dict()
    done: bool = False  # the loop finished (or stopped early); what is left is the final phase
    data_fingerprint: dict[str, Any] = field(default_factory=dict)  # data_fingerprint() of the input files


def save_checkpoint(run_dir: Path, state: LoopState, model: nn.Module, combiner: nn.Module,
                    optimizers: OptimizerSet, rng_by_rank: list[torch.Tensor] | None = None) -> None:
    """Atomically write run_dir/checkpoint.pt (temporary file, fsync, rename). A distributed run
    (rank 0) also stores every rank's torch RNG state, `rng_by_rank`, and so its number of processes."""
    payload = {
        "format": FORMAT,
        "model": model.state_dict(),
        "combiner": combiner.state_dict(),
        "optimizers": optimizers.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "epoch": state.epoch,
        "batches_done": state.batches_done,
        "step": state.step,
        "epoch_loss_sums": state.epoch_loss_sums,
        "history": state.history,
        "epochs_log": state.epochs_log,
        "selection": state.selection,
        "done": state.done,
        "data_fingerprint": state.data_fingerprint,
    }
    if rng_by_rank is not None:
        payload.update(torch_rng_by_rank=rng_by_rank, world_size=len(rng_by_rank))
    write_atomic_with(run_dir / CHECKPOINT, lambda handle: torch.save(payload, handle))


# The payload's keys and the types their values must have (a checkpoint is data, checked as such).
_PAYLOAD: dict[str, type | tuple[type, ...]] = {
            "format": int, "model": dict, "combiner": dict, "optimizers": dict, "torch_rng": torch.Tensor,
            "epoch": int, "batches_done": int, "step": int, "epoch_loss_sums": dict, "history": list,
            "epochs_log": list, "selection": (dict, type(None)), "done": bool, "data_fingerprint": dict}


def read_checkpoint_bytes(run_dir: Path) -> bytes:
    """The bytes of run_dir/checkpoint.pt (rank 0 reads them and sends them to the other ranks)."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise ArtifactError(f"cannot resume: {str(path)!r} does not exist (no checkpoint was written yet)")
    return path.read_bytes()


def load_checkpoint(run_dir: Path, model: nn.Module, combiner: nn.Module, optimizers: OptimizerSet,
                    data: bytes | None = None, rank: int = 0, world_size: int = 1) -> LoopState:
    """Restore model, combiner, optimizers and the torch RNG from run_dir/checkpoint.pt (or its
    bytes `data`); return the loop position. A distributed run restores rank `rank`'s RNG state
    and must have the checkpoint's number of processes. Raises ArtifactError when there is no
    readable, valid checkpoint."""
    path = run_dir / CHECKPOINT
    if data is None:
        data = read_checkpoint_bytes(run_dir)
    try:
        payload = torch.load(io.BytesIO(data), weights_only=True)
    except pickle.UnpicklingError:
        raise ArtifactError(f"{str(path)!r} is not a valid multikpi checkpoint: it holds objects other than "
                            f"tensors, numbers and strings, which are never loaded") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ArtifactError(f"checkpoint {str(path)!r} cannot be read: {_first_line(err)}") from None
    _check_payload(payload, path)
    stored_world = payload.get("world_size", 1)
    if stored_world != world_size:
        raise ArtifactError(f"cannot resume {str(run_dir)!r}: it was trained on {stored_world} process(es) and is "
                            f"resumed on {world_size}; resume it with the same number (torchrun --nproc-per-node)")
    try:
        model.load_state_dict(payload["model"])
        combiner.load_state_dict(payload["combiner"])
        optimizers.load_state_dict(payload["optimizers"])
        rng = payload["torch_rng_by_rank"][rank] if "torch_rng_by_rank" in payload else payload["torch_rng"]
        torch.set_rng_state(rng)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise ArtifactError(f"checkpoint {str(path)!r} does not fit this model: {_first_line(err)}") from None
    return LoopState(
        epoch=payload["epoch"], batches_done=payload["batches_done"], step=payload["step"],
        epoch_loss_sums=payload["epoch_loss_sums"], history=payload["history"], epochs_log=payload["epochs_log"],
        selection=payload["selection"], done=payload["done"], data_fingerprint=payload["data_fingerprint"],
    )


def _check_payload(payload: Any, path: Path) -> None:
    if not isinstance(payload, dict):
        raise ArtifactError(f"{str(path)!r} is not a valid multikpi checkpoint: not a mapping")
    if payload.get("format") != FORMAT:
        raise ArtifactError(f"checkpoint {str(path)!r} has format {payload.get('format')!r}; expected {FORMAT}")
    bad = [key for key, kind in _PAYLOAD.items() if not isinstance(payload.get(key), kind)]
    if bad or any(payload[k] < 0 for k in ("batches_done", "step")) or payload["epoch"] < 1:
        raise ArtifactError(f"{str(path)!r} is not a valid multikpi checkpoint: missing or malformed "
                            f"{bad or ['epoch/step counters']}")


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def data_fingerprint(paths: dict[str, str | None]) -> dict[str, Any]:
    """split -> {path, size, mtime_ns, sha256 of the first and last MiB} of each input file: what
    `--resume` compares, so that a run never continues on data that changed under it."""
    out: dict[str, Any] = {}
    for split, name in paths.items():
        if name is not None and not is_single_local_file(name):
            out[split] = ParquetDataset(name, []).fingerprint()  # a directory, a glob or a URI
            continue
        if name is None or not Path(name).is_file():
            continue
        path = Path(name)
        stat = path.stat()
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            if stat.st_size > 2 << 20:
                handle.seek(-(1 << 20), os.SEEK_END)
            digest.update(handle.read(1 << 20))
        out[split] = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                      "sha256_ends": digest.hexdigest()}
    return out


FINGERPRINT = "data_fingerprint.json"  # written when a run starts, next to config.yaml


def stored_fingerprint(run_dir: Path) -> dict[str, Any]:
    """The fingerprint written when the run started ({} when there is none)."""
    try:
        payload = json.loads((run_dir / FINGERPRINT).read_text())
    except (OSError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


def check_same_data(stored: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    """ArtifactError when a data file differs from the one the interrupted run was trained on."""
    for split in sorted(set(stored) | set(current)):
        before, now = stored.get(split), current.get(split)
        if before != now:
            what = "is gone" if now is None else "was added" if before is None else "changed since the run started"
            name = (now or before or {}).get("path")
            raise ArtifactError(f"cannot resume {str(run_dir)!r}: the {split} file {name!r} {what} (size, modification "
                                f"time or contents differ); resuming would continue on other data. Start a new run")


def check_resumable(run_dir: Path, resolved: dict[str, Any]) -> None:
    """The run to resume must have been started with the same resolved config (`model_dump(mode="json")`),
    apart from `out_dir`."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ArtifactError(f"cannot resume: {str(run_dir)!r} has no config.yaml (was a run started there?)")
    stored = yaml.safe_load(path.read_text())
    current = resolved
    differing = sorted(k for k in set(stored) | set(current) if k != "out_dir" and stored.get(k) != current.get(k))
    if differing:
        raise ArtifactError(f"cannot resume {str(run_dir)!r}: the config differs from the stored one in "
                            f"section(s) {differing}")


def remove_checkpoint(run_dir: Path) -> None:
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
