"""lopt.momentum: a recurrent optimizer's modes read as momentum (Maheswaranathan et al. 2021 sec. 4.1, App. B),
checked on linear systems whose modes are known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_recurrent import _linear, _random_basis

from lopt import momentum, optimizers, recurrent, tasks, unroll


def test_reduced_single_mode_optimizer_of_a_one_mode_system_equals_the_full_one():
    # three-dimensional linear system in which only the slow mode is driven and read out
    p = _random_basis(3, seed=1)
    betas = np.array([0.8, 0.3, -0.1])
    jac = p @ np.diag(betas) @ np.linalg.inv(p)
    b = p @ np.array([1.0, 0.0, 0.0])
    w = -0.2 * np.linalg.inv(p)[0]
    cell, readout = _linear(jac, b, w)
    h0 = jnp.asarray(p @ np.array([0.5, 0.0, 0.0]), jnp.float32)
    m = recurrent.modes(cell, readout, jnp.zeros(3))
    full = recurrent.as_optimizer(cell, readout, h0)
    reduced = momentum.reduced_optimizer(m, readout, h0, keep=0)
    task = tasks.Quadratic.from_eigenvalues(jax.random.PRNGKey(2), [0.3, 1.0, 3.0])
    a = unroll.unroll(task, full, unroll.init_state(task, full, None), None, 40)
    r = unroll.unroll(task, reduced, unroll.init_state(task, reduced, None), None, 40)
    np.testing.assert_allclose(r.losses, a.losses, rtol=1e-4)
    # keeping a mode that carries nothing changes nothing either; dropping the slow mode does
    r2 = momentum.reduced_optimizer(m, readout, h0, keep=[0, 1])
    r2 = unroll.unroll(task, r2, unroll.init_state(task, r2, None), None, 40)
    np.testing.assert_allclose(r2.losses, a.losses, rtol=1e-4)
    r3 = momentum.reduced_optimizer(m, readout, h0, keep=1)
    r3 = unroll.unroll(task, r3, unroll.init_state(task, r3, None), None, 40)
    assert float(r3.losses[-1]) == pytest.approx(float(r3.losses[0]))


def test_complex_mode_pair_reduction_is_real_and_exact():
    # a rotation-with-decay (damped oscillation) is one complex-conjugate pair: reducing to either
    # member reproduces the full system
    rho, phi = 0.9, 0.4
    jac = rho * np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])
    cell, readout = _linear(jac, np.array([1.0, 0.0]), np.array([-0.1, 0.05]))
    m = recurrent.modes(cell, readout, jnp.zeros(2))
    np.testing.assert_allclose(np.abs(m.eigenvalues), rho, rtol=1e-6)
    task = tasks.Quadratic.from_eigenvalues(jax.random.PRNGKey(3), [0.5, 1.5])
    full = recurrent.as_optimizer(cell, readout, jnp.zeros(2))
    red = momentum.reduced_optimizer(m, readout, jnp.zeros(2), keep=0)
    a = unroll.unroll(task, full, unroll.init_state(task, full, None), None, 30)
    r = unroll.unroll(task, red, unroll.init_state(task, red, None), None, 30)
    np.testing.assert_allclose(r.losses, a.losses, rtol=1e-4)


def test_along_direction_tells_a_momentum_like_offset_from_a_slope_change():
    # state h = (velocity v, gain k); update at gradient g: -(v + (0.1 + k) g). Along v a pure offset (momentum's
    # velocity, Fig. 2c); along k a change of slope only.
    cell = lambda h, g: jnp.stack([h[0] + (0.1 + h[1]) * g, h[1]])
    readout = lambda h: -h[0]
    shifts, grads = np.linspace(-0.5, 0.5, 5), np.linspace(-1.0, 1.0, 41)
    v = momentum.along_direction(cell, readout, jnp.zeros(2), [2.0, 0.0], shifts, grads)  # any length: normalised
    k = momentum.along_direction(cell, readout, jnp.array([0.0, 1.0]), [0.0, 1.0], shifts, grads)
    assert v["monotone"] and v["offset_range"] == pytest.approx(1.0, rel=1e-5) and v["slope_rel_range"] < 1e-6
    np.testing.assert_allclose(v["eff_lr"], 0.1, rtol=1e-5)
    assert k["offset_range"] < 1e-6 and k["slope_rel_range"] == pytest.approx(1.0 / 1.1, rel=1e-4)
    assert v["momentum_likeness"] > 1e3 * k["momentum_likeness"]


def test_separation_of_the_slowest_mode():
    assert momentum.separation([0.9, 0.6, 0.59, 0.59, 0.58, 0.57]) == pytest.approx(30.0, rel=1e-6)
    assert momentum.separation([0.6, 0.59, 0.58, 0.57]) == pytest.approx(1.0, rel=1e-6)
    # a complex pair (equal magnitudes) counts once
    assert momentum.separation([0.9, 0.9, 0.6, 0.6, 0.58]) == pytest.approx(15.0, rel=1e-6)


def test_mode_hyperparameters_and_heavy_ball_optimum():
    beta, lr = 0.7, 0.2
    cell, readout = _linear(np.array([[beta]]), np.array([1.0]), np.array([-lr]))
    assert momentum.mode_hyperparameters(recurrent.modes(cell, readout, jnp.zeros(1)), 0) == pytest.approx((beta, lr))
    # a damped rotation: one complex pair, counted with its conjugate (twice the real part of one member's rate)
    rho, phi = 0.9, 0.4
    jac = rho * np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])
    m = recurrent.modes(*_linear(jac, np.array([1.0, 0.0]), np.array([-0.1, 0.05])), jnp.zeros(2))
    b, r = momentum.mode_hyperparameters(m, 0)
    assert b == pytest.approx(rho, rel=1e-6) and r == pytest.approx(2 * m.learning_rates[0].real, rel=1e-9)
    # Polyak's optimum makes both ends of the spectrum contract at the same rate sqrt(beta)
    lr_star, beta_star = momentum.heavy_ball_optimum(0.25, 4.0)
    assert lr_star == pytest.approx(4 / 2.5**2) and beta_star == pytest.approx((1.5 / 2.5) ** 2)
    for lam in (0.25, 4.0):
        companion = np.array([[1 + beta_star - lr_star * lam, -beta_star], [1.0, 0.0]])
        assert np.max(np.abs(np.linalg.eigvals(companion))) == pytest.approx(np.sqrt(beta_star), rel=1e-4)


def test_momentum_fit_of_heavy_ball_momentum():
    """A 2-unit linear system that is heavy-ball momentum on its first unit and carries a fast, unread second mode:
    the fit finds the slow mode's (beta, lr), a separated slow mode, and a single-mode reduction as good as the full
    optimizer (ratio 1), on linear regression problems."""
    beta, lr = 0.8, 0.05
    cell, readout = _linear(np.diag([beta, 0.1]), np.array([1.0, 1.0]), np.array([-lr, 0.0]))
    fam = tasks.LinearRegressionFamily(dim=4, num_data=8)
    fit = momentum.momentum_fit(cell, readout, jnp.zeros(2), fam, jax.random.PRNGKey(0), jax.random.PRNGKey(1),
                                num_runs=4, num_steps=30, eval_runs=3, num_seeds=4, fp_steps=200)
    assert (fit.slow_beta, fit.slow_lr) == pytest.approx((beta, lr), rel=1e-4)
    assert fit.separation == float("inf")  # two distinct magnitudes: no bulk to compare with
    assert set(fit.curves) == {"full GRU", "slow mode only", "full linearisation"}
    assert all(c.shape == (3, 30) for c in fit.curves.values()) and fit.floor.shape == (3, 1)
    assert fit.excess_over_full("slow mode only") == pytest.approx(1.0, rel=1e-3)
    assert fit.excess_over_full("full linearisation") == pytest.approx(1.0, rel=1e-3)
    assert np.all(fit.excess("full GRU") >= 1e-12)
    ref = np.asarray(recurrent.loss_curves(optimizers.momentum(lr, beta), fam, jax.random.PRNGKey(1), 3, 30))
    np.testing.assert_allclose(fit.curves["full GRU"], ref, rtol=1e-4)
