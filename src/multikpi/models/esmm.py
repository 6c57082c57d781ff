"""ESMM, the Entire Space Multi-task Model (Ma, Zhao, Wu, Zhu, Wang, Wen & Gai, SIGIR 2018).

A CVR model trained only on clicked rows is trained on a sample that differs from the one it
ranks (all impressions), and clicked rows are few. ESMM instead models, over every row,

    pCTCVR = P(click=1, convert=1 | x) = pCTR · pCVR,   pCTR = σ(a),  pCVR = P(convert | click, x) = σ(b)

and trains the CTR tower on the click label and the product on the convert label, both on all
rows; the CVR tower (logit b) is never trained on its own label, only through the product.

In multikpi the CTCVR task's tower is the CVR tower. The model's output for the CTCVR task is the
logit of the product (so that BCE-with-logits on the convert label trains it, and estimates,
metrics and calibration see pCTCVR), and the CVR tower's own logit is a side output under the key
`cvr_output_key(ctr, ctcvr)`, e.g. "convert.given_click": task names cannot contain a dot, so it
never collides with a task. Evaluation reports `cvr_auc_on_clicked` from it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from multikpi.errors import DataError

SIDE_OUTPUT_SEPARATOR = ".given_"


def ctcvr_logit(ctr_logit: torch.Tensor, cvr_logit: torch.Tensor) -> torch.Tensor:
    """logit(σ(a)·σ(b)) for a = CTR logit, b = CVR logit, both (B,) -> (B,), computed stably.

        logit(p) = log p − log(1 − p),   log p = logσ(a) + logσ(b),
        1 − σ(a)σ(b) = σ(−a) + σ(a)σ(−b)   =>   log(1 − p) = logaddexp(logσ(−a), logσ(a) + logσ(−b))

    Every term is a log-sigmoid, so the result and its gradient stay finite for any finite a, b
    (the naive torch.logit(sigmoid(a) * sigmoid(b)) is inf once the product rounds to 1 or 0).

    >>> float(torch.sigmoid(ctcvr_logit(torch.tensor(0.0), torch.tensor(0.0))))
    0.25
    """
    log_p = F.logsigmoid(ctr_logit) + F.logsigmoid(cvr_logit)
    log_not_p = torch.logaddexp(F.logsigmoid(-ctr_logit), F.logsigmoid(ctr_logit) + F.logsigmoid(-cvr_logit))
    return log_p - log_not_p


def cvr_output_key(ctr: str, ctcvr: str) -> str:
    """The side-output key of the CVR tower's logit: "<ctcvr>.given_<ctr>"."""
    return f"{ctcvr}{SIDE_OUTPUT_SEPARATOR}{ctr}"


def parse_cvr_output_key(key: str) -> tuple[str, str] | None:
    """"convert.given_click" -> ("click", "convert") (ctr, ctcvr); a task name -> None."""
    ctcvr, sep, ctr = key.partition(SIDE_OUTPUT_SEPARATOR)
    return (ctr, ctcvr) if sep else None


def check_entire_space_labels(labels: np.ndarray, tasks: list[str], ctr: str, ctcvr: str, split: str) -> None:
    """Raise DataError unless the CTCVR label is 1 only where the CTR label is 1.

    labels: (N, T) float with columns in the order of `tasks`; NaN = no label (not checked)."""
    click = labels[:, tasks.index(ctr)]
    convert = labels[:, tasks.index(ctcvr)]
    bad = int(np.sum((convert == 1) & (click == 0)))
    if bad:
        raise DataError(f"`model.arch: esmm` needs the label of {ctcvr!r} to be 1 only where the label of {ctr!r} "
                        f"is 1 (a conversion follows a click). Got {bad} {split} rows with {ctcvr}=1 and {ctr}=0")
