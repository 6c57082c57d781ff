"""Position bias in training: click and convert AUC on a position-randomised slice of the feed, for
runs trained on the logging policy's data with and without the position tower (docs/deciding.md).

    multikpi make-data feed --rows 60000 --seed 3 --temperature inf --out demo/random.parquet
    python benchmarks/position_tower.py demo/random.parquet --rows 60000 --seed 3 RUN_DIR [RUN_DIR ...]

On the slice the order is uniformly random, so a click is examination(position) * attractiveness
with the position independent of the item: the AUC of a position-free estimate measures how well it
ranks attractiveness. A run that reads `position` as a feature is scored twice: with every position
set to 1 (how such a model ranks: the position is unknown before ranking) and with the slice's
positions (not available when ranking; for reference). A run with `data.position` predicts without
the tower; its estimates do not depend on the position column (the invariance is checked here too).
The last column is the mean click estimate over the slice's mean true attractiveness (the
generator's oracle; --rows and --seed are those the slice was made with): 1 when the estimates are
position-free and on the scale of the top position.
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score

from multikpi import Predictor
from multikpi.report.tables import render_table
from multikpi.synthetic.feed import feed_oracle


def _scores(predictor: Predictor, table: pa.Table) -> dict[str, np.ndarray]:
    estimates = predictor.predict(table, keep=[])
    return {t: estimates.column(t).to_numpy() for t in ("click", "convert")}


def _row(name: str, scores: dict[str, np.ndarray], table: pa.Table, attractiveness: float) -> list[object]:
    click, convert = table["click"].to_numpy(), table["convert"].to_numpy()
    return [name, roc_auc_score(click, scores["click"]), roc_auc_score(convert, scores["convert"]),
            float(scores["click"].mean() / attractiveness)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slice", help="a position-randomised file (make-data feed --temperature inf)")
    parser.add_argument("--rows", type=int, required=True, help="make-data feed --rows of the slice")
    parser.add_argument("--seed", type=int, required=True, help="make-data feed --seed of the slice")
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    table = pq.read_table(args.slice)
    attractiveness = float(feed_oracle(args.rows, seed=args.seed, temperature=math.inf)["p_click_examined"].mean())
    rows = []
    for run in args.runs:
        predictor = Predictor.load(run)
        position = predictor.config.data.position
        if position is not None:
            scores = _scores(predictor, table)
            moved = table.set_column(table.column_names.index(position), position,
                                     table[position].take(np.random.default_rng(0).permutation(table.num_rows)))
            assert all(np.array_equal(scores[t], _scores(predictor, moved)[t]) for t in scores), run
            rows.append(_row(f"{run}: position tower (dropped at prediction)", scores, table, attractiveness))
        elif "position" in predictor.feature_columns():
            top = table.set_column(table.column_names.index("position"), "position",
                                   pa.array(np.ones(table.num_rows, dtype=np.int64)))
            rows.append(_row(f"{run}: position as a feature, predicted at position 1", _scores(predictor, top), table,
                             attractiveness))
            rows.append(_row(f"{run}: position as a feature, at the slice's positions (not available "
                             f"when ranking)", _scores(predictor, table), table, attractiveness))
        else:
            rows.append(_row(f"{run}: no position input", _scores(predictor, table), table, attractiveness))
    print(render_table(["run", "click AUC", "convert AUC", "mean estimate / attractiveness"], rows, style="markdown"))


if __name__ == "__main__":
    main()
