"""lopt.landscape: roughness measures of sampled outer-loss landscapes."""

from __future__ import annotations

import numpy as np
import pytest

from lopt import landscape


def test_jump_statistics_on_hand_made_arrays():
    v = np.array([0.0, 1.0, 0.5, 3.5, 3.5, 3.0])
    np.testing.assert_allclose(landscape.jumps(v), [1.0, 0.5, 3.0, 0.0, 0.5])
    assert landscape.max_jump(v) == 3.0
    assert landscape.count_jumps(v, 0.75) == 2
    assert landscape.count_jumps(v, 0.5) == 2  # strictly greater than the threshold
    assert landscape.count_jumps(v, 0.4) == 4
    assert landscape.count_jumps(v, 5.0) == 0
    assert landscape.total_variation(v) == pytest.approx(5.0)


def test_jump_statistics_along_last_axis():
    v = np.array([[0.0, 2.0, 0.0], [1.0, 1.0, 1.5]])
    np.testing.assert_allclose(landscape.max_jump(v), [2.0, 0.5])
    np.testing.assert_array_equal(landscape.count_jumps(v, 1.0), [2, 0])
    np.testing.assert_allclose(landscape.total_variation(v), [4.0, 0.5])


def test_total_variation_of_monotone_is_range():
    v = np.sort(np.random.default_rng(0).normal(size=50))
    assert landscape.total_variation(v) == pytest.approx(v[-1] - v[0])


def test_high_frequency_energy():
    x = np.linspace(0.0, 1.0, 256, endpoint=False)
    low_sine = np.sin(2 * np.pi * 3 * x)
    ramp = 5.0 * x + 2.0
    alternating = np.where(np.arange(256) % 2 == 0, 1.0, -1.0)
    assert landscape.high_frequency_energy(low_sine) < 1e-6
    assert landscape.high_frequency_energy(ramp) < 0.05
    assert landscape.high_frequency_energy(alternating) > 0.99
    # a smooth landscape with a few isolated jumps carries noticeably more high-frequency energy
    jumpy = low_sine + (np.random.default_rng(0).random(256) < 0.05) * 3.0
    assert landscape.high_frequency_energy(jumpy) > 10 * landscape.high_frequency_energy(low_sine) + 0.05
    # batched along the last axis, and scale-free
    both = landscape.high_frequency_energy(np.stack([low_sine, 7.0 * alternating]))
    assert both.shape == (2,) and both[0] < 1e-6 and both[1] > 0.99
    # constants have no spectrum at all (no division by zero)
    assert landscape.high_frequency_energy(np.full(64, 3.0)) == 0.0


def test_near_jumps_mask():
    v = np.array([0.0, 0.1, 2.0, 2.1, 2.2, 0.0])
    mask = landscape.near_jumps(v, 1.0)
    np.testing.assert_array_equal(mask, [False, True, True, False, True, True])
    assert not landscape.near_jumps(v, 10.0).any()


def test_gradient_explained_fraction_smooth():
    thetas = np.linspace(-1.0, 1.0, 4001)
    width = 0.05
    values = np.tanh(thetas / width)
    grads = (1.0 - np.tanh(thetas / width) ** 2) / width
    step = np.abs(np.diff(values))
    threshold = 1e-3
    assert threshold < step.max()
    frac = landscape.gradient_explained_fraction(thetas, values, grads, threshold)
    assert frac == pytest.approx(1.0, abs=1e-3)


def test_gradient_explained_fraction_step():
    thetas = np.linspace(0.0, 1.0, 101)
    values = np.where(thetas < 0.5, 0.0, 1.0) + 0.01 * thetas
    grads = np.zeros_like(thetas)
    frac = landscape.gradient_explained_fraction(thetas, values, grads, 0.5)
    assert frac == pytest.approx(0.0, abs=1e-12)
    # with a slope of 0.01 as its gradient, the flat parts are explained but not the jump
    frac_slope = landscape.gradient_explained_fraction(thetas, values, np.full_like(thetas, 0.01), 0.5)
    assert 0.0 < frac_slope < 0.01


def test_gradient_explained_fraction_none_without_jumps():
    thetas = np.linspace(0.0, 1.0, 11)
    values = 0.1 * thetas
    assert landscape.gradient_explained_fraction(thetas, values, np.full(11, 0.1), threshold=1.0) is None


def test_sweep_summary_on_a_step():
    thetas = np.linspace(0.0, 1.0, 11)
    values = np.where(thetas < 0.45, 0.0, -3.0)
    grads = np.zeros_like(thetas)
    grads[4] = 7.0  # a large gradient next to the jump, none elsewhere
    s = landscape.sweep_summary(thetas, values, grads, threshold=1.5)
    assert s["max_jump"] == 3.0 and s["n_jumps"] == 1
    assert s["max_abs_grad_near_jumps"] == 7.0 and s["max_abs_grad_elsewhere"] == 0.0
    assert s["frac_abs_grad_below_1e-3"] == 10 / 11
    assert np.isclose(s["grad_explained_fraction"], 0.5 * 7.0 * 0.1 / 3.0)


def test_near_jumps_window():
    v = np.zeros(20)
    v[10:] = 5.0  # one jump between points 9 and 10
    assert np.flatnonzero(landscape.near_jumps(v, 1.0, window=2)).tolist() == [7, 8, 9, 10, 11, 12]


def test_refine_jump_tells_a_step_from_a_steep_slope():
    step = lambda t: (np.where(t > 0.3, 1.0, 0.0), np.zeros_like(t))  # a true discontinuity at 0.3
    r = landscape.refine_jump(step, 0.0, 1.0, levels=3, points=11)
    assert r["jump"] == 1.0 and r["width"] == pytest.approx(1e-3) and r["max_abs_grad"] == 0.0
    slope = lambda t: (np.tanh((t - 0.3) / 1e-2), 1e2 / np.cosh((t - 0.3) / 1e-2) ** 2)  # steep but smooth
    r = landscape.refine_jump(slope, 0.0, 1.0, levels=3, points=11)
    assert r["jump"] < 0.2 and r["max_abs_grad"] > 50
