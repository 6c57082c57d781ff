"""Ranking within groups (requests, page views) by one score, and offline metrics of a ranking on
logged labels. Everything is vectorised over all groups at once (lexsort + bincount).

Order: within each group, rows by score descending; equal scores keep the input row order (a
stable sort); a NaN score sorts as -inf, last. Ranks are 1..n_g per group.

Metrics, for one KPI with label y (N,) and cut-off k, each computed per group g and then averaged
over groups (a group with fewer than k rows contributes all of its rows):

- `<task>@k` (e.g. `click@10`): sum of y over the top-k rows of g, averaged over all groups.
  For a regression task it is in the label's own units (dwell@10: seconds of dwell in the top 10).
- `ndcg_<task>@k`: DCG@k / IDCG@k with linear gain y and discount 1 / log2(rank + 1);
  IDCG@k is the DCG@k of g's rows sorted by y itself. Averaged over the groups with IDCG > 0;
  groups without any positive gain are skipped and counted in `skipped_ndcg_<task>`.
  Binary labels give binary gains; a regression label is a graded gain (dwell in seconds).
- `gauc_<task>` (binary tasks): per group, the ROC AUC of the score against y (ties count one
  half), over the groups that have both classes, averaged with weights = the group's labelled rows
  (impressions). `gauc_<task>_unweighted` is the plain mean. One-class groups are skipped and
  counted in `skipped_gauc_<task>`.

A null label (NaN) counts as 0 in the sums and gains and is left out of gAUC. `rank --metrics` and
`tune-decision` use the rows `evaluate` uses: a `train_on` task's label counts only where its
parent's label is 1 (convert on clicked rows), so its gAUC is over the parent's positives.
A metric without any usable group is NaN, written as null in JSON.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ranking:
    """Rows ranked within their groups.

    codes: (N,) group index 0..G-1 of each input row (groups in sorted order of their value)
    order: (N,) input-row indices sorted by group, then rank
    ranks: (N,) 1-based rank of each input row within its group
    sizes: (G,) rows per group
    """

    codes: np.ndarray
    order: np.ndarray
    ranks: np.ndarray
    sizes: np.ndarray

    @property
    def num_groups(self) -> int:
        return int(self.sizes.size)


def clean_scores(scores: np.ndarray) -> np.ndarray:
    """(N,) float64 with NaN replaced by -inf, so that NaN sorts last."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.where(np.isnan(scores), -np.inf, scores)


def group_codes(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) group values of any sortable dtype -> ((N,) int64 codes, (G,) distinct values)."""
    values, codes = np.unique(np.asarray(groups), return_inverse=True)
    return codes.astype(np.int64).reshape(-1), values


def rank_groups(groups: np.ndarray, scores: np.ndarray) -> Ranking:
    """Rank the rows of each group by score, descending; ties keep the input order."""
    codes, values = group_codes(groups)
    return rank_codes(codes, scores, values.size)


def rank_codes(codes: np.ndarray, scores: np.ndarray, num_groups: int) -> Ranking:
    """Like `rank_groups`, for rows whose groups are already coded 0..num_groups-1."""
    scores = clean_scores(scores)
    rows = np.arange(codes.size)
    order = np.lexsort((rows, -scores, codes))
    sizes = np.bincount(codes, minlength=num_groups)
    starts = np.cumsum(sizes) - sizes
    ranks = np.empty(codes.size, dtype=np.int64)
    ranks[order] = rows - starts[codes[order]] + 1
    return Ranking(codes, order, ranks, sizes)


def kpi_at_k(ranking: Ranking, labels: np.ndarray, k: int) -> np.ndarray:
    """(G,) sum of `labels` over each group's top-k rows (NaN labels count as 0)."""
    values = np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=0.0)
    top = ranking.ranks <= k
    return np.bincount(ranking.codes, weights=np.where(top, values, 0.0), minlength=ranking.num_groups)


def ndcg_at_k(ranking: Ranking, gains: np.ndarray, k: int) -> np.ndarray:
    """(G,) NDCG@k with linear gains; NaN for a group whose ideal DCG is 0."""
    gains = np.nan_to_num(np.asarray(gains, dtype=np.float64), nan=0.0)
    dcg = _dcg(ranking.codes, ranking.ranks, gains, k, ranking.num_groups)
    ideal = rank_codes(ranking.codes, gains, ranking.num_groups)
    idcg = _dcg(ranking.codes, ideal.ranks, gains, k, ranking.num_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), np.nan)


def _dcg(codes: np.ndarray, ranks: np.ndarray, gains: np.ndarray, k: int, num_groups: int) -> np.ndarray:
    discount = np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)
    return np.bincount(codes, weights=gains * discount, minlength=num_groups)


def group_auc(codes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
              num_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group ROC AUC (Mann-Whitney, ties one half) over rows with a 0/1 label.

    Returns ((G,) AUC, NaN where the group lacks a class; (G,) labelled rows per group)."""
    labels = np.asarray(labels, dtype=np.float64)
    keep = ~np.isnan(labels)
    codes, scores, labels = codes[keep], clean_scores(scores)[keep], labels[keep]
    order = np.lexsort((scores, codes))
    c, s, y = codes[order], scores[order], labels[order]
    new_run = np.ones(c.size, dtype=bool)
    new_run[1:] = (c[1:] != c[:-1]) | (s[1:] != s[:-1])
    run_starts = np.flatnonzero(new_run)
    run_ends = np.append(run_starts[1:], c.size)
    mid_position = ((run_starts + run_ends - 1) / 2.0)[np.cumsum(new_run) - 1]
    group_start = np.searchsorted(c, np.arange(num_groups), side="left")
    ranks = mid_position - group_start[c] + 1.0  # 1-based mid-ranks within the group, ascending score
    counts = np.bincount(c, minlength=num_groups).astype(np.float64)
    positives = np.bincount(c, weights=y, minlength=num_groups)
    negatives = counts - positives
    rank_sum = np.bincount(c, weights=ranks * y, minlength=num_groups)
    both = (positives > 0) & (negatives > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)
    return np.where(both, auc, np.nan), counts


def ranking_metrics(ranking: Ranking, scores: np.ndarray, labels: dict[str, np.ndarray],
                    kinds: Mapping[str, str], k: int) -> dict[str, float]:
    """Every metric of the module docstring for every task in `labels`, averaged over groups.

    labels: task -> (N,) label values; kinds: task -> "binary" | "regression"."""
    out: dict[str, float] = {"groups": ranking.num_groups, "rows": int(ranking.codes.size), "k": int(k)}
    for task, values in labels.items():
        out[f"{task}@{k}"] = float(kpi_at_k(ranking, values, k).mean()) if ranking.num_groups else float("nan")
        ndcg = ndcg_at_k(ranking, values, k)
        used = ~np.isnan(ndcg)
        out[f"ndcg_{task}@{k}"] = float(ndcg[used].mean()) if used.any() else float("nan")
        out[f"skipped_ndcg_{task}"] = int((~used).sum())
        if kinds[task] != "binary":
            continue
        auc, counts = group_auc(ranking.codes, scores, values, ranking.num_groups)
        used = ~np.isnan(auc)
        out[f"gauc_{task}"] = float(np.average(auc[used], weights=counts[used])) if used.any() else float("nan")
        out[f"gauc_{task}_unweighted"] = float(auc[used].mean()) if used.any() else float("nan")
        out[f"skipped_gauc_{task}"] = int((~used).sum())
    return out
