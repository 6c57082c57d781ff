"""`benchmarks/feed_vs_peers.py` rewrites only its table block of docs/benchmarks.md."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("feed_vs_peers", REPO / "benchmarks" / "feed_vs_peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_write_doc_replaces_only_the_table_block(tmp_path):
    script = _script()
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Title\n\nhand-written intro\n\n{script.BEGIN}\n| old | table |\n{script.END}\n\n## Notes\nkept\n")
    script.write_doc(doc, "| new | table |")
    text = doc.read_text()
    assert "hand-written intro" in text and "## Notes\nkept" in text
    assert "| new | table |" in text and "| old | table |" not in text


def test_write_doc_appends_the_block_to_a_page_without_markers(tmp_path):
    script = _script()
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Title\n\nnotes a person wrote\n")
    script.write_doc(doc, "| t |")
    assert doc.read_text().startswith("# Title\n\nnotes a person wrote\n") and "| t |" in doc.read_text()


def test_the_shipped_page_has_the_markers():
    script = _script()
    text = (REPO / "docs" / "benchmarks.md").read_text()
    assert script.BEGIN in text and script.END in text


def _serve_script():
    spec = importlib.util.spec_from_file_location("serve_latency", REPO / "benchmarks" / "serve_latency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_latency_table_reports_ratios_and_targets(tmp_path):
    script = _serve_script()
    rows = []
    for system, p50 in (("multikpi-onnx", 1.0), ("multikpi-torch", 2.0), ("naive", 8.0)):
        for n in script.SIZES:
            for threads in script.THREADS:
                rows.append({"system": system, "candidates": n, "threads": threads, "p50_ms": p50 * n / 100,
                             "p99_ms": 2 * p50 * n / 100, "rps": 1000 / (p50 * n / 100), "cps": 1e5 / p50,
                             "requests": 400})
    results = {"rows": rows, "loadavg_start": [1.0], "loadavg_end": [2.0], "cores": 2, "date": "today",
               "requests_per_thread": 400}
    text = script.markdown(results)
    assert "| multikpi-onnx | 100 | 1 | 1.00 | 2.00 | 1,000 | 100,000 | 8.0x faster |" in text
    assert "p99 at N = 100: 2.00 ms (met: ≤ 5 ms, multikpi-onnx)" in text
    assert "p99 at N = 1000: 20.00 ms (met" in text and "throughput: 100,000 candidates/s (met" in text
    assert "own tail" not in text  # results of before the noise probe
    results["noise"] = [{"p50_ms": 10.0, "p99_ms": 16.0, "ratio": 1.6}, {"p50_ms": 11.0, "p99_ms": 22.0, "ratio": 2.0}]
    noted = script.markdown(results)
    assert "p50 10.00 / p99 16.00 ms before the servers (p99/p50 1.60)" in noted
    assert "a p99 of 20 ms needs a p50 of 10.0 ms" in noted  # at the worse of the two ratios
    doc = tmp_path / "serving.md"
    doc.write_text(f"# Serving\n\nintro\n\n{script.BEGIN}\nold\n{script.END}\n\n## after\n")
    script.write_doc(doc, text)
    assert "intro" in doc.read_text() and "## after" in doc.read_text() and "old" not in doc.read_text()
    assert script.BEGIN in (REPO / "docs" / "serving.md").read_text()
