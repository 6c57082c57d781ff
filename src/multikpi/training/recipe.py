"""The training recipe: read it top to bottom.

    data -> encoders (fit on train only; a valid split held out when none is given)
    -> training module (model, per-task losses, combiner) -> optimizers
    -> the loop (train_step: forward, losses, combine, backward, clip, step; evaluate; keep the best)
    -> the best weights -> estimates centred on the labels -> metrics and calibration -> run directory

Only this module and the `build_*` functions read the RunConfig; every component below takes flat
arguments.
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Iterator
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
from multikpi.data.sources import BatchSource
from multikpi.data.streaming import concat
from multikpi.eval.calibration import calibrate_run
from multikpi.eval.diagnostics import data_summary, label_coverage, regression_bins
from multikpi.models.precision import resolve_device, resolve_precision
from multikpi.optim.build import OptimizerSet, build_optimizers
from multikpi.optim.param_groups import auto_learning_rate, build_param_groups
from multikpi.training.centering import fit_centering
from multikpi.training.checkpoint import (
    FINGERPRINT,
    LoopState,
    check_resumable,
    check_same_data,
    data_fingerprint,
    load_checkpoint,
    read_checkpoint_bytes,
    remove_checkpoint,
    save_checkpoint,
    stored_fingerprint,
)
from multikpi.training.data_plan import TrainingData, evaluate, load_training_data, log_vocabulary
from multikpi.training.distributed import DistContext, broadcast_bytes, data_parallel, distributed_context, rng_states
from multikpi.training.memory import check_memory, check_table_memory, out_of_memory_as_error
from multikpi.training.module import MultiTaskTraining, TrainingModule, build_training
from multikpi.training.run import Run, mean_gate_usage, step_record
from multikpi.training.scalars import TENSORBOARD_DIR, ScalarLog
from multikpi.training.selection import Selection, monitor_name
from multikpi.training.setup import seed_everything
from multikpi.training.step import train_step
from multikpi.training.warnings import run_warnings

logger = logging.getLogger("multikpi")


def train(config: RunConfig, out_dir: str | Path | None = None, resume: bool = False,
          overwrite: bool = False) -> Run:
    """Train the model `config` describes and write the run directory. Returns the Run.

    With `resume`, continue the run in `out_dir` from its last checkpoint, exactly where it stopped.
    A finished run in `out_dir` is replaced only with `overwrite`, and only once the new one is
    complete (artifacts/workspace.py). Under torchrun every process calls this; rank 0 alone
    writes (training/distributed.py)."""
    run_dir = Path(out_dir if out_dir is not None else config.out_dir)
    with distributed_context(config.train.device) as context, out_of_memory_as_error(config.train.batch_size), \
            _quiet_unless(context.is_writer):
        opened = context.on_writer(lambda: open_workspace(run_dir, resume, overwrite))
        with opened or RunWorkspace(run_dir, run_dir, writer=False) as workspace:
            run = _train(config, workspace, resume, context)
            workspace.commit()
        context.barrier()  # every rank returns once the run directory is complete
    run.run_dir = run_dir
    return run


def _train(config: RunConfig, workspace: RunWorkspace, resume: bool, context: DistContext) -> Run:
    # The recipe, top to bottom: setup, the loop (`_loop`), the final phase. Everything else is a
    # plain function it calls. Under torchrun, `context.on_writer` marks what rank 0 does alone.
    run_dir = workspace.path
    fingerprint = _fingerprint(config, run_dir, resume, context)
    seed_everything(config.train.seed, config.train.threads, config.train.deterministic)
    device = resolve_device(config.train.device)
    started = time.perf_counter()
    data = load_training_data(config, context)  # in memory, streamed, or sharded (training/data_plan.py)
    encoder, source, batch_size = data.encoder, data.source, data.batch_size
    logger.info("data: %d train rows (%s%s), %d vocabulary rows, %d dense inputs (%.1fs); %s; batch size %d",
                source.num_rows, data.mode, f", {context.world_size} processes" if context.active else "",
                sum(encoder.vocab_sizes), encoder.num_dense_inputs, time.perf_counter() - started, device,
                batch_size)
    log_vocabulary(encoder, data.splits.get("valid"))

    copies = len(config.tasks) if ARCHITECTURES[config.model.arch].embedding_copies_per_task else 1
    check_table_memory(sum(encoder.vocab_sizes), config.model.embedding_dim * copies)
    training = build_training(config, encoder).to(device)
    model = training.model
    check_memory(model, batch_size, source.num_rows, model.input_dim)
    # `auto` times the model's GEMMs: rank 0 decides for every rank (they must train alike)
    precision = context.broadcast(context.on_writer(
        lambda: resolve_precision(config.train.precision, device, model, batch_size, "train")))
    groups = build_param_groups(config, model, training.combiner, batch_size)
    if config.optim.default.lr == "auto":
        logger.info("learning rate: auto = %.2g for batch size %d (1e-3 · sqrt(batch / 512) above 512)",
                    auto_learning_rate(batch_size), batch_size)
    optimizers = build_optimizers(groups, _planned_steps(config, source), model.embeddings)
    selection = Selection(parse_monitor(config), config.train.patience) if "valid" in data.evals else None
    context.on_writer(workspace.start)  # the first write: a run that failed on its inputs left nothing behind
    state = _start_or_resume(run_dir, config, resume, training, optimizers, selection, fingerprint, context)
    scalars = ScalarLog(run_dir / TENSORBOARD_DIR, config.train.tensorboard and context.is_writer,
                        fresh=not resume)  # no-op when off

    stepper = data_parallel(training, context)  # the training module itself, or under DDP its wrapper
    _loop(config, run_dir, state, training, stepper, optimizers, data, precision, selection, scalars, context)
    scalars.close()
    optimizers.release()  # the last checkpoint is written: the final phase's peak needs no Adam moments

    metrics = _final_metrics(config, training, data, selection, precision, context)
    if not context.is_writer:
        training.cpu()
        return Run(run_dir, config, data.encoder, model, training.combiner, metrics, state.history)
    return _finish(config, run_dir, training, data, state, selection, metrics, precision, started)


def _fingerprint(config: RunConfig, run_dir: Path, resume: bool, context: DistContext) -> dict[str, Any]:
    """The data files' fingerprint (rank 0); on resume, checked against the run's before anything is
    read: new data would not even fit the checkpointed model."""
    paths = {"train": config.data.train, "valid": config.data.valid, "test": config.data.test}
    fingerprint = context.on_writer(lambda: data_fingerprint(paths)) or {}
    if resume:
        def check() -> None:
            check_resumable(run_dir, config.model_dump(mode="json"))
            check_same_data(stored_fingerprint(run_dir), fingerprint, run_dir)
        context.on_writer(check)
    return fingerprint


def _final_metrics(config: RunConfig, training: MultiTaskTraining, data: TrainingData, selection: Selection | None,
                   precision: torch.dtype | None, context: DistContext) -> RunMetrics:
    """The best weights back (epochs auto), centring (which replaces `data.encoder`), and every
    split's metrics; on every rank."""
    if selection is not None and config.train.epochs == "auto":
        selection.restore({"model": training.model, "combiner": training.combiner})
        logger.info("kept the weights of epoch %d (step %d): %s = %.4f", selection.best_epoch, selection.best_step,
                    monitor_name(selection.monitor), selection.summary()["value"])
    # The train split is scored on an evenly spaced sample: a fit diagnostic, not worth the memory.
    splits, scored = data.splits, dict(data.splits)
    if "train" in splits:
        scored["train"] = data.evals["train"].sample = evenly_spaced_rows(splits["train"],
                                                                          config.train.train_metrics_rows)
    data.encoder = _center(training, data.encoder, scored, config, precision, context)
    return RunMetrics(splits={name: _evaluate(training, data, name, config, precision, context)
                              for name in data.evals})


def _finish(config: RunConfig, run_dir: Path, training: MultiTaskTraining, data: TrainingData, state: LoopState,
            selection: Selection | None, metrics: RunMetrics, precision: torch.dtype | None, started: float) -> Run:
    """Rank 0: calibration, summaries, diagnostics and warnings, then the run directory."""
    model, encoder, splits, source = training.model, data.encoder, data.splits, data.source
    # Fitted on valid: isotonic + Platt per binary task, ECE on valid and test.
    calibration, metrics.calibration = calibrate_run(model, splits, encoder, config.train.eval_batch_size, precision)
    _summarize(metrics, state, training, source, selection, data.batch_size, started, precision)
    metrics.warnings = run_warnings(config, encoder, splits, metrics, state.history, source.num_rows)
    for warning in metrics.warnings:
        logger.warning("warning: %s", warning)
    metrics.label_coverage = label_coverage(splits, encoder)  # for the report (multikpi.eval.diagnostics)
    metrics.data_summary = data_summary(splits, encoder)
    if data.mode != "memory":  # the summary's rows are those of whole splits; its rates are from the samples
        metrics.data_summary.update(rows=data.rows, sampled_rows={n: d.num_rows for n, d in splits.items()})
    metrics.regression_bins = regression_bins(model, splits, encoder, config.train.eval_batch_size, precision)
    artifacts = RunArtifacts(encoder, model, training.combiner, metrics, state.history, state.epochs_log,
                             serving_settings(config), calibration)
    version = save_run(run_dir, config, artifacts)
    remove_checkpoint(run_dir)
    training.cpu()
    return Run(run_dir, config, encoder, model, training.combiner, metrics, state.history, version, calibration)


def _loop(config: RunConfig, run_dir: Path, state: LoopState, training: MultiTaskTraining, stepper: TrainingModule,
          optimizers: OptimizerSet, data: TrainingData, precision: torch.dtype | None, selection: Selection | None,
          scalars: ScalarLog, context: DistContext) -> None:
    """Epochs of train_step until the planned length, `max_steps`, or early stopping. Evaluates on
    valid every epoch (or every `eval_every` steps) and checkpoints every `checkpoint_every` steps.
    `stepper` is what train_step drives: the training module, or its DistributedDataParallel wrapper."""
    device, every, spec, source = next(training.parameters()).device, config.train.checkpoint_every, config.train, \
        data.source
    last_epoch = spec.max_epochs if spec.epochs == "auto" else spec.epochs
    for epoch in range(state.epoch, last_epoch + 1):
        if state.done:
            break
        training.train()
        epoch_started, rows_this_session = time.perf_counter(), 0
        bar = tqdm(total=source.steps_per_epoch, initial=state.batches_done, desc=f"epoch {epoch}", unit="batch",
                   leave=False, disable=not _show_progress(config) or not context.is_writer)
        for batch in source.epoch(epoch, skip=state.batches_done):
            result = train_step(stepper, optimizers, batch.to(device), precision, config.optim.grad_clip, state.step)
            if result is not None and result.total is not None:  # None: no task had a label in the batch
                state.step += 1
                _record_step(state, epoch, result.losses, result.total, training, optimizers)
                scalars.log_step(state.history[-1])
            state.batches_done += 1
            rows_this_session += batch.num_rows
            bar.update(1)
            if result is not None and spec.eval_every and state.step % spec.eval_every == 0 and "valid" in data.evals:
                valid = _select(state, epoch, training, data, config, precision, selection, context)
                state.history[-1]["valid"] = valid
            if spec.max_steps is not None and state.step >= spec.max_steps:
                state.done = True
            if every is not None and result is not None and (state.step % every == 0 or state.done):
                _checkpoint(run_dir, state, training, optimizers, context)
            if state.done:
                break
        bar.close()
        rows = sum(context.all_gather(rows_this_session))  # the global batch's rows, over every process
        _end_epoch(config, run_dir, state, training, optimizers, data, precision, selection, epoch,
                   time.perf_counter() - epoch_started, rows, context)
        scalars.log_epoch(state.epochs_log[-1], state.step)


def _end_epoch(config: RunConfig, run_dir: Path, state: LoopState, training: MultiTaskTraining,
               optimizers: OptimizerSet, data: TrainingData, precision: torch.dtype | None,
               selection: Selection | None, epoch: int, seconds: float, rows: int, context: DistContext) -> None:
    """Evaluate (unless mid-epoch evaluations run), log the epoch, decide whether to stop, checkpoint."""
    training.loss_combiner.end_epoch()
    summary = _epoch_summary(epoch, seconds, rows, state)
    if "valid" in data.evals:
        if config.train.eval_every and state.history and "valid" in state.history[-1]:
            summary["valid"] = state.history[-1]["valid"]
        else:
            summary["valid"] = _select(state, epoch, training, data, config, precision, selection, context)
    state.epochs_log.append(summary)
    state.epoch, state.batches_done, state.epoch_loss_sums = epoch + 1, 0, {}
    if selection is not None and config.train.epochs == "auto" and selection.should_stop:
        logger.info("early stopping after epoch %d: no improvement in %d evaluation(s) since epoch %d",
                    epoch, selection.since_best, selection.best_epoch)
        state.done = True
    if config.train.checkpoint_every is not None:
        _checkpoint(run_dir, state, training, optimizers, context)
    logger.info(_format_summary(summary))


def _checkpoint(run_dir: Path, state: LoopState, training: MultiTaskTraining, optimizers: OptimizerSet,
                context: DistContext) -> None:
    """Rank 0 writes the checkpoint; under DDP it holds every rank's RNG state (gathered here)."""
    rng = rng_states(context) if context.active else None
    context.on_writer(lambda: save_checkpoint(run_dir, state, training.model, training.combiner, optimizers, rng))


def _select(state: LoopState, epoch: int, training: MultiTaskTraining, data: TrainingData, config: RunConfig,
            precision: torch.dtype | None, selection: Selection | None,
            context: DistContext) -> dict[str, dict[str, float]]:
    """Evaluate on valid and let the selection keep the weights when they are the best so far (the
    metrics are the same on every rank, so every rank decides alike)."""
    metrics = _evaluate(training, data, "valid", config, precision, context)
    if selection is not None:
        selection.update(metrics, epoch, state.step, {"model": training.model, "combiner": training.combiner})
        state.selection = selection.state_dict()
        if config.train.epochs == "auto" and config.train.eval_every and selection.should_stop:
            state.done = True
    return metrics


def _center(training: MultiTaskTraining, encoder: FeatureEncoder, scored: dict[str, EncodedData],
            config: RunConfig, precision: torch.dtype | None, context: DistContext) -> FeatureEncoder:
    """Fit the output offsets and smearing factors (training/centering.py) on the train sample and
    valid rows together (on rank 0, which holds them, then sent to every rank); return the encoder
    carrying the smearing factors."""
    def fit() -> tuple[dict[str, float], dict[str, float]]:
        pooled = [scored["train"]] + ([scored["valid"]] if "valid" in scored else [])
        data = concat(pooled, pooled[0])  # one part, or the parts' rows in order
        return fit_centering(training.model, data, encoder, config.train.eval_batch_size, precision)

    offsets, smearing = context.broadcast(context.on_writer(fit))
    training.model.add_output_offsets(offsets)
    if offsets or smearing:
        logger.info("centring: output offsets %s, smearing %s", {t: round(v, 4) for t, v in offsets.items()},
                    {t: round(v, 4) for t, v in smearing.items()})
    return encoder.with_smearing(smearing)


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


def _planned_steps(config: RunConfig, source: BatchSource) -> int:
    """The steps a learning-rate schedule spans: the epochs (at most max_epochs with `auto`), capped by max_steps."""
    epochs = config.train.max_epochs if config.train.epochs == "auto" else config.train.epochs
    steps = epochs * source.steps_per_epoch
    return min(steps, config.train.max_steps) if config.train.max_steps else steps


def _start_or_resume(run_dir: Path, config: RunConfig, resume: bool, training: MultiTaskTraining,
                     optimizers: OptimizerSet, selection: Selection | None, fingerprint: dict[str, Any],
                     context: DistContext) -> LoopState:
    """A fresh LoopState (writing config.yaml and the data fingerprint so the run can be resumed), or
    the checkpointed one (read by rank 0, sent to every rank)."""
    if resume:
        payload = broadcast_bytes(context, lambda: read_checkpoint_bytes(run_dir))
        state = load_checkpoint(run_dir, training.model, training.combiner, optimizers, payload, context.rank,
                                context.world_size)
        if selection is not None and state.selection is not None:
            selection.load_state_dict(state.selection)
        logger.info("resuming %s at epoch %d, batch %d (step %d)", run_dir, state.epoch, state.batches_done,
                    state.step)
        return state
    def start() -> None:
        start_run_dir(run_dir, config)
        write_json(run_dir / FINGERPRINT, fingerprint)
    context.on_writer(start)
    return LoopState(data_fingerprint=fingerprint)


def _evaluate(training: MultiTaskTraining, data: TrainingData, name: str, config: RunConfig,
              precision: torch.dtype | None, context: DistContext) -> dict[str, dict[str, float]]:
    """The metrics of split `name` (exact over all its rows, the same on every rank: data_plan.evaluate)."""
    rows = data.evals[name].rows // context.world_size
    bar = tqdm(total=rows, desc="evaluate", unit="row", leave=False,
               disable=not _show_progress(config) or not context.is_writer)
    try:
        return evaluate(data, name, training.model, config.train.eval_batch_size, precision, context, bar.update)
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


@contextlib.contextmanager
def _quiet_unless(writer: bool) -> Iterator[None]:
    """Under torchrun, only rank 0 logs progress (the other ranks log warnings and errors)."""
    level = logger.level
    if not writer:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


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
