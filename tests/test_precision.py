"""`precision: auto` by measurement (models/precision.py): the decision rule, the margin, the
per-machine cache, the model's own GEMM shapes, and the forced settings."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from multikpi.models import precision
from multikpi.models.experts import BatchedLinear


@pytest.fixture
def timings(monkeypatch, tmp_path):
    """Replace the GEMM timer by given (fp32, bf16) seconds and count the probes; a fresh cache."""
    monkeypatch.setenv("MULTIKPI_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[object] = []
    seconds = {"fp32": 1.0, "bf16": 1.0}

    def fake(shapes, batch, kind):
        calls.append((kind, batch))
        return seconds["fp32"], seconds["bf16"]

    monkeypatch.setattr(precision, "_time_both", fake)
    return seconds, calls


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), BatchedLinear(3, 16, 4))


def test_the_model_s_own_gemm_shapes_are_probed():
    assert precision.gemm_shapes(_model()) == [(1, 8, 16), (3, 16, 4)]


@pytest.mark.parametrize(("bf16_seconds", "chosen"), [(0.5, torch.bfloat16), (0.84, torch.bfloat16),
                                                      (0.86, None), (2.0, None)])
def test_bf16_only_when_faster_by_the_margin(timings, bf16_seconds, chosen):
    seconds, _ = timings
    seconds["bf16"] = bf16_seconds  # fp32 takes 1.0 s; MARGIN = 0.85
    assert precision.resolve_precision("auto", torch.device("cpu"), _model(), 512, "train") is chosen


def test_the_decision_is_cached_per_kind_and_logged(timings, caplog, tmp_path):
    seconds, calls = timings
    seconds["bf16"] = 0.5
    model = _model()
    with caplog.at_level(logging.INFO, logger="multikpi"):
        assert precision.resolve_precision("auto", torch.device("cpu"), model, 512, "train") is torch.bfloat16
    assert len(calls) == 1 and "fp32 1000.00 ms, bf16 500.00 ms -> bf16 autocast" in caplog.text
    seconds["bf16"] = 5.0  # a second run reads the cache: no probe, the same choice
    assert precision.resolve_precision("auto", torch.device("cpu"), model, 512, "train") is torch.bfloat16
    assert len(calls) == 1
    assert precision.resolve_precision("auto", torch.device("cpu"), model, 512, "infer") is None  # its own probe
    assert len(calls) == 2
    cache = json.loads((tmp_path / "cache" / "precision.json").read_text())
    assert sorted(entry["bf16"] for entry in cache.values()) == [False, True]
    assert all(f"torch {torch.__version__}" in key for key in cache)


def test_a_probe_stopped_early_reads_slower_by_far_also_from_the_cache(timings, caplog):
    seconds, calls = timings
    seconds["bf16"] = float("inf")  # what _time_both returns without native bf16
    model = _model()
    with caplog.at_level(logging.INFO, logger="multikpi"):
        for _ in range(2):  # measured, then cached
            assert precision.resolve_precision("auto", torch.device("cpu"), model, 512, "infer") is None
    assert len(calls) == 1
    assert "bf16 slower by far -> fp32" in caplog.text
    assert "(cached probe: fp32 1000.00 ms, bf16 slower by far)" in caplog.text
    assert "1000000000" not in caplog.text


def test_forced_precisions_never_probe(timings):
    _, calls = timings
    assert precision.resolve_precision("fp32", torch.device("cpu"), _model()) is None
    assert precision.resolve_precision("bf16", torch.device("cpu"), _model()) is torch.bfloat16
    assert precision.resolve_precision("auto", torch.device("cpu"), None) is None  # nothing to measure
    assert calls == []


def test_the_real_probe_returns_positive_times():
    shapes = precision.gemm_shapes(_model())
    fp32, bf16 = precision._time_both(shapes, 256, "train")
    assert 0 < fp32 < 1.0 and 0 < bf16
    assert 0 < precision._time_gemms(shapes, 256, "infer", None) < 1.0


def test_an_unwritable_cache_only_means_probing_again(timings, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MULTIKPI_CACHE_DIR", str(blocker / "cache"))
    _, calls = timings
    for _ in range(2):
        assert precision.resolve_precision("auto", torch.device("cpu"), _model(), 512, "infer") is None
    assert len(calls) == 2
