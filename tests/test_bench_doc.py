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
