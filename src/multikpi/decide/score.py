"""From a run and a data file to per-row estimates, one fused score, and ranks within groups:
what `multikpi rank` and `multikpi tune-decision` share."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from multikpi.config.load import load_config
from multikpi.config.schema import DecideSpec, RunConfig
from multikpi.data.tabular import column_names, read_table
from multikpi.decide.ranking import Ranking, group_codes, rank_codes
from multikpi.errors import ConfigError, DataError
from multikpi.eval.calibration import apply_calibration, resolve_method
from multikpi.formula import Formula, parse_formula
from multikpi.serve.predictor import Predictor

logger = logging.getLogger("multikpi")


@dataclass(frozen=True)
class Candidates:
    """Rows of one data file, ready to be scored.

    table:     the columns read (id columns, group, features, labels when asked for)
    estimates: task -> (N,) float64: binary tasks as (calibrated) probabilities, regression tasks
               in label units
    codes:     (N,) int64 group index 0..G-1; `group_values` (G,) holds each group's value
    labels:    task -> (N,) float64 label (NaN where null), or None when not read
    """

    table: pa.Table
    estimates: dict[str, np.ndarray]
    codes: np.ndarray
    group_values: np.ndarray
    labels: dict[str, np.ndarray] | None

    @property
    def num_groups(self) -> int:
        return int(self.group_values.size)

    def rank(self, scores: np.ndarray) -> Ranking:
        return rank_codes(self.codes, scores, self.num_groups)


def decide_spec(predictor: Predictor, config_path: str | Path | None) -> DecideSpec:
    """The run's `decide` section, or that of `config_path` (e.g. written by tune-decision),
    which must describe the same tasks as the run."""
    if config_path is None:
        return predictor.config.decide
    config = load_config(config_path)
    _check_same_tasks(config, predictor.config, str(config_path))
    return config.decide


def _check_same_tasks(config: RunConfig, run_config: RunConfig, source: str) -> None:
    mine = {t: s.kind for t, s in config.tasks.items()}
    run = {t: s.kind for t, s in run_config.tasks.items()}
    if mine != run:
        raise ConfigError([f"`tasks` must be those of the run {run}, for its `decide` section to apply. Got {mine}"],
                          source=source)


def score_formula(decide: DecideSpec, tasks: list[str], override: str | None = None) -> Formula:
    """The formula to rank by: `override` (--score) else `decide.score`. ConfigError when neither."""
    text, what = (override, "--score") if override is not None else (decide.score, "`decide.score`")
    if text is None:
        raise ConfigError([f"no score to rank by: pass --score FORMULA (e.g. --score {tasks[0]!r}), "
                           f"--config FILE with a `decide.score` (tune-decision writes one), or set "
                           f"`decide.score` before training"], source="rank")
    formula = parse_formula(text, tasks, what=what, source="rank", kind="tasks")
    if not formula.names:
        raise ConfigError([f"{what} must use at least one of the tasks {tasks}. Got {text!r}"], source="rank")
    return formula


NULL_GROUP = ("error", "own", "drop")  # what rank / tune-decision do with rows whose group is null


def load_candidates(predictor: Predictor, data: str | Path, group: str, calibration: str,
                    with_labels: bool, keep: list[str] | None = None, null_group: str = "error") -> Candidates:
    """Read `data` (features, `group`, the id columns it has, labels when `with_labels`), predict,
    calibrate as `calibration` (a `decide.calibration` value) says, and code the groups.

    null_group: rows whose group is null are an error ("error"), one group of their own ("own"),
    or left out ("drop", logged)."""
    available = column_names(data)
    if group not in available:
        raise DataError(f"data file {str(data)!r} has no group column {group!r}; it has {available}")
    if group in predictor.tasks or group in ("score", "rank", "in_top_k"):
        raise DataError(f"--group {group!r} is also an output column of rank (a task's estimate, score, rank or "
                        f"in_top_k); rename the group column")
    ids = [c for c in (keep if keep is not None else predictor.serving.id_columns) if c in available]
    labels = [predictor.config.tasks[t].label for t in predictor.tasks] if with_labels else []
    table = read_table(data, list(dict.fromkeys(ids + [group] + predictor.feature_columns() + labels)))
    table = _null_groups(table, group, str(data), null_group)
    group_column = table.column(group)
    raw = predictor.predict(table, keep=[], calibrated=False)
    method = resolve_method(calibration, predictor.calibrators)
    estimates = apply_calibration({t: raw.column(t).to_numpy() for t in predictor.tasks}, predictor.calibrators, method)
    codes, values = _group_codes(group_column)
    label_values = _task_labels(table, predictor) if with_labels else None
    return Candidates(table, estimates, codes, values, label_values)


def _group_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """group_codes of the column; null groups (null_group "own") are one more group, the last code."""
    is_null = pc.is_null(column, nan_is_null=True)
    if not pc.any(is_null).as_py():
        return group_codes(column.to_numpy(zero_copy_only=False))
    present, values = group_codes(column.filter(pc.invert(is_null)).to_numpy(zero_copy_only=False))
    mask = is_null.to_numpy(zero_copy_only=False)
    codes = np.full(mask.size, values.size, dtype=np.int64)
    codes[~mask] = present
    return codes, np.array([*values.tolist(), None], dtype=object)


def _null_groups(table: pa.Table, group: str, source: str, null_group: str) -> pa.Table:
    if null_group not in NULL_GROUP:
        raise DataError(f"--null-group must be one of {', '.join(NULL_GROUP)}. Got {null_group!r}")
    is_null = pc.is_null(table.column(group), nan_is_null=True)
    nulls = pc.sum(is_null).as_py() or 0
    if not nulls or null_group == "own":
        return table
    if null_group == "error":
        raise DataError(f"group column {group!r} of {source!r} has {nulls} null value(s); every row needs a group "
                        f"(--null-group own ranks them as one group, --null-group drop leaves them out)")
    if nulls == table.num_rows:
        raise DataError(f"group column {group!r} of {source!r} is null on every row: --null-group drop leaves nothing")
    logger.warning("%s: left out %d row(s) whose %r is null (--null-group drop)", source, nulls, group)
    return table.filter(pc.invert(is_null))


def _task_labels(table: pa.Table, predictor: Predictor) -> dict[str, np.ndarray]:
    """task -> (N,) labels on the rows `evaluate` uses: a `train_on` task's label is NaN (left out
    of gAUC, 0 in the sums) where its parent's label is not 1, as in training and evaluate."""
    tasks = predictor.config.tasks
    raw = {t: _label(table, tasks[t].label) for t in predictor.tasks}
    labels = {}
    for task in predictor.tasks:
        parent = tasks[task].train_on
        labels[task] = raw[task] if parent is None else np.where(raw[parent] == 1.0, raw[task], np.nan)
    return labels


def _label(table: pa.Table, column: str) -> np.ndarray:
    values = table.column(column)
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_boolean(values.type)):
        raise DataError(f"label column {column!r} must be numeric for ranking metrics. Got {values.type}")
    return np.asarray(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def evaluate_scores(formula: Formula, candidates: Candidates, params: dict[str, float] | None = None) -> np.ndarray:
    """(N,) float64 scores of `formula` over the candidates' estimates (plus weight values)."""
    values: dict[str, np.ndarray | float] = dict(candidates.estimates)
    values.update(params or {})
    return formula.evaluate(values, rows=candidates.codes.size)


def ranked_table(candidates: Candidates, scores: np.ndarray, group: str, top_k: int,
                 id_columns: list[str]) -> pa.Table:
    """group, the other id columns, score, rank, in_top_k, one column per task (the estimates);
    ordered by group, then rank."""
    nan = int(np.isnan(scores).sum())
    if nan:
        logger.warning("rank: %d of %d scores are NaN (e.g. log of a negative estimate); they rank last",
                       nan, scores.size)
    ranking = candidates.rank(scores)
    columns = {group: candidates.table.column(group)}
    columns.update({c: candidates.table.column(c) for c in id_columns if c != group})
    added = {"score": pa.array(scores), "rank": pa.array(ranking.ranks), "in_top_k": pa.array(ranking.ranks <= top_k)}
    added.update({t: pa.array(v) for t, v in candidates.estimates.items()})
    clash = sorted(set(columns) & set(added))
    if clash:
        raise DataError(f"rank: the output would hold column(s) {clash} twice; drop them from the id columns")
    columns.update(added)
    return pa.table(columns).take(pa.array(ranking.order))
