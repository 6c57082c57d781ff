"""The ONNX parity gate's tolerances (serve/backends.check_parity, serve/export.same_ranking), on
outputs constructed to sit just inside and just outside them."""
from __future__ import annotations

import numpy as np
import pytest

from multikpi.errors import ArtifactError
from multikpi.serve.backends import ATOL, RTOL, check_parity
from multikpi.serve.export import SCORE_RTOL, same_ranking


class Fixed:
    """A backend whose outputs are given arrays."""

    def __init__(self, name, outputs):
        self.name, self._outputs = name, outputs

    def outputs(self, categorical, dense, context=None):
        return self._outputs


def _gate(reference, candidate):
    return check_parity(Fixed("torch", {"t": np.asarray(reference, np.float32)}),
                        Fixed("onnx", {"t": np.asarray(candidate, np.float32)}), (None, None))


def test_the_absolute_tolerance_is_in_units_of_the_outputs_largest_magnitude():
    # RF1's case: 1.4e-6 apart at an output of 0.03 in a batch whose outputs reach 10
    reference = np.array([0.03, 10.0, -4.0])
    assert _gate(reference, reference + [1.4e-6, 0, 0]) == pytest.approx(1.4e-6, rel=0.05)
    with pytest.raises(ArtifactError, match=r"differs from the run's PyTorch model on 't' \(max abs difference "
                                            r"1\.2e-05; allowed rtol 1e-05, atol 1e-06 x 10"):
        _gate(reference, reference + [1.2e-5, 0, 0])  # beyond atol x 10 + rtol x 0.03


def test_small_outputs_keep_the_plain_tolerances():
    reference = np.array([0.03, 0.5, -0.2])  # largest magnitude below 1: the scale is 1
    limit = ATOL + RTOL * 0.03
    _gate(reference, reference + [0.8 * limit, 0, 0])
    with pytest.raises(ArtifactError, match="atol 1e-06 x 1,"):
        _gate(reference, reference + [1.5 * limit, 0, 0])


def test_a_nan_output_fails_the_gate():
    with pytest.raises(ArtifactError, match="max abs difference nan"):
        _gate([0.1, 0.2], [0.1, np.nan])


def test_near_ties_may_come_out_in_either_order_but_not_another_ranking():
    scores = np.array([0.9, 0.5, 0.5 * (1 + SCORE_RTOL / 10), 0.1, 0.4])
    reference_top = np.array([0, 2, 1])
    assert same_ranking(scores, reference_top, np.array([0, 2, 1]))
    assert same_ranking(scores, reference_top, np.array([0, 1, 2]))  # a swap of two tied scores
    assert not same_ranking(scores, reference_top, np.array([2, 0, 1]))  # 0.9 is no tie of 0.5
    assert not same_ranking(scores, reference_top, np.array([0, 2, 4]))  # 0.4 is not in the top 3
    tied_at_the_cut = np.array([0.9, 0.5, 0.3, 0.3 * (1 - SCORE_RTOL / 10)])
    assert same_ranking(tied_at_the_cut, np.array([0, 1, 2]), np.array([0, 1, 3]))
    assert not same_ranking(scores, reference_top, np.array([0, 2]))
