"""Broad lines beyond the network's training set (issue 20: every filter at its bound, broad
lines included). The SN3 network was trained on broadenings up to 200 km/s; a fit it starts
was bounded at its mean + 3 sigma, so lines of 200-300 km/s ended at that bound (STATUS 3,
fluxes biased: ``benchmarks/bench_accuracy.py`` SN3-broad). A network's bound that reaches the
edge of its training range now opens to the fit's physical range."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import lucijax
from lucijax.io.memory import MemoryCube
from lucijax.simulate import make_cube
from lucijax.solvers.fitting import FitSettings
from lucijax.solvers.start import TRAINING_EDGE, network_start

pytestmark = pytest.mark.timeout(300)

LINES = ["Halpha", "NII6583", "NII6548"]


def test_a_bound_at_the_training_edge_opens_to_the_physical_range():
    settings = FitSettings(velocity_range_kms=(-600.0, 600.0), broadening_range_kms=(0.0, 300.0))
    trained = ((-500.0, 500.0), (0.0, 200.0))
    mean, sigma = jnp.asarray([20.0, 195.0]), jnp.asarray([4.0, 6.0])
    _, lo, hi = network_start(mean, sigma, settings, 1, True, 3.0, trained)
    assert float(hi[1]) == 300.0 and float(lo[1]) == pytest.approx(177.0)
    assert float(lo[0]) == pytest.approx(8.0) and float(hi[0]) == pytest.approx(32.0)
    # inside the training range nothing changes
    inside = jnp.asarray([20.0, 100.0])
    _, lo2, hi2 = network_start(inside, sigma, settings, 1, True, 3.0, trained)
    _, lo3, hi3 = network_start(inside, sigma, settings, 1, True, 3.0, None)
    np.testing.assert_array_equal(np.asarray(lo2), np.asarray(lo3))
    np.testing.assert_array_equal(np.asarray(hi2), np.asarray(hi3))
    # the velocity edges too: a bound reaching -455 (within 10 % of -500) opens to -600
    _, lo4, _ = network_start(jnp.asarray([-440.0, 50.0]), jnp.asarray([5.0, 5.0]), settings, 1, True, 3.0, trained)
    assert -440.0 - 3 * 5.0 <= -500.0 + TRAINING_EDGE * 1000.0 and float(lo4[0]) == -600.0


@pytest.mark.timeout(400)
def test_broad_lines_are_fitted_to_truth_with_the_network_start():
    syn = make_cube(8, 8, lines=LINES, seed=3, broadening_range_kms=(210.0, 280.0), snr_range=(20.0, 60.0))
    res = lucijax.fit(MemoryCube.from_synthetic(syn), lucijax.Model(LINES), lucijax.MAP(start="mdn"),
                      execution=lucijax.Execution(progress=False))
    assert np.mean(res.maps["STATUS"] == 0) >= 0.9
    b, berr = res.maps["HALPHA_BROADENING"], res.maps["HALPHA_BROADENING_ERR"]
    pull = (b - syn.truth["BROADENING"]) / berr
    assert abs(np.median(pull)) < 0.6 and np.std(pull) < 1.6, (np.median(pull), np.std(pull))
    # the network alone reads these lines as <= ~200 km/s: the fit went past its bound
    assert np.median(b - res.maps["MDN_BROADENING"]) > 10.0
