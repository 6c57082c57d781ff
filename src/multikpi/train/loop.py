"""The training recipe: read it top to bottom.

    data -> encoders (fit on train only) -> model -> per-task losses -> combiner -> optimizers
    -> the loop (forward, losses, combine, backward, clip, step, log) -> metrics -> run directory
"""
from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from multikpi.config.schema import RunConfig
from multikpi.data.batches import evenly_spaced_rows, shuffled_batches
from multikpi.decide.calibration import calibrate_run
from multikpi.errors import TrainingError
from multikpi.eval.evaluate import model_outputs, task_metrics
from multikpi.losses.combine import build_combiner
from multikpi.losses.task_losses import task_losses
from multikpi.models.build import build_model
from multikpi.optim.build import build_optimizers
from multikpi.optim.param_groups import build_param_groups
from multikpi.train.checkpoint import (
    LoopState,
    check_resumable,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from multikpi.train.memory import check_memory, out_of_memory_as_error
from multikpi.train.run import (
    Run,
    start_run_dir,
    load_splits,
    resolve_device,
    resolve_precision,
    save_run,
    mean_gate_usage,
    seed_everything,
    step_record,
)

logger = logging.getLogger("multikpi")


def train(config: RunConfig, out_dir: str | Path | None = None, resume: bool = False) -> Run:
    """Train the model `config` describes and write the run directory. Returns the Run.

    With `resume`, continue the run in `out_dir` from its last checkpoint, exactly where it stopped."""
    with out_of_memory_as_error(config.train.batch_size):
        return _train(config, out_dir, resume)


def _train(config: RunConfig, out_dir: str | Path | None, resume: bool) -> Run:
    # The whole recipe on one screen, on purpose (nanoGPT style, ~80 lines): setup, the loop, the
    # final metrics. Everything else is a plain function it calls.
    run_dir = Path(out_dir if out_dir is not None else config.out_dir)
    seed_everything(config.train.seed, config.train.threads, config.train.deterministic)
    device = resolve_device(config.train.device)
    precision = resolve_precision(config.train.precision, device)
    started = time.perf_counter()
    encoder, splits = load_splits(config)
    train_data = splits["train"]
    logger.info("data: %d train rows, %d vocabulary rows, %d dense inputs (%.1fs); %s, %s", train_data.num_rows,
                sum(encoder.vocab_sizes), encoder.num_dense_inputs, time.perf_counter() - started, device,
                "bf16 autocast" if precision is not None else "fp32")

    model = build_model(config, encoder).to(device)
    combiner = build_combiner(config, model.shared.last_shared_layer().weight).to(device)
    groups = build_param_groups(config, model, combiner)
    steps_per_epoch = math.ceil(train_data.num_rows / config.train.batch_size)
    optimizers = build_optimizers(groups, steps_per_epoch * config.train.epochs)
    kinds = {task: spec.kind for task, spec in config.tasks.items()}
    generator = torch.Generator().manual_seed(config.train.seed)
    state = _start_or_resume(run_dir, config, resume, model, combiner, optimizers)
    check_memory(config, encoder, model, train_data.num_rows)
    every = config.train.checkpoint_every

    for epoch in range(state.epoch, config.train.epochs + 1):
        model.train()
        if state.batches_done == 0:  # a fresh epoch: remember how its order was drawn
            state.epoch_generator_state = generator.get_state()
        generator.set_state(state.epoch_generator_state)
        epoch_started, rows_this_session = time.perf_counter(), 0
        bar = tqdm(total=steps_per_epoch, initial=state.batches_done, desc=f"epoch {epoch}", unit="batch",
                   leave=False, disable=not _show_progress(config))
        for batch in shuffled_batches(train_data, config.train.batch_size, generator, skip=state.batches_done):
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
                outputs = model(batch)  # logits and output units are float32 whatever the precision
            losses = task_losses(outputs, batch.labels, kinds)
            if losses:  # a batch where no task has a label has nothing to learn from
                total = combiner(losses)
                _check_finite(losses, total, state.step)
                optimizers.zero_grad()
                total.backward()
                if config.optim.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
                optimizers.step()
                state.step += 1
                _record_step(state, epoch, losses, total, combiner, optimizers, model)
            state.batches_done += 1
            rows_this_session += batch.labels.shape[0]
            bar.update(1)
            if every is not None and state.step % every == 0 and losses:
                save_checkpoint(run_dir, state, model, combiner, optimizers)
        bar.close()
        combiner.end_epoch()
        summary = _epoch_summary(epoch, time.perf_counter() - epoch_started, rows_this_session, state)
        if "valid" in splits:
            valid_outputs = model_outputs(model, splits["valid"], config.train.eval_batch_size, precision,
                                          progress=_show_progress(config))
            summary["valid"] = task_metrics(valid_outputs, splits["valid"], encoder)
        state.epochs_log.append(summary)
        state.epoch, state.batches_done, state.epoch_loss_sums = epoch + 1, 0, {}
        if every is not None:
            save_checkpoint(run_dir, state, model, combiner, optimizers)
        logger.info(_format_summary(summary))

    # The train split is scored on an evenly spaced sample: a fit diagnostic, not worth the memory.
    scored = splits | {"train": evenly_spaced_rows(train_data, config.train.train_metrics_rows)}
    metrics = {name: task_metrics(model_outputs(model, data, config.train.eval_batch_size, precision,
                                                progress=_show_progress(config)), data, encoder)
               for name, data in scored.items()}
    calibration, calibration_report = calibrate_run(model, splits, encoder, config.train.eval_batch_size, precision)
    if calibration_report is not None:  # fitted on valid: isotonic + Platt per binary task, ECE on valid/test
        metrics["calibration"] = calibration_report
    metrics["loss_weights"] = combiner.weights()
    if gate_usage := mean_gate_usage(state.history, steps_per_epoch):  # mmoe/ple: mean over the last epoch
        metrics["gate_usage"] = gate_usage
    metrics["timing"] = {"total_seconds": time.perf_counter() - started,
                         "train_examples_per_second": state.epochs_log[-1]["examples_per_second"]}
    save_run(run_dir, config, encoder, model, combiner, metrics, state.history, state.epochs_log,
             calibration=calibration)
    remove_checkpoint(run_dir)
    return Run(run_dir, config, encoder, model.cpu(), combiner.cpu(), metrics, state.history, calibration=calibration)


def _start_or_resume(run_dir: Path, config: RunConfig, resume: bool, model, combiner, optimizers) -> LoopState:
    """A fresh LoopState (writing config.yaml so the run can be resumed), or the checkpointed one."""
    if resume:
        check_resumable(run_dir, config)
        state = load_checkpoint(run_dir, model, combiner, optimizers)
        logger.info("resuming %s at epoch %d, batch %d (step %d)", run_dir, state.epoch, state.batches_done,
                    state.step)
        return state
    start_run_dir(run_dir, config)
    return LoopState()


def _record_step(state: LoopState, epoch: int, losses: dict[str, torch.Tensor], total: torch.Tensor,
                 combiner, optimizers, model) -> None:
    record = step_record(state.step, epoch, losses, total, combiner, optimizers, model.shared.gate_usage())
    state.history.append(record)
    for task, value in record["losses"].items():
        sums = state.epoch_loss_sums.setdefault(task, [0.0, 0])
        sums[0] += value
        sums[1] += 1


def _check_finite(losses: dict[str, torch.Tensor], total: torch.Tensor, step: int) -> None:
    """Stop on a NaN or Inf loss, naming the task and the step (before it can corrupt the weights)."""
    if torch.isfinite(total):
        return
    bad = [task for task, loss in losses.items() if not torch.isfinite(loss)] or ["the combined loss"]
    raise TrainingError(f"non-finite loss at step {step + 1} in task(s) {bad}; "
                        f"lower the learning rate or check the labels of {bad}")


def _show_progress(config: RunConfig) -> bool:
    if config.train.progress == "auto":
        return sys.stderr.isatty()
    return config.train.progress == "on"


def _epoch_summary(epoch: int, seconds: float, rows: int, state: LoopState) -> dict:
    """Mean train loss per task over the epoch; speed over the rows trained in this session."""
    mean_losses = {t: total / count for t, (total, count) in state.epoch_loss_sums.items()}
    return {"epoch": epoch, "seconds": seconds, "examples_per_second": rows / max(seconds, 1e-9),
            "train_loss": mean_losses}


def _format_summary(summary: dict) -> str:
    parts = [f"epoch {summary['epoch']}: {summary['seconds']:.1f}s, {summary['examples_per_second']:,.0f} ex/s"]
    parts.append("loss " + " ".join(f"{t}={v:.4f}" for t, v in summary["train_loss"].items()))
    for task, metrics in summary.get("valid", {}).items():
        key = "auc" if "auc" in metrics else sorted(k for k in metrics if k.startswith("pearson"))[-1]
        parts.append(f"valid {task} {key}={metrics[key]:.4f}")
    return " | ".join(parts)
