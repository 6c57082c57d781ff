"""The training recipe: read it top to bottom.

    data -> encoders (fit on train only) -> training module (model, per-task losses, combiner)
    -> optimizers -> the loop (train_step: forward, losses, combine, backward, clip, step; log)
    -> metrics and calibration -> run directory

Only this module and the `build_*` functions read the RunConfig; every component below takes flat
arguments.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from multikpi.artifacts.metrics import RunMetrics
from multikpi.artifacts.run_dir import RunArtifacts, save_run, serving_settings, start_run_dir
from multikpi.config.schema import RunConfig
from multikpi.data.batches import evenly_spaced_rows
from multikpi.data.encoders import EncodedData, FeatureEncoder
from multikpi.data.sources import BatchSource, InMemorySource
from multikpi.eval.calibration import calibrate_run
from multikpi.eval.diagnostics import data_summary, label_coverage, regression_bins
from multikpi.eval.evaluate import evaluate_split
from multikpi.models.precision import resolve_device, resolve_precision
from multikpi.optim.build import OptimizerSet, build_optimizers
from multikpi.optim.param_groups import build_param_groups
from multikpi.training.checkpoint import LoopState, check_resumable, load_checkpoint, remove_checkpoint, save_checkpoint
from multikpi.training.memory import check_memory, out_of_memory_as_error
from multikpi.training.module import MultiTaskTraining, build_training
from multikpi.training.run import Run, mean_gate_usage, step_record
from multikpi.training.scalars import TENSORBOARD_DIR, ScalarLog
from multikpi.training.setup import load_splits, seed_everything
from multikpi.training.step import train_step

logger = logging.getLogger("multikpi")


def train(config: RunConfig, out_dir: str | Path | None = None, resume: bool = False) -> Run:
    """Train the model `config` describes and write the run directory. Returns the Run.

    With `resume`, continue the run in `out_dir` from its last checkpoint, exactly where it stopped."""
    with out_of_memory_as_error(config.train.batch_size):
        return _train(config, Path(out_dir if out_dir is not None else config.out_dir), resume)


def _train(config: RunConfig, run_dir: Path, resume: bool) -> Run:
    # The whole recipe on one screen, on purpose (nanoGPT style): setup, the loop, the final
    # metrics. Everything else is a plain function it calls.
    seed_everything(config.train.seed, config.train.threads, config.train.deterministic)
    device = resolve_device(config.train.device)
    precision = resolve_precision(config.train.precision, device)
    scalars = ScalarLog(run_dir / TENSORBOARD_DIR, config.train.tensorboard, fresh=not resume)  # no-op when off
    started = time.perf_counter()
    encoder, splits = load_splits(config)
    source: BatchSource = InMemorySource(splits["train"], config.train.batch_size, config.train.seed)
    logger.info("data: %d train rows, %d vocabulary rows, %d dense inputs (%.1fs); %s, %s", source.num_rows,
                sum(encoder.vocab_sizes), encoder.num_dense_inputs, time.perf_counter() - started, device,
                "bf16 autocast" if precision is not None else "fp32")

    training = build_training(config, encoder).to(device)
    model, combiner = training.model, training.loss_combiner
    optimizers = build_optimizers(build_param_groups(config, model, training.combiner),
                                  source.steps_per_epoch * config.train.epochs)
    state = _start_or_resume(run_dir, config, resume, training, optimizers)
    check_memory(model, config.train.batch_size, source.num_rows, model.embeddings.out_dim + encoder.num_dense_inputs)
    every = config.train.checkpoint_every

    for epoch in range(state.epoch, config.train.epochs + 1):
        training.train()
        epoch_started, rows_this_session = time.perf_counter(), 0
        bar = tqdm(total=source.steps_per_epoch, initial=state.batches_done, desc=f"epoch {epoch}", unit="batch",
                   leave=False, disable=not _show_progress(config))
        for batch in source.epoch(epoch, skip=state.batches_done):
            result = train_step(training, optimizers, batch.to(device), precision, config.optim.grad_clip, state.step)
            if result is not None:  # None: no task had a label in the batch, no step was taken
                state.step += 1
                assert result.total is not None
                _record_step(state, epoch, result.losses, result.total, training, optimizers)
                scalars.log_step(state.history[-1])
            state.batches_done += 1
            rows_this_session += batch.num_rows
            bar.update(1)
            if every is not None and state.step % every == 0 and result is not None:
                save_checkpoint(run_dir, state, model, training.combiner, optimizers)
        bar.close()
        combiner.end_epoch()
        summary = _epoch_summary(epoch, time.perf_counter() - epoch_started, rows_this_session, state)
        if "valid" in splits:
            summary["valid"] = _evaluate(training, splits["valid"], encoder, config, precision)
        state.epochs_log.append(summary)
        state.epoch, state.batches_done, state.epoch_loss_sums = epoch + 1, 0, {}
        if every is not None:
            save_checkpoint(run_dir, state, model, training.combiner, optimizers)
        logger.info(_format_summary(summary))
        scalars.log_epoch(summary, state.step)
    scalars.close()

    # The train split is scored on an evenly spaced sample: a fit diagnostic, not worth the memory.
    scored = splits | {"train": evenly_spaced_rows(splits["train"], config.train.train_metrics_rows)}
    metrics = RunMetrics(splits={name: _evaluate(training, data, encoder, config, precision)
                                 for name, data in scored.items()})
    # Fitted on valid: isotonic + Platt per binary task, ECE on valid and test.
    calibration, metrics.calibration = calibrate_run(model, splits, encoder, config.train.eval_batch_size, precision)
    metrics.loss_weights = combiner.weights()
    metrics.gate_usage = mean_gate_usage(state.history, source.steps_per_epoch) or None  # mmoe/ple: last epoch
    metrics.label_coverage = label_coverage(splits, encoder)  # for the report (multikpi.eval.diagnostics)
    metrics.data_summary = data_summary(splits, encoder)
    metrics.regression_bins = regression_bins(model, splits, encoder, config.train.eval_batch_size, precision)
    metrics.timing = {"total_seconds": time.perf_counter() - started,
                      "train_examples_per_second": state.epochs_log[-1]["examples_per_second"]}
    artifacts = RunArtifacts(encoder, model, training.combiner, metrics, state.history, state.epochs_log,
                             serving_settings(config), calibration)
    version = save_run(run_dir, config, artifacts)
    remove_checkpoint(run_dir)
    training.cpu()
    return Run(run_dir, config, encoder, model, training.combiner, metrics, state.history, version, calibration)


def _start_or_resume(run_dir: Path, config: RunConfig, resume: bool, training: MultiTaskTraining,
                     optimizers: OptimizerSet) -> LoopState:
    """A fresh LoopState (writing config.yaml so the run can be resumed), or the checkpointed one."""
    if resume:
        check_resumable(run_dir, config.model_dump(mode="json"))
        state = load_checkpoint(run_dir, training.model, training.combiner, optimizers)
        logger.info("resuming %s at epoch %d, batch %d (step %d)", run_dir, state.epoch, state.batches_done,
                    state.step)
        return state
    start_run_dir(run_dir, config)
    return LoopState()


def _evaluate(training: MultiTaskTraining, data: EncodedData, encoder: FeatureEncoder, config: RunConfig,
              precision: torch.dtype | None) -> dict[str, dict[str, float]]:
    bar = tqdm(total=data.num_rows, desc="evaluate", unit="row", leave=False, disable=not _show_progress(config))
    try:
        return evaluate_split(training.model, data, encoder, config.train.eval_batch_size, precision, bar.update)
    finally:
        bar.close()


def _record_step(state: LoopState, epoch: int, losses: dict[str, torch.Tensor], total: torch.Tensor,
                 training: MultiTaskTraining, optimizers: OptimizerSet) -> None:
    record = step_record(state.step, epoch, losses, total, training.loss_combiner, optimizers,
                         training.model.shared.gate_usage())
    state.history.append(record)
    for task, value in record["losses"].items():
        sums = state.epoch_loss_sums.setdefault(task, [0.0, 0])
        sums[0] += value
        sums[1] += 1


def _show_progress(config: RunConfig) -> bool:
    if config.train.progress == "auto":
        return sys.stderr.isatty()
    return config.train.progress == "on"


def _epoch_summary(epoch: int, seconds: float, rows: int, state: LoopState) -> dict[str, Any]:
    """Mean train loss per task over the epoch; speed over the rows trained in this session."""
    mean_losses = {t: total / count for t, (total, count) in state.epoch_loss_sums.items()}
    return {"epoch": epoch, "seconds": seconds, "examples_per_second": rows / max(seconds, 1e-9),
            "train_loss": mean_losses}


def _format_summary(summary: dict[str, Any]) -> str:
    parts = [f"epoch {summary['epoch']}: {summary['seconds']:.1f}s, {summary['examples_per_second']:,.0f} ex/s"]
    parts.append("loss " + " ".join(f"{t}={v:.4f}" for t, v in summary["train_loss"].items()))
    for task, metrics in summary.get("valid", {}).items():
        key = "auc" if "auc" in metrics else sorted(k for k in metrics if k.startswith("pearson"))[-1]
        parts.append(f"valid {task} {key}={metrics[key]:.4f}")
    return " | ".join(parts)
