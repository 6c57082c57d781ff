"""multikpi against DeepCTR-Torch and torch-rechub on the standard feed benchmark, in one run.

    make bench        # creates .bench-venv with the peers, then runs this script

Steps: generate the standard data if missing (1M train, 200k test rows, ../shared/bench/gen_feed.py);
measure the fp32 matmul peak (matmul_peak.py); then, for each model and each repeat, run the peers
and multikpi one after the other, each in its own process with the same thread count (peers in
the benchmark venv, multikpi in the project venv). Every runner reports its own peak RSS
(getrusage) and test metrics as JSON. Prints a Markdown table and writes benchmarks/results/
feed_vs_peers.json and docs/benchmarks.md. Timings are noisy on shared machines: compare the
ratios within this run, not with figures from other runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT.parent / "shared" / "bench"
RESULTS = ROOT / "benchmarks" / "results"
# Training FLOPs per example = 3 x forward (2 x in x out per linear layer), bench README convention.
LAYERS = {
    "sharedbottom": [(429, 256), (256, 128)] + 3 * [(128, 64), (64, 1)],
    "mmoe": 4 * [(429, 256), (256, 128)] + 3 * [(429, 4), (128, 64), (64, 1)],
}
PEERS = {
    "deepctr": lambda model: [str(BENCH / "run_deepctr.py"), "--model", model],
    "rechub": lambda model: [str(BENCH / "run_rechub.py"), "--model", model],
}


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16")


def machine() -> dict:
    """The CPU model, the ISA flags that decide bf16 speed, the core count and the torch version."""
    import platform

    import torch

    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    import os

    return {"cpu": model, "isa": {flag: flag in flags for flag in ISA_FLAGS}, "cores": os.cpu_count(),
            "torch": torch.__version__}


def machine_line(info: dict) -> str:
    isa = ", ".join(f"{flag} {'yes' if on else 'no'}" for flag, on in info["isa"].items())
    return f"Machine: {info['cpu']}, {info['cores']} cores; {isa}; torch {info['torch']}."


def flops_per_example(model: str) -> float:
    return 3 * 2 * sum(i * o for i, o in LAYERS[model])


def ensure_data(python: str, data_dir: Path) -> tuple[Path, Path]:
    files = {"train": (data_dir / "train.parquet", 1_000_000), "test": (data_dir / "test.parquet", 200_000)}
    for split, (path, rows) in files.items():
        if not path.exists():
            subprocess.run([python, str(BENCH / "gen_feed.py"), "--rows", str(rows), "--split", split,
                            "--out", str(path)], check=True)
    return files["train"][0], files["test"][0]


def run_json(cmd: list[str], out: Path) -> dict:
    """Run one benchmark process; return the JSON it wrote to `out`."""
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd + ["--out", str(out)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def matmul_peak(python: str) -> float:
    out = RESULTS / "matmul_peak.json"
    subprocess.run([python, str(BENCH / "matmul_peak.py"), "--threads", "2", "--json", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    square = json.loads(out.read_text())["square"]
    return max(v["best_gflops"] for k, v in square.items() if k.startswith("t2_"))


def run_all(args: argparse.Namespace, train: Path, test: Path) -> list[dict]:
    rows = []
    data = ["--train", str(train), "--test", str(test), "--threads", str(args.threads)]
    for repeat in range(1, args.repeats + 1):
        for model in args.models:
            for peer in args.peers:
                out = RESULTS / f"{peer}_{model}_r{repeat}.json"
                result = run_json([args.peer_python, *PEERS[peer](model), *data], out)
                rows.append(_tagged(result, peer, model, repeat))
            out = RESULTS / f"multikpi_{model}_r{repeat}.json"
            cmd = [sys.executable, str(ROOT / "benchmarks/run_multikpi.py"), "--model", model, *data]
            rows.append(_tagged(run_json(cmd, out), "multikpi", model, repeat))
    return rows


def _tagged(result: dict, system: str, model: str, repeat: int) -> dict:
    """The runner's JSON with our keys; its own `system` string (name and version) kept as `version`."""
    return {**result, "version": result.get("system"), "system": system, "model": model, "repeat": repeat}


def rows_from_results(args: argparse.Namespace) -> list[dict]:
    """Rebuild the rows from the per-run JSON files of an earlier run (no training)."""
    rows = []
    for repeat in range(1, args.repeats + 1):
        for model in args.models:
            for system in [*args.peers, "multikpi"]:
                path = RESULTS / f"{system}_{model}_r{repeat}.json"
                rows.append(_tagged(json.loads(path.read_text()), system, model, repeat))
    return rows


def summarize(rows: list[dict], peak_gflops: float) -> list[dict]:
    """One line per (system, model): medians over repeats, ratios to the peers of the same model."""
    table = []
    for (system, model) in dict.fromkeys((r["system"], r["model"]) for r in rows):
        mine = [r for r in rows if r["system"] == system and r["model"] == model]
        line = {"system": system, "model": model, "repeats": len(mine),
                "train_ex_per_s": [r["train_ex_per_s"] for r in mine],
                "predict_rows_per_s": [r["predict_rows_per_s"] for r in mine],
                "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                "load_encode_s": mine[0].get("load_encode_s", mine[0].get("preprocess_s")),
                "e2e_s": [_end_to_end_s(r) for r in mine],
                "auc_click": mine[0]["auc_click"], "auc_convert": mine[0]["auc_convert"],
                "corr_dwell": mine[0].get("corr_dwell"),
                "precision": (f"{mine[0]['train_precision']} / {mine[0]['predict_precision']}"
                              if "train_precision" in mine[0] else "fp32")}
        speed = statistics.median(line["train_ex_per_s"])
        line["flop_bound_pct"] = 100 * speed * flops_per_example(model) / (peak_gflops * 1e9)
        for peer in ("deepctr", "rechub"):
            theirs = [r for r in rows if r["system"] == peer and r["model"] == model]
            if theirs:
                line[f"train_ratio_{peer}"] = speed / statistics.median(r["train_ex_per_s"] for r in theirs)
                line[f"predict_ratio_{peer}"] = (statistics.median(line["predict_rows_per_s"])
                                                 / statistics.median(r["predict_rows_per_s"] for r in theirs))
                line[f"e2e_ratio_{peer}"] = (statistics.median(_end_to_end_s(r) for r in theirs)
                                             / statistics.median(line["e2e_s"]))
        table.append(line)
    return table


def _end_to_end_s(run: dict) -> float:
    """Load + train + evaluate, seconds: the peers' whole run (`total_wall_s`: read, preprocess, fit,
    predict and score test); multikpi's `train()` call (read, encode, fit, evaluate test, calibrate,
    write the run directory)."""
    return float(run["train_wall_s"] if "train_wall_s" in run else run["total_wall_s"])


def markdown(table: list[dict], peak_gflops: float, info: dict) -> str:
    head = ("| system | model | train ex/s (runs) | × DeepCTR | × rechub | % fp32 FLOP bound | peak RSS MB "
            "| load+encode s | end-to-end s | end-to-end × DeepCTR | predict rows/s | predict × DeepCTR "
            "| AUC click | AUC convert | dwell corr | precision train / predict |")
    lines = [head, "|" + "---|" * 16]
    for t in table:
        runs = " / ".join(f"{v:,.0f}" for v in t["train_ex_per_s"])
        ratio = lambda key, t=t: f"{t[key]:.2f}" if key in t else "—"  # noqa: E731
        lines.append(
            f"| {t['system']} | {t['model']} | {runs} | {ratio('train_ratio_deepctr')} | {ratio('train_ratio_rechub')} "
            f"| {t['flop_bound_pct']:.0f}% | {t['peak_rss_mb']:,.0f} | {t['load_encode_s']} "
            f"| {statistics.median(t['e2e_s']):.1f} | {ratio('e2e_ratio_deepctr')} "
            f"| {statistics.median(t['predict_rows_per_s']):,.0f} | {ratio('predict_ratio_deepctr')} "
            f"| {t['auc_click']:.4f} | {t['auc_convert']:.4f} | {t['corr_dwell']} | {t.get('precision', 'fp32')} |")
    lines.append(f"\nfp32 matmul peak measured in this run: {peak_gflops:.1f} GFLOP/s (2 threads). "
                 f"{machine_line(info)}")
    return "\n".join(lines)


BEGIN, END = "<!-- feed_vs_peers:table:begin -->", "<!-- feed_vs_peers:table:end -->"
INTRO = ("# Speed against the peers\n\nProduced by `make bench` (benchmarks/feed_vs_peers.py) in one run: the standard "
         "feed benchmark (1M train, 200k test rows), 1 epoch, batch 4096, 2 threads, every system in its own process, "
         "alternating peer / multikpi per repeat. Ratios use medians over the repeats of this run.\n\n")


def merged(key: str, new: list[dict], models: list[str]) -> list[dict]:
    """This run's `key` entries ("table" rows or "runs"), plus those of other models kept from the
    previous feed_vs_peers.json, grouped by model in the order the models first appear."""
    previous = RESULTS / "feed_vs_peers.json"
    old = json.loads(previous.read_text()).get(key, []) if previous.exists() else []
    rows = [r for r in old if r["model"] not in models] + new
    order = list(dict.fromkeys(r["model"] for r in old + new))
    return sorted(rows, key=lambda r: order.index(r["model"]))


def write_doc(doc: Path, text: str) -> None:
    """Replace only the block between the table markers; the hand-written text around it stays.
    A page without the markers gets them appended (nothing is deleted)."""
    block = f"{BEGIN}\n{text}\n{END}"
    old = doc.read_text() if doc.exists() else INTRO
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default=str(ROOT / ".bench-venv/bin/python"))
    parser.add_argument("--peers", default="deepctr,rechub")
    parser.add_argument("--models", default="sharedbottom")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=str(ROOT / "bench-data"))
    parser.add_argument("--from-results", action="store_true",
                        help="rebuild the table from benchmarks/results/*.json of an earlier run")
    args = parser.parse_args()
    args.peers = [p for p in args.peers.split(",") if p]
    args.models = [m for m in args.models.split(",") if m]
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.from_results:
        peak = max(v["best_gflops"] for k, v in json.loads((RESULTS / "matmul_peak.json").read_text())["square"].items()
                   if k.startswith("t2_"))
        rows = rows_from_results(args)
    else:
        train, test = ensure_data(sys.executable, Path(args.data_dir))
        peak = matmul_peak(sys.executable)
        rows = run_all(args, train, test)
    table = merged("table", summarize(rows, peak), args.models)
    rows = merged("runs", rows, args.models)
    info = machine()
    text = markdown(table, peak, info)
    print(text)
    (RESULTS / "feed_vs_peers.json").write_text(json.dumps({"peak_gflops": peak, "machine": info, "runs": rows,
                                                            "table": table}, indent=1))
    write_doc(ROOT / "docs/benchmarks.md", text)


if __name__ == "__main__":
    main()
