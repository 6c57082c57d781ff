"""The Python API, mirroring the CLI: train, evaluate, predict, load_config."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from multikpi.artifacts.run_dir import serving_settings
from multikpi.config.load import config_from_dict, load_config
from multikpi.config.schema import RunConfig
from multikpi.data.diagnostics import oov_warnings, unlabelled_tasks
from multikpi.data.tabular import column_names, open_columns, read_table
from multikpi.errors import DataError
from multikpi.eval.calibration import calibrators_from_json
from multikpi.eval.evaluate import evaluate_split
from multikpi.serve.predictor import Predictor
from multikpi.training.recipe import train as _train_recipe
from multikpi.training.run import Run

logger = logging.getLogger("multikpi")

__all__ = ["evaluate", "load_config", "predict", "predictor_of", "rank", "report", "train"]


def train(config: RunConfig | str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = (),
          out_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False) -> Run:
    """Train from a RunConfig, a YAML path (with `key.path=value` overrides) or a plain dict.

    `resume=True` continues the interrupted run in `out_dir` (default: the config's out_dir);
    `overwrite=True` replaces a finished run there, once the new one is complete."""
    if isinstance(config, (str, Path)):
        config = load_config(config, overrides)
    elif isinstance(config, dict):
        config = config_from_dict(config)
    return _train_recipe(config, out_dir, resume, overwrite)


def predictor_of(run: Run) -> Predictor:
    """A Predictor over a Run still in memory: the same predictions as `Predictor.load(run.run_dir)`."""
    calibrators = calibrators_from_json(run.calibration) if run.calibration is not None else None
    return Predictor(config=run.config, encoder=run.encoder, model=run.model, serving=serving_settings(run.config),
                     calibrators=calibrators, version=run.version)


def evaluate(run_dir: str | Path, data: str | Path) -> dict[str, dict[str, float]]:
    """Per-task metrics of a finished run on a labelled Parquet/CSV file: task -> metric -> value."""
    predictor = Predictor.load(run_dir)
    encoder = predictor.encoder
    names = set(column_names(data))
    missing = [c for c in encoder.label_columns if c not in names]
    if len(missing) == len(encoder.label_columns):
        raise DataError(f"data file {str(data)!r} has none of the label columns {encoder.label_columns}: evaluate "
                        f"needs labels (predict gives estimates without them)")
    columns = [c for c in encoder.needed_columns() if c not in missing]
    # evaluate the tasks whose labels are there; the others get all-null labels and are skipped
    table = _with_null_columns(read_table(data, columns), missing) if missing else open_columns(data, columns)
    encoded = encoder.encode(table)
    for warning in oov_warnings(encoder, encoded, str(data)):
        logger.warning("warning: %s", warning)
    for task, reason in unlabelled_tasks(encoder, encoded, str(data), missing).items():
        logger.warning("warning: skipped task %r: %s", task, reason)
    return evaluate_split(predictor.model, encoded, encoder, predictor.serving.batch_size, predictor.precision)


def _with_null_columns(table: pa.Table, names: list[str]) -> pa.Table:
    for name in names:
        table = table.append_column(name, pa.nulls(table.num_rows, pa.float64()))
    return table


def predict(run_dir: str | Path, data: Any, keep: list[str] | tuple[str, ...] | None = None,
            calibrated: bool = True) -> pa.Table:
    """Estimates of a finished run: `keep` columns (default: `data.id_columns`), then one column per
    task; binary probabilities calibrated as `decide.calibration` says unless `calibrated` is False."""
    return Predictor.load(run_dir).predict(data, keep, calibrated=calibrated, warn=True)


def rank(run_dir: str | Path, data: str | Path, group: str, top_k: int | None = None,
         score: str | None = None, config: str | Path | None = None) -> pa.Table:
    """Score every row of `data` with the fusion formula and rank the rows within each `group`.

    The formula is `score`, else `decide.score` of `config` (a YAML file such as the one
    `tune-decision` writes), else of the run's own config. Returns the group and id columns, score,
    rank (1 = first), in_top_k and the per-task estimates, ordered by group then rank."""
    from multikpi.decide.score import decide_spec, evaluate_scores, load_candidates, ranked_table, score_formula

    predictor = Predictor.load(run_dir)
    decide = decide_spec(predictor, config)
    formula = score_formula(decide, predictor.tasks, score)
    candidates = load_candidates(predictor, data, group, decide.calibration, with_labels=False)
    ids = [c for c in predictor.serving.id_columns if c in candidates.table.column_names]
    return ranked_table(candidates, evaluate_scores(formula, candidates), group, top_k or decide.top_k, ids)


def report(directory: str | Path, out: str | Path | None = None) -> Path:
    """Write the self-contained HTML report of a run directory or of a `compare` directory to `out`
    (default: DIRECTORY/report.html); returns its path (docs/report.md)."""
    from multikpi.report.html_report import write_report

    return write_report(directory, out)
