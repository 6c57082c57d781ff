"""Latency and throughput of `POST /rank` on loopback, for the shared-bottom feed benchmark model:
N = 10, 100, 1000 candidates per request, 1 and 2 client threads, the torch and onnx backends with
one intra-op thread, the onnx backend with two (`multikpi-onnx-2t`: the model on both cores of this
machine), and in the same run the naive path (benchmarks/naive_rank_server.py: a plain FastAPI endpoint,
default body parsing into row dicts, a pyarrow Table, `FeatureEncoder.encode` + the eager model as
`Predictor.predict` did before the server existed, the formula, a sort, FastAPI's default JSON).

    python benchmarks/serve_latency.py                       # train (if needed), export, measure, write the doc
    python benchmarks/serve_latency.py --run RUN_DIR         # an existing run of configs/feed_benchmark.yaml
    python benchmarks/serve_latency.py --from-results        # rebuild the table and plot from the results file

Before timing, each server's answer to one request of every size must have the same top-k (and
scores within 1e-5) as `Predictor.rank` in this process; a request answered with another status than
200 while timing stops the benchmark. Bounded: each configuration sends at most --requests requests
per client thread and stops after --seconds, after --warmup requests per thread that are not timed.
Every server is a subprocess on 127.0.0.1 that is stopped at the end. Requests are built from the
test split: the user-side and page-view columns (gen_feed.py's roles) form the context, sent once;
every other feature is a candidate's. Latency is measured by the client, from sending the request to
reading the whole response, over a persistent HTTP/1.1 connection per thread. Writes
benchmarks/results/serve_latency.json, the table block of docs/serving.md and docs/serving_latency.png.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "serve_latency.json"
DOC = REPO / "docs" / "serving.md"
PLOT = REPO / "docs" / "serving_latency.png"
BEGIN, END = "<!-- serve_latency:table:begin -->", "<!-- serve_latency:table:end -->"
CONTEXT = ["c2", "c4", "c6", "c9", "c13", "c17", "c25", "c5", "c8", "c11", "c16", "c20"]  # user + page view
SIZES = (10, 100, 1000)
THREADS = (1, 2)
SCORE = "click * (1 + 0.01 * dwell) * convert^0.2"
TOP_K = 10
# one worker with one intra-op thread per backend (the throughput setup: --workers = cores), one worker
# with the model on both cores (the latency setup on this 2-core machine), and the naive path
SYSTEMS = ("multikpi-onnx", "multikpi-torch", "multikpi-onnx-2t", "naive")


def ensure_run(args: argparse.Namespace) -> Path:
    """The benchmark run: --run, or configs/feed_benchmark.yaml trained once (1 epoch) into bench-results/."""
    if args.run:
        return Path(args.run)
    run = REPO / "bench-results" / "serve_run"
    if not (run / "manifest.json").is_file():
        for split in ("train", "test"):
            if not (REPO / "bench-data" / f"{split}.parquet").is_file():
                sys.exit(f"bench-data/{split}.parquet is missing: run `make bench-data` first")
        subprocess.run([sys.executable, "-m", "multikpi.cli.main", "train", "configs/feed_benchmark.yaml",
                        "train.epochs=1", "train.progress=off", f"decide.score={SCORE}", f"decide.top_k={TOP_K}",
                        "data.id_columns=[c26]", "--out-dir", str(run), "--overwrite"], cwd=REPO, check=True)
    if not (run / "model.onnx").is_file():
        subprocess.run([sys.executable, "-m", "multikpi.cli.main", "export", str(run), "--rows", "20000"],
                       cwd=REPO, check=True)
    return run


def request_bodies(run: Path, sizes: tuple[int, ...], per_size: int = 16, seed: int = 0
                   ) -> dict[int, tuple[list[bytes], list[bytes]]]:
    """N -> (/rank bodies with a context, the naive server's bodies with full rows), from the test split."""
    import pyarrow.parquet as pq

    from multikpi import Predictor

    predictor = Predictor.load(run)
    test = predictor.config.data.test or "bench-data/test.parquet"
    table = pq.read_table(REPO / test if not Path(test).is_absolute() else test,
                          columns=predictor.feature_columns())
    rng = np.random.default_rng(seed)
    columns = {c: table.column(c).to_pylist() for c in table.column_names}
    item_columns = [c for c in predictor.feature_columns() if c not in CONTEXT]
    out = {}
    for n in sizes:
        ranked, naive = [], []
        for _ in range(per_size):
            user, rows = int(rng.integers(table.num_rows)), rng.integers(0, table.num_rows, n).tolist()
            context = {c: _clean(columns[c][user]) for c in CONTEXT}
            candidates = [{c: _clean(columns[c][r]) for c in item_columns} for r in rows]
            ranked.append(json.dumps({"context": context, "candidates": candidates, "top_k": TOP_K}).encode())
            naive.append(json.dumps({"rows": [{**context, **c} for c in candidates], "top_k": TOP_K}).encode())
        out[n] = (ranked, naive)
    return out


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


class Server:
    """A server subprocess on a free loopback port (its own process group), stopped on exit."""

    def __init__(self, command: list[str]):
        self.port = _free_port()
        self.log = tempfile.TemporaryFile()
        argv = [str(self.port) if a == "PORT" else a for a in command]
        self.process = subprocess.Popen(argv if "PORT" in command else [*argv, "--port", str(self.port)], cwd=REPO,
                                        start_new_session=True, stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"server exited: {self.log.read().decode()[-2000:]}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load(port: int, bodies: list[bytes], threads: int, requests: int, seconds: float,
         warmup: int) -> dict[str, float]:
    """`threads` clients, each on its own connection, send the bodies round-robin; client-side
    latency of every timed request, the wall time from the common start to the last answer."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    start = threading.Barrier(threads + 1)

    def client(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        for i in range(warmup):
            _post(connection, bodies[(i + k) % len(bodies)], headers)
        start.wait()
        deadline = time.perf_counter() + seconds
        for i in range(requests):
            if time.perf_counter() > deadline:
                break
            began = time.perf_counter()
            status = _post(connection, bodies[(i * threads + k) % len(bodies)], headers)
            latencies[k].append(time.perf_counter() - began)
            errors[k] += status != 200
        connection.close()

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - began
    times = np.concatenate([np.asarray(t) for t in latencies]) * 1e3
    return {"requests": int(times.size), "errors": int(sum(errors)), "p50_ms": float(np.percentile(times, 50)),
            "p99_ms": float(np.percentile(times, 99)), "rps": float(times.size / wall)}


def _post(connection: http.client.HTTPConnection, body: bytes, headers: dict[str, str]) -> int:
    connection.request("POST", "/rank", body, headers)
    response = connection.getresponse()
    response.read()
    return response.status


def machine_noise(body: bytes, repeats: int = 400) -> dict[str, float]:
    """The same fixed single-thread work (the standard library's json.loads of `body`: about as long
    as ranking a 1000-candidate request) timed `repeats` times: its p99 / p50 is the tail this machine adds to
    any task of that length, whatever the server does."""
    times = []
    for _ in range(repeats + 20):
        began = time.perf_counter()
        json.loads(body)
        times.append(time.perf_counter() - began)
    ms = np.asarray(times[20:]) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "ratio": float(np.percentile(ms, 99) / np.percentile(ms, 50))}


def measure(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    bodies = request_bodies(run, SIZES)
    noise_start = machine_noise(bodies[max(SIZES)][0][0])
    commands = {"multikpi-onnx": [sys.executable, "-m", "multikpi.cli.main", "serve", str(run), "--backend", "onnx",
                                  "--threads", "1", "--log-level", "warning"],
                "multikpi-torch": [sys.executable, "-m", "multikpi.cli.main", "serve", str(run), "--backend", "torch",
                                   "--threads", "1", "--log-level", "warning"],
                "multikpi-onnx-2t": [sys.executable, "-m", "multikpi.cli.main", "serve", str(run), "--backend",
                                     "onnx", "--threads", "2", "--log-level", "warning"],
                "naive": [sys.executable, str(REPO / "benchmarks" / "naive_rank_server.py"), str(run), "PORT",
                          str(TOP_K)]}
    expected = expected_top_k(run, bodies)
    rows, load_start = [], os.getloadavg()
    for system in SYSTEMS:
        with Server(commands[system]) as server:
            check_answers(server.port, bodies, expected, system)
            for n in SIZES:
                for threads in THREADS:
                    result = load(server.port, bodies[n][system == "naive"], threads, args.requests, args.seconds,
                                  args.warmup)
                    result.update({"system": system, "candidates": n, "threads": threads,
                                   "cps": result["rps"] * n, "loadavg": os.getloadavg()[0]})
                    print(json.dumps(result), flush=True)
                    if result["errors"]:
                        sys.exit(f"{system}: {result['errors']} request(s) failed at N = {n}")
                    rows.append(result)
    noise = [noise_start, machine_noise(bodies[max(SIZES)][0][0])]
    return {"rows": rows, "noise": noise, "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
            "cores": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "run": str(run),
            "requests_per_thread": args.requests, "seconds": args.seconds}


def expected_top_k(run: Path, bodies: dict[int, tuple[list[bytes], list[bytes]]]
                   ) -> dict[int, tuple[list[int], np.ndarray]]:
    """N -> (top-k candidate indices, their scores) of the first /rank body, by Predictor.rank in-process."""
    from multikpi import Predictor

    predictor = Predictor.load(run)
    ranked = {n: predictor.rank(json.loads(b[0][0])) for n, b in bodies.items()}
    return {n: (r.indices.tolist(), np.asarray(r.scores)) for n, r in ranked.items()}


def check_answers(port: int, bodies: dict[int, tuple[list[bytes], list[bytes]]],
                  expected: dict[int, tuple[list[int], np.ndarray]], system: str) -> None:
    """Exit unless the server answers the first body of every size with the expected top-k."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for n, (ranked, naive) in bodies.items():
        connection.request("POST", "/rank", naive[0] if system == "naive" else ranked[0],
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            sys.exit(f"{system} answered {response.status} at N = {n}: {payload[:300]!r}")
        candidates = json.loads(payload)["candidates"]
        indices, scores = expected[n]
        if [c["index"] for c in candidates] != indices or not np.allclose(
                [c["score"] for c in candidates], scores, rtol=1e-5, atol=1e-7):
            sys.exit(f"{system} ranks the N = {n} request differently from Predictor.rank")
    connection.close()


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    naive = {(r["candidates"], r["threads"]): r for r in rows if r["system"] == "naive"}
    lines = ["| path | candidates | client threads | p50 ms | p99 ms | requests/s | candidates/s | p50 vs naive |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (SYSTEMS.index(r["system"]), r["candidates"], r["threads"])):
        base = naive[(r["candidates"], r["threads"])]
        ratio = "1" if r["system"] == "naive" else f"{base['p50_ms'] / r['p50_ms']:.1f}x faster"
        lines.append(f"| {r['system']} | {r['candidates']} | {r['threads']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['rps']:,.0f} | {r['cps']:,.0f} | {ratio} |")
    best = {n: min((r for r in rows if r["system"] != "naive" and r["candidates"] == n and r["threads"] == 1),
                   key=lambda r: r["p99_ms"]) for n in SIZES}
    peak = max((r for r in rows if r["system"] != "naive"), key=lambda r: r["cps"])
    load = f"{results['loadavg_start'][0]:.1f} at the start, {results['loadavg_end'][0]:.1f} at the end"
    lines += ["", f"Measured {results['date']} on {results['cores']} cores, load average {load}; at most "
              f"{results['requests_per_thread']} timed requests per client thread and configuration.",
              "", "Targets (1 client thread, best configuration): "
              f"p99 at N = 100: {best[100]['p99_ms']:.2f} ms ({'met' if best[100]['p99_ms'] <= 5 else 'NOT met'}: "
              f"≤ 5 ms, {best[100]['system']}); p99 at N = 1000: {best[1000]['p99_ms']:.2f} ms "
              f"({'met' if best[1000]['p99_ms'] <= 20 else 'NOT met'}: ≤ 20 ms, {best[1000]['system']}); "
              f"throughput: {peak['cps']:,.0f} candidates/s ({'met' if peak['cps'] >= 50_000 else 'NOT met'}: "
              f"≥ 50,000; {peak['system']}, N = {peak['candidates']}, {peak['threads']} threads)."]
    if results.get("noise"):
        start, end = results["noise"]
        lines += ["", f"This machine's own tail, in the same run: a fixed single-thread task (`json.loads` of "
                  f"the 1000-candidate body) took p50 {start['p50_ms']:.2f} / p99 {start['p99_ms']:.2f} ms "
                  f"before the servers (p99/p50 {start['ratio']:.2f}) and {end['p50_ms']:.2f} / "
                  f"{end['p99_ms']:.2f} ms after ({end['ratio']:.2f}): at that ratio a p99 of 20 ms needs a "
                  f"p50 of {20 / max(start['ratio'], end['ratio']):.1f} ms."]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for system, color in zip(SYSTEMS, ("tab:blue", "tab:orange", "tab:green", "tab:gray")):
        mine = sorted((r for r in results["rows"] if r["system"] == system and r["threads"] == 1),
                      key=lambda r: r["candidates"])
        n = [r["candidates"] for r in mine]
        left.plot(n, [r["p50_ms"] for r in mine], "o-", color=color, label=f"{system} p50")
        left.plot(n, [r["p99_ms"] for r in mine], "s--", color=color, label=f"{system} p99")
        two = sorted((r for r in results["rows"] if r["system"] == system and r["threads"] == 2),
                     key=lambda r: r["candidates"])
        right.plot([r["candidates"] for r in two], [r["cps"] for r in two], "o-", color=color, label=system)
    left.set(xscale="log", yscale="log", xlabel="candidates per request", ylabel="latency (ms), 1 client thread",
             title="POST /rank latency")
    right.set(xscale="log", yscale="log", xlabel="candidates per request", ylabel="candidates / s, 2 client threads",
              title="throughput")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_doc(doc: Path, text: str) -> None:
    """Replace the table block of `doc` (between BEGIN and END), or append one."""
    block = f"{BEGIN}\n{text}\n{END}"
    page = doc.read_text() if doc.is_file() else ""
    if BEGIN in page and END in page:
        page = page[:page.index(BEGIN)] + block + page[page.index(END) + len(END):]
    else:
        page = page.rstrip("\n") + ("\n\n" if page else "") + block + "\n"
    doc.write_text(page)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None)
    parser.add_argument("--requests", type=int, default=400, help="timed requests per client thread (at most)")
    parser.add_argument("--seconds", type=float, default=15.0, help="time cap per configuration")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--from-results", action="store_true")
    args = parser.parse_args()
    if args.from_results:
        results = json.loads(RESULTS.read_text())
    else:
        results = measure(ensure_run(args), args)
        RESULTS.write_text(json.dumps(results, indent=1))
    text = markdown(results)
    write_doc(DOC, text)
    plot(results, PLOT)
    print(text)


if __name__ == "__main__":
    main()
