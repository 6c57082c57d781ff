"""What the run report draws besides the metrics, computed once at the end of training and stored
in metrics.json (RunMetrics.label_coverage, .data_summary, .regression_bins).

- label coverage, per split and task: rows, rows with a label, rows whose label is ignored because
  the `train_on` parent is not 1, rows without a label otherwise, and positives (binary tasks);
- the data summary: rows per split; per categorical column its vocabulary size (without the
  out-of-vocabulary row 0) and the share of rows of each split that map to out-of-vocabulary;
- regression bins, per regression task on the test split (else valid): B = 20 equal-mass bins of
  the rows sorted by prediction (as in eval/calibration.py); per bin the mean prediction, the mean
  label and quantiles of the residual label − prediction, all in label units (after undoing
  standardization and `transform`); and a histogram of the residuals between their 1st and 99th
  percentiles.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from multikpi.data.encoders import EncodedData, FeatureEncoder
from multikpi.data.labels import decode_label
from multikpi.eval.evaluate import model_outputs
from multikpi.models.multitask import MultiTaskModel

REGRESSION_BINS = 20
RESIDUAL_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
HISTOGRAM_BINS = 40


def label_coverage(splits: dict[str, EncodedData], encoder: FeatureEncoder) -> dict[str, dict[str, dict[str, int]]]:
    """split -> task -> {rows, labelled, masked_by_train_on, missing, positives}.

    labelled + masked_by_train_on + missing = rows. `masked_by_train_on` counts the rows where the
    task's `train_on` parent is not 1 (0 or no label): their own label, if any, is ignored."""
    coverage: dict[str, dict[str, dict[str, int]]] = {}
    for name, data in splits.items():
        labels = data.labels.numpy()
        per_task = {}
        for column, task in enumerate(data.tasks):
            target = labels[:, column]
            labelled = ~np.isnan(target)
            parent = encoder.labels[task].train_on
            masked = 0 if parent is None else int(np.sum(labels[:, data.tasks.index(parent)] != 1.0))
            positives = int(np.sum(target[labelled] == 1.0)) if encoder.labels[task].kind == "binary" else 0
            per_task[task] = {"rows": data.num_rows, "labelled": int(labelled.sum()), "masked_by_train_on": masked,
                              "missing": data.num_rows - int(labelled.sum()) - masked, "positives": positives}
        coverage[name] = per_task
    return coverage


def data_summary(splits: dict[str, EncodedData], encoder: FeatureEncoder) -> dict[str, Any]:
    """Rows per split; per categorical column the vocabulary size and each split's out-of-vocabulary
    rate (share of rows whose id maps to row 0: unseen in train, rarer than min_frequency, or null)."""
    # a count per column, not a float64 copy of the whole split (180 MB on the 1M-row feed)
    oov = {name: (np.count_nonzero(data.categorical.numpy() == 0, axis=0) / data.num_rows).tolist()
           if data.num_rows else [float("nan")] * len(encoder.vocabs) for name, data in splits.items()}
    vocabulary = {column: {"size": len(vocab), "oov_rate": {name: rates[i] for name, rates in oov.items()}}
                  for i, (column, vocab) in enumerate(encoder.vocabs.items())}
    return {"rows": {name: data.num_rows for name, data in splits.items()}, "vocabulary": vocabulary,
            "dense": list(encoder.dense), "missing_indicators": list(encoder.missing_indicators)}


def regression_bins(model: MultiTaskModel, splits: dict[str, EncodedData], encoder: FeatureEncoder,
                    batch_size: int, precision: torch.dtype | None) -> dict[str, Any] | None:
    """{"split", "tasks": task -> binned_residuals(...)} on test (else valid), or None when the run
    has no regression task or neither split."""
    tasks = [t for t, stats in encoder.labels.items() if stats.kind == "regression"]
    split = next((s for s in ("test", "valid") if s in splits), None)
    if not tasks or split is None:
        return None
    data = splits[split]
    outputs = model_outputs(model, data, batch_size, precision)
    labels = data.labels.numpy()
    out = {}
    for task in tasks:
        target = labels[:, data.tasks.index(task)]
        labelled = ~np.isnan(target)
        if labelled.any():
            out[task] = binned_residuals(decode_label(target[labelled].astype(np.float64), encoder.labels[task]),
                                         encoder.to_original_units(task, outputs[task][labelled].astype(np.float64)))
    return {"split": split, "tasks": out}


def binned_residuals(labels: np.ndarray, preds: np.ndarray, bins: int = REGRESSION_BINS) -> dict[str, Any]:
    """labels, preds (N,) in label units -> per equal-mass bin of preds: bin_mean_pred,
    bin_mean_label, bin_count, residual_quantiles (one list per quantile in RESIDUAL_QUANTILES of
    label − pred); residual_histogram {edges (K+1,), counts (K,), below, above} over [p1, p99]."""
    order = np.argsort(preds, kind="stable")
    chunks = [c for c in np.array_split(order, bins) if c.size]
    residuals = labels - preds
    per_bin = np.array([np.quantile(residuals[c], RESIDUAL_QUANTILES) for c in chunks])
    low, high = np.quantile(residuals, [0.01, 0.99])
    counts, edges = np.histogram(residuals, bins=HISTOGRAM_BINS, range=(float(low), float(max(high, low + 1e-9))))
    return {"bin_mean_pred": [float(preds[c].mean()) for c in chunks],
            "bin_mean_label": [float(labels[c].mean()) for c in chunks],
            "bin_count": [int(c.size) for c in chunks],
            "quantiles": list(RESIDUAL_QUANTILES),
            "residual_quantiles": per_bin.T.tolist(),
            "residual_histogram": {"edges": edges.tolist(), "counts": counts.tolist(),
                                   "below": int(np.sum(residuals < edges[0])),
                                   "above": int(np.sum(residuals > edges[-1]))},
            "residual_mean": float(residuals.mean()), "count": int(labels.size)}
