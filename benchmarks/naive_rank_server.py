"""The naive baseline of benchmarks/serve_latency.py: what a team would write first around the
batch-prediction path (`Predictor.predict` before the server existed): a plain FastAPI endpoint
with default body parsing into row dicts, a pyarrow Table, `FeatureEncoder.encode` and
`model_outputs` (the eager model), the calibrators, the formula, a sort, FastAPI's default JSON.

    python benchmarks/naive_rank_server.py RUN_DIR PORT [TOP_K]

No `from __future__ import annotations` here: FastAPI must see the body model as a class, not as
a string it cannot resolve inside the function (it would then take `body` as a query parameter).
"""
import sys
from typing import Any

import numpy as np


def naive_server(run_dir: str, port: int, top_k: int) -> None:
    import pyarrow as pa
    import torch
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel

    from multikpi import Predictor
    from multikpi.eval.calibration import apply_calibration
    from multikpi.eval.evaluate import estimates, model_outputs
    from multikpi.formula import parse_formula

    torch.set_num_threads(1)
    predictor = Predictor.load(run_dir)
    formula = parse_formula(predictor.serving.score or "click", predictor.tasks)
    default_top_k = top_k

    class Body(BaseModel):
        rows: list[dict[str, Any]]
        top_k: int = default_top_k

    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/rank")
    def rank(body: Body) -> dict[str, Any]:
        table = pa.Table.from_pylist(body.rows)
        encoded = predictor.encoder.encode(table, with_labels=False)
        outputs = model_outputs(predictor.model, encoded, predictor.serving.batch_size, predictor.precision)
        values = apply_calibration(estimates(outputs, predictor.encoder), predictor.calibrators,
                                   predictor.calibration)
        scores = formula.evaluate(values, rows=table.num_rows)
        order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")[:body.top_k]
        return {"candidates": [{"index": int(i), "score": float(scores[i]),
                                "estimates": {t: float(values[t][i]) for t in predictor.tasks}} for i in order]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    naive_server(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 10)
