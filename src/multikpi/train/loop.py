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
from multikpi.data.batches import shuffled_batches
from multikpi.errors import TrainingError
from multikpi.eval.evaluate import model_outputs, task_metrics
from multikpi.losses.combine import build_combiner
from multikpi.losses.task_losses import task_losses
from multikpi.models.build import build_model
from multikpi.optim.build import build_optimizers
from multikpi.optim.param_groups import build_param_groups
from multikpi.train.run import (
    Run,
    load_splits,
    resolve_device,
    resolve_precision,
    save_run,
    seed_everything,
    step_record,
)

logger = logging.getLogger("multikpi")


def train(config: RunConfig, out_dir: str | Path | None = None) -> Run:
    """Train the model `config` describes and write the run directory. Returns the Run."""
    run_dir = Path(out_dir if out_dir is not None else config.out_dir)
    seed_everything(config.train.seed, config.train.threads)
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
    history, epochs_log, step = [], [], 0

    for epoch in range(1, config.train.epochs + 1):
        model.train()
        epoch_started, epoch_losses = time.perf_counter(), {}
        bar = tqdm(total=train_data.num_rows, desc=f"epoch {epoch}", unit="row", leave=False,
                   disable=not _show_progress(config))
        for batch in shuffled_batches(train_data, config.train.batch_size, generator):
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
                outputs = model(batch)  # logits and output units are float32 whatever the precision
            losses = task_losses(outputs, batch.labels, kinds)
            if not losses:  # no task has a label in this batch: nothing to learn from
                bar.update(batch.labels.shape[0])
                continue
            total = combiner(losses)
            _check_finite(losses, total, step)
            optimizers.zero_grad()
            total.backward()
            if config.optim.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            optimizers.step()
            step += 1
            record = step_record(step, epoch, losses, total, combiner, optimizers)
            history.append(record)
            for task, value in record["losses"].items():
                epoch_losses.setdefault(task, []).append(value)
            bar.update(batch.labels.shape[0])
            if step % config.train.log_every == 0:
                bar.set_postfix({t: f"{v:.4f}" for t, v in record["losses"].items()})
        bar.close()
        combiner.end_epoch()
        seconds = time.perf_counter() - epoch_started
        summary = _epoch_summary(epoch, seconds, train_data.num_rows, epoch_losses)
        if "valid" in splits:
            summary["valid"] = task_metrics(model_outputs(model, splits["valid"], config.train.eval_batch_size, precision),
                                            splits["valid"], encoder)
        epochs_log.append(summary)
        logger.info(_format_summary(summary))

    metrics = {name: task_metrics(model_outputs(model, data, config.train.eval_batch_size, precision), data, encoder)
               for name, data in splits.items()}
    metrics["loss_weights"] = combiner.weights()
    metrics["timing"] = {"total_seconds": time.perf_counter() - started,
                         "train_examples_per_second": epochs_log[-1]["examples_per_second"]}
    save_run(run_dir, config, encoder, model, combiner, metrics, history, epochs_log)
    return Run(run_dir, config, encoder, model.cpu(), combiner.cpu(), metrics, history)


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


def _epoch_summary(epoch: int, seconds: float, rows: int, epoch_losses: dict[str, list[float]]) -> dict:
    mean_losses = {t: sum(v) / len(v) for t, v in epoch_losses.items()}
    return {"epoch": epoch, "seconds": seconds, "examples_per_second": rows / seconds, "train_loss": mean_losses}


def _format_summary(summary: dict) -> str:
    parts = [f"epoch {summary['epoch']}: {summary['seconds']:.1f}s, {summary['examples_per_second']:,.0f} ex/s"]
    parts.append("loss " + " ".join(f"{t}={v:.4f}" for t, v in summary["train_loss"].items()))
    for task, metrics in summary.get("valid", {}).items():
        key = "auc" if "auc" in metrics else sorted(k for k in metrics if k.startswith("pearson"))[-1]
        parts.append(f"valid {task} {key}={metrics[key]:.4f}")
    return " | ".join(parts)
