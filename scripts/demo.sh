#!/usr/bin/env bash
# make demo: synthetic feed -> train -> evaluate -> predict -> report, on built-in data only.
set -euo pipefail
MULTIKPI=${1:-multikpi}
cd "$(dirname "$0")/.."
"$MULTIKPI" make-data feed --rows 300000 --seed 0 --out demo/train.parquet
"$MULTIKPI" make-data feed --rows 60000 --seed 1 --out demo/valid.parquet
"$MULTIKPI" make-data feed --rows 60000 --seed 2 --out demo/test.parquet
"$MULTIKPI" validate configs/demo.yaml
"$MULTIKPI" train configs/demo.yaml --overwrite  # a second `make demo` replaces the first run
"$MULTIKPI" evaluate demo/run demo/test.parquet --json demo/test_metrics.json
"$MULTIKPI" predict demo/run demo/test.parquet --out demo/predictions.parquet --keep request_id,item_id
"$MULTIKPI" tune-decision demo/run demo/valid.parquet --group request_id --objective convert@10 \
    --constraint "click@10 >= 0.98*baseline" --trials 30
"$MULTIKPI" report demo/run --out demo/report.html
echo "report: $(pwd)/demo/report.html (open it in a browser; it needs no server)"
echo "TensorBoard scalars: tensorboard --logdir demo/run/tensorboard"
