"""The layering: what a layer loads at run time, and the architecture catalogue's two halves."""
from __future__ import annotations

import subprocess
import sys

from multikpi.config.architectures import ARCHITECTURES
from multikpi.models.build import BUILDERS


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_importing_serve_loads_no_training_progress_bar_or_tuner():
    loaded = _modules_after("import multikpi.serve")
    assert "multikpi.serve.predictor" in loaded  # the import did happen
    # torch.hub imports tqdm whenever it is installed, so tqdm is judged against `import torch` alone.
    by_torch = _modules_after("import torch")
    for forbidden in ("multikpi.training", "tqdm", "optuna", "matplotlib", "multikpi.api", "sklearn"):
        ours = {m for m in loaded - by_torch if m == forbidden or m.startswith(forbidden + ".")}
        assert not ours, ours


def test_cli_help_loads_no_torch():
    loaded = _modules_after("from multikpi.cli.main import build_parser; build_parser()")
    assert "torch" not in loaded and "pyarrow" not in loaded


def test_loading_one_parquet_file_in_memory_imports_no_pyarrow_dataset(tmp_path):
    # pyarrow.dataset imports pandas when it is installed (60 MB resident): the single-file path
    # (the footer estimate of data.streaming auto, the in-memory reader) must do without it.
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": [1.0, 2.0], "y": [0, 1]}), path)
    loaded = _modules_after("from multikpi.data.datasets import footer_bytes, open_source; "
                            f"assert footer_bytes({str(path)!r}, ['x'])[0] == 2; "
                            f"open_source({str(path)!r}, ['x']).column('x')")
    assert "multikpi.data.datasets" in loaded and "pyarrow.dataset" not in loaded and "pandas" not in loaded
    loaded = _modules_after(f"from multikpi.data.datasets import footer_bytes; footer_bytes({str(tmp_path)!r}, ['x'])")
    assert "pyarrow.dataset" in loaded  # a directory is a dataset


def test_every_catalogue_row_has_a_builder_and_every_builder_a_row():
    assert set(BUILDERS) == set(ARCHITECTURES)


def test_make_data_kinds_of_the_parser_are_the_generators():
    from multikpi.cli.commands import DATASETS as generators
    from multikpi.cli.main import DATASETS

    assert set(DATASETS) == set(generators)


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    import pytest

    from multikpi.errors import MultiKPIError
    from multikpi.extras import import_extra

    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    with pytest.raises(MultiKPIError, match=r"^tune-decision needs the 'optuna' package, which is not installed: "
                                            r"pip install 'multikpi\[tune\]'$"):
        import_extra("optuna", "tune-decision")


def test_the_http_service_loads_no_training_tuner_or_onnx():
    loaded = _modules_after("import multikpi.service.server")
    assert "multikpi.service.app" in loaded and "fastapi" in loaded
    by_torch = _modules_after("import torch")
    for forbidden in ("multikpi.training", "tqdm", "optuna", "matplotlib", "multikpi.api", "sklearn", "onnx",
                      "onnxruntime", "onnxscript"):
        ours = {m for m in loaded - by_torch if m == forbidden or m.startswith(forbidden + ".")}
        assert not ours, ours
