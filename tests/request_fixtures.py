"""One ranking request of the tiny synthetic feed, as the serving tests send it."""
from __future__ import annotations

import math

import pyarrow as pa

CONTEXT = ("user_id", "device", "request_id")  # the tiny config's user-side features, and the request id
CANDIDATE_FEATURES = ["item_id", "item_category", "position", "price", "item_age_h", "affinity"]


def feed_request(table: pa.Table, request_id: int) -> tuple[dict, list[dict], pa.Table]:
    """(context, candidates, the request's rows) of one request of a feed split; NaN -> null."""
    rows = table.filter(pa.compute.equal(table.column("request_id"), request_id))
    records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
               for r in rows.to_pylist()]
    context = {k: records[0][k] for k in CONTEXT}
    return context, [{k: r[k] for k in CANDIDATE_FEATURES} for r in records], rows
