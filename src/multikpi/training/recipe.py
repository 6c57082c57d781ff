"""The training recipe: read it top to bottom.

    data -> encoders (fit on train only; a valid split held out when none is given)
    -> training module (model, per-task losses, combiner) -> optimizers
    -> the loop (train_step: forward, losses, combine, backward, clip, step; evaluate; keep the best)
    -> the best weights -> estimates centred on the labels -> metrics and calibration -> run directory

Only this module and the `build_*` functions read the RunConfig; every component below takes flat
arguments.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from multikpi.artifacts.files import write_json
from multikpi.artifacts.metrics import RunMetrics
from multikpi.artifacts.run_dir import RunArtifacts, save_run, serving_settings, start_run_dir
from multikpi.artifacts.workspace import RunWorkspace, open_workspace
from multikpi.config.architectures import ARCHITECTURES
from multikpi.config.schema import RunConfig
from multikpi.config.validate import parse_monitor
from multikpi.data.batches import evenly_spaced_rows
from multikpi.data.encoders import EncodedData, FeatureEncoder
from multikpi.data.sources import BatchSource, InMemorySource
from multikpi.eval.calibration import calibrate_run
from multikpi.eval.diagnostics import data_summary, label_coverage, regression_bins
from multikpi.eval.evaluate import evaluate_split
from multikpi.models.precision import resolve_device, resolve_precision
from multikpi.optim.build import OptimizerSet, build_optimizers
from multikpi.optim.param_groups import build_param_groups
from multikpi.training.centering import fit_centering
from multikpi.training.checkpoint import (
    FINGERPRINT,
    LoopState,
    check_resumable,
    check_same_data,
    data_fingerprint,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
    stored_fingerprint,
)
from multikpi.training.memory import check_memory, check_table_memory, out_of_memory_as_error
from multikpi.training.module import MultiTaskTraining, build_training
from multikpi.training.run import Run, mean_gate_usage, step_record
from multikpi.training.scalars import TENSORBOARD_DIR, ScalarLog
from multikpi.training.selection import Selection, auto_batch_size, monitor_name
from multikpi.training.setup import load_splits, seed_everything
from multikpi.training.step import train_step
from multikpi.training.warnings import run_warnings

logger = logging.getLogger("multikpi")


def train(config: RunConfig, out_dir: str | Path | None = None, resume: bool = False,
          overwrite: bool = False) -> Run:
    """Train the model `config` describes and write the run directory. Returns the Run.

    With `resume`, continue the run in `out_dir` from its last checkpoint, exactly where it stopped.
    A finished run in `out_dir` is replaced only with `overwrite`, and only once the new one is
    complete (artifacts/workspace.py)."""
    run_dir = Path(out_dir if out_dir is not None else config.out_dir)
    with out_of_memory_as_error(config.train.batch_size), open_workspace(run_dir, resume, overwrite) as workspace:
        run = _train(config, workspace, resume)
        workspace.commit()
    run.run_dir = run_dir
    return run


def _train(config: RunConfig, workspace: RunWorkspace, resume: bool) -> Run:
    # The recipe, top to bottom: setup, the loop (`_loop`), the final phase. Everything else is a
    # plain function it calls.
    run_dir = workspace.path
    fingerprint = data_fingerprint({"train": config.data.train, "valid": config.data.valid, "test": config.data.test})
    if resume:  # before reading anything: new data would not even fit the checkpointed model
        check_resumable(run_dir, config.model_dump(mode="json"))
        check_same_data(stored_fingerprint(run_dir), fingerprint, run_dir)
    seed_everything(config.train.seed, config.train.threads, config.train.deterministic)
    device = resolve_device(config.train.device)
    started = time.perf_counter()
    encoder, splits = load_splits(config)
    batch_size = _batch_size(config, splits["train"].num_rows)
    source: BatchSource = InMemorySource(splits["train"], batch_size, config.train.seed)
    logger.info("data: %d train rows, %d vocabulary rows, %d dense inputs (%.1fs); %s; batch size %d",
                source.num_rows, sum(encoder.vocab_sizes), encoder.num_dense_inputs, time.perf_counter() - started,
                device, batch_size)

    copies = len(config.tasks) if ARCHITECTURES[config.model.arch].embedding_copies_per_task else 1
    check_table_memory(sum(encoder.vocab_sizes), config.model.embedding_dim * copies)
    training = build_training(config, encoder).to(device)
    model = training.model
    check_memory(model, batch_size, source.num_rows, model.embeddings.out_dim + encoder.num_dense_inputs)
    precision = resolve_precision(config.train.precision, device, model, batch_size, "train")
    optimizers = build_optimizers(build_param_groups(config, model, training.combiner), _planned_steps(config, source),
                                  model.embeddings)
    selection = Selection(parse_monitor(config), config.train.patience) if "valid" in splits else None
    workspace.start()  # the first write: a run that failed on its inputs left nothing behind
    state = _start_or_resume(run_dir, config, resume, training, optimizers, selection, fingerprint)
    scalars = ScalarLog(run_dir / TENSORBOARD_DIR, config.train.tensorboard, fresh=not resume)  # no-op when off

    _loop(config, run_dir, state, training, optimizers, source, splits, encoder, precision, selection, scalars)
    scalars.close()

    if selection is not None and config.train.epochs == "auto":
        selection.restore({"model": model, "combiner": training.combiner})
        logger.info("kept the weights of epoch %d (step %d): %s = %.4f", selection.best_epoch, selection.best_step,
                    monitor_name(selection.monitor), selection.summary()["value"])
    # The train split is scored on an evenly spaced sample: a fit diagnostic, not worth the memory.
    scored = splits | {"train": evenly_spaced_rows(splits["train"], config.train.train_metrics_rows)}
    encoder = _center(training, encoder, scored, config, precision)
    metrics = RunMetrics(splits={name: _evaluate(training, data, encoder, config, precision)
                                 for name, data in scored.items()})
    # Fitted on valid: isotonic + Platt per binary task, ECE on valid and test.
    calibration, metrics.calibration = calibrate_run(model, splits, encoder, config.train.eval_batch_size, precision)
    _summarize(metrics, state, training, source, selection, batch_size, started, precision)
    metrics.warnings = run_warnings(config, encoder, splits, metrics, state.history)
    for warning in metrics.warnings:
        logger.warning("warning: %s", warning)
    metrics.label_coverage = label_coverage(splits, encoder)  # for the report (multikpi.eval.diagnostics)
    metrics.data_summary = data_summary(splits, encoder)
    metrics.regression_bins = regression_bins(model, splits, encoder, config.train.eval_batch_size, precision)
    artifacts = RunArtifacts(encoder, model, training.combiner, metrics, state.history, state.epochs_log,
                             serving_settings(config), calibration)
    version = save_run(run_dir, config, artifacts)
    remove_checkpoint(run_dir)
    training.cpu()
    return Run(run_dir, config, encoder, model, training.combiner, metrics, state.history, version, calibration)


def _loop(config: RunConfig, run_dir: Path, state: LoopState, training: MultiTaskTraining,
          optimizers: OptimizerSet, source: BatchSource, splits: dict[str, EncodedData], encoder: FeatureEncoder,
          precision: torch.dtype | None, selection: Selection | None, scalars: ScalarLog) -> None:
    """Epochs of train_step until the planned length, `max_steps`, or early stopping. Evaluates on
    valid every epoch (or every `eval_every` steps) and checkpoints every `checkpoint_every` steps."""
    device, every, spec = next(training.parameters()).device, config.train.checkpoint_every, config.train
    last_epoch = spec.max_epochs if spec.epochs == "auto" else spec.epochs
    for epoch in range(state.epoch, last_epoch + 1):
        if state.done:
            break
        training.train()
        epoch_started, rows_this_session = time.perf_counter(), 0
        bar = tqdm(total=source.steps_per_epoch, initial=state.batches_done, desc=f"epoch {epoch}", unit="batch",
                   leave=False, disable=not _show_progress(config))
        for batch in source.epoch(epoch, skip=state.batches_done):
            result = train_step(training, optimizers, batch.to(device), precision, config.optim.grad_clip, state.step)
            if result is not None and result.total is not None:  # None: no task had a label in the batch
                state.step += 1
                _record_step(state, epoch, result.losses, result.total, training, optimizers)
                scalars.log_step(state.history[-1])
            state.batches_done += 1
            rows_this_session += batch.num_rows
            bar.update(1)
            if result is not None and spec.eval_every and state.step % spec.eval_every == 0 and "valid" in splits:
                valid = _select(state, epoch, training, splits["valid"], encoder, config, precision, selection)
                state.history[-1]["valid"] = valid
            if spec.max_steps is not None and state.step >= spec.max_steps:
                state.done = True
            if every is not None and result is not None and (state.step % every == 0 or state.done):
                save_checkpoint(run_dir, state, training.model, training.combiner, optimizers)
            if state.done:
                break
        bar.close()
        _end_epoch(config, run_dir, state, training, optimizers, splits, encoder, precision, selection, epoch,
                   time.perf_counter() - epoch_started, rows_this_session)
        scalars.log_epoch(state.epochs_log[-1], state.step)


def _end_epoch(config: RunConfig, run_dir: Path, state: LoopState, training: MultiTaskTraining,
               optimizers: OptimizerSet, splits: dict[str, EncodedData], encoder: FeatureEncoder,
               precision: torch.dtype | None, selection: Selection | None, epoch: int, seconds: float,
               rows: int) -> None:
    """Evaluate (unless mid-epoch evaluations run), log the epoch, decide whether to stop, checkpoint."""
    training.loss_combiner.end_epoch()
    summary = _epoch_summary(epoch, seconds, rows, state)
    if "valid" in splits:
        if config.train.eval_every and state.history and "valid" in state.history[-1]:
            summary["valid"] = state.history[-1]["valid"]
        else:
            summary["valid"] = _select(state, epoch, training, splits["valid"], encoder, config, precision, selection)
    state.epochs_log.append(summary)
    state.epoch, state.batches_done, state.epoch_loss_sums = epoch + 1, 0, {}
    if selection is not None and config.train.epochs == "auto" and selection.should_stop:
        logger.info("early stopping after epoch %d: no improvement in %d evaluation(s) since epoch %d",
                    epoch, selection.since_best, selection.best_epoch)
        state.done = True
    if config.train.checkpoint_every is not None:
        save_checkpoint(run_dir, state, training.model, training.combiner, optimizers)
    logger.info(_format_summary(summary))


def _select(state: LoopState, epoch: int, training: MultiTaskTraining, valid: EncodedData,
            encoder: FeatureEncoder, config: RunConfig, precision: torch.dtype | None,
            selection: Selection | None) -> dict[str, dict[str, float]]:
    """Evaluate on valid and let the selection keep the weights when they are the best so far."""
    metrics = _evaluate(training, valid, encoder, config, precision)
    if selection is not None:
        selection.update(metrics, epoch, state.step, {"model": training.model, "combiner": training.combiner})
        state.selection = selection.state_dict()
        if config.train.epochs == "auto" and config.train.eval_every and selection.should_stop:
            state.done = True
    return metrics


def _center(training: MultiTaskTraining, encoder: FeatureEncoder, scored: dict[str, EncodedData],
            config: RunConfig, precision: torch.dtype | None) -> FeatureEncoder:
    """Fit the output offsets and smearing factors (training/centering.py) on the train sample and
    valid rows together; return the encoder carrying the smearing factors."""
    pooled = [scored["train"]] + ([scored["valid"]] if "valid" in scored else [])
    data = pooled[0] if len(pooled) == 1 else _concat(pooled)
    offsets, smearing = fit_centering(training.model, data, encoder, config.train.eval_batch_size, precision)
    training.model.add_output_offsets(offsets)
    if offsets or smearing:
        logger.info("centring: output offsets %s, smearing %s", {t: round(v, 4) for t, v in offsets.items()},
                    {t: round(v, 4) for t, v in smearing.items()})
    return encoder.with_smearing(smearing)


def _concat(parts: list[EncodedData]) -> EncodedData:
    def joined(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
        present = [t for t in tensors if t is not None]
        return torch.cat(present) if len(present) == len(tensors) else None

    return EncodedData(torch.cat([p.categorical for p in parts]), torch.cat([p.dense for p in parts]),
                       torch.cat([p.labels for p in parts]), parts[0].tasks, weights=joined([p.weights for p in parts]),
                       position=joined([p.position for p in parts]))


def _summarize(metrics: RunMetrics, state: LoopState, training: MultiTaskTraining, source: BatchSource,
               selection: Selection | None, batch_size: int, started: float, precision: torch.dtype | None) -> None:
    metrics.loss_weights = training.loss_combiner.weights()
    metrics.gate_usage = mean_gate_usage(state.history, source.steps_per_epoch) or None  # mmoe/ple: last epoch
    metrics.selection = selection.summary() if selection is not None and selection.evaluations else None
    speeds = [e["examples_per_second"] for e in state.epochs_log if e["seconds"] > 0]
    metrics.timing = {"total_seconds": time.perf_counter() - started,
                      "train_examples_per_second": speeds[-1] if speeds else math.nan}
    metrics.training = {"batch_size": batch_size, "steps": state.step, "epochs": len(state.epochs_log),
                        "steps_per_epoch": source.steps_per_epoch,
                        "precision": "bf16" if precision is torch.bfloat16 else "fp32"}


def _batch_size(config: RunConfig, rows: int) -> int:
    size = config.train.batch_size
    return auto_batch_size(rows) if size == "auto" else size


def _planned_steps(config: RunConfig, source: BatchSource) -> int:
    """The steps a learning-rate schedule spans: the epochs (at most max_epochs with `auto`), capped by max_steps."""
    epochs = config.train.max_epochs if config.train.epochs == "auto" else config.train.epochs
    steps = epochs * source.steps_per_epoch
    return min(steps, config.train.max_steps) if config.train.max_steps else steps


def _start_or_resume(run_dir: Path, config: RunConfig, resume: bool, training: MultiTaskTraining,
                     optimizers: OptimizerSet, selection: Selection | None, fingerprint: dict[str, Any]) -> LoopState:
    """A fresh LoopState (writing config.yaml and the data fingerprint so the run can be resumed), or
    the checkpointed one."""
    if resume:
        state = load_checkpoint(run_dir, training.model, training.combiner, optimizers)
        if selection is not None and state.selection is not None:
            selection.load_state_dict(state.selection)
        logger.info("resuming %s at epoch %d, batch %d (step %d)", run_dir, state.epoch, state.batches_done,
                    state.step)
        return state
    start_run_dir(run_dir, config)
    write_json(run_dir / FINGERPRINT, fingerprint)
    return LoopState(data_fingerprint=fingerprint)


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
    return {"epoch": epoch, "step": state.step, "seconds": seconds, "examples_per_second": rows / max(seconds, 1e-9),
            "train_loss": mean_losses}


def _format_summary(summary: dict[str, Any]) -> str:
    parts = [f"epoch {summary['epoch']}: {summary['seconds']:.1f}s, {summary['examples_per_second']:,.0f} ex/s"]
    parts.append("loss " + " ".join(f"{t}={v:.4f}" for t, v in summary["train_loss"].items()))
    for task, metrics in summary.get("valid", {}).items():
        key = "auc" if "auc" in metrics else sorted(k for k in metrics if k.startswith("pearson"))[-1]
        parts.append(f"valid {task} {key}={metrics[key]:.4f}")
    return " | ".join(parts)
