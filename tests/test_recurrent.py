"""lopt.recurrent: fixed points, linearisation and eigenmodes of recurrent optimizers
(Maheswaranathan et al. 2021 sec. 3-4, App. B, C), checked on systems whose answer is known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import optimizers, recurrent, tasks, unroll
from lopt.learned import GRUOptimizer


def _linear(jac: np.ndarray, b: np.ndarray, w: np.ndarray, h_star: np.ndarray | None = None):
    """h' = h* + J (h - h*) + b g, x' = x + w^T h' (exactly linear: App. C eq. 3 holds everywhere)."""
    J, B, W = (jnp.asarray(x, jnp.float32) for x in (jac, b, w))
    hs = jnp.zeros(J.shape[0]) if h_star is None else jnp.asarray(h_star, jnp.float32)
    return (lambda h, g: hs + J @ (h - hs) + B * g), (lambda h: W @ h)


def _random_basis(n: int, seed: int = 0) -> np.ndarray:
    p = np.random.default_rng(seed).normal(size=(n, n))
    return p + n * np.eye(n)  # well conditioned, not orthogonal: left != right eigenvectors


def test_heavy_ball_momentum_recovered_exactly():
    beta, lr = 0.9, 0.05
    cell, readout = _linear(np.array([[beta]]), np.array([1.0]), np.array([-lr]))
    m = recurrent.modes(cell, readout, jnp.zeros(1))
    assert m.eigenvalues[0] == pytest.approx(beta, rel=1e-6)
    assert m.learning_rates[0] == pytest.approx(lr, rel=1e-6)
    # and the system is heavy-ball momentum: same updates as optax on a quadratic
    task = tasks.Quadratic.from_eigenvalues(jax.random.PRNGKey(0), [0.5, 2.0])
    opt = recurrent.as_optimizer(cell, readout, jnp.zeros(1))
    ref = optimizers.momentum(lr, beta)
    a = unroll.unroll(task, opt, unroll.init_state(task, opt, None), None, 30)
    b = unroll.unroll(task, ref, unroll.init_state(task, ref, None), None, 30)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5)


def test_aggregated_momentum_three_timescales_in_a_rotated_basis():
    betas, lrs = np.array([0.95, 0.6, 0.2]), np.array([0.01, 0.1, 0.3])
    p = _random_basis(3)
    jac = p @ np.diag(betas) @ np.linalg.inv(p)
    b = p @ np.ones(3)  # each mode fed the gradient with weight 1 ...
    w = -lrs @ np.linalg.inv(p)  # ... and read out with -lr_j
    h_star = np.array([0.3, -0.2, 0.1])
    cell, readout = _linear(jac, b, w, h_star)
    m = recurrent.modes(cell, readout, jnp.asarray(h_star, jnp.float32))
    np.testing.assert_allclose(m.eigenvalues.real, betas, rtol=1e-4)  # sorted slowest first
    np.testing.assert_allclose(m.eigenvalues.imag, 0.0, atol=1e-6)
    np.testing.assert_allclose(m.learning_rates.real, lrs, rtol=1e-4)
    np.testing.assert_allclose(m.left @ m.right, np.eye(3), atol=1e-8)
    # the impulse response of the system is the sum of the modes' momentum kernels
    impulse = np.zeros(12)
    impulse[0] = 1.0
    hs = recurrent.trajectory(cell, jnp.asarray(h_star, jnp.float32), jnp.asarray(impulse))
    updates = np.asarray(jax.vmap(readout)(hs[1:])) - float(readout(jnp.asarray(h_star, jnp.float32)))
    kernel = -np.array([np.sum(lrs * betas**k) for k in range(12)])
    np.testing.assert_allclose(updates, kernel, rtol=1e-4, atol=1e-6)


def test_fixed_point_finder_finds_known_fixed_points():
    # h' = tanh(2 h + g) per unit: for g = 0 each unit has fixed points 0 (unstable) and +-x*, 2 units
    # -> 9 fixed points; x* solves x = tanh(2x)
    cell = lambda h, g: jnp.tanh(2.0 * h + g)
    x_star = 0.9575040240772687
    seeds = jax.random.uniform(jax.random.PRNGKey(0), (64, 2), minval=-1.5, maxval=1.5)
    fp = recurrent.fixed_points(cell, 0.0, seeds, tol=1e-10, num_steps=300, learning_rate=5e-2)
    expected = np.array([(a, b) for a in (-x_star, 0.0, x_star) for b in (-x_star, 0.0, x_star)])
    assert len(fp.points) == 9 and np.all(fp.speeds <= 1e-10)
    dist = np.linalg.norm(fp.points[:, None, :] - expected[None], axis=-1)
    assert np.all(dist.min(axis=1) < 1e-4) and np.all(dist.min(axis=0) < 1e-4)
    # slow points also returns the points that are not fixed, with their speeds: a system without any
    # fixed point (h' = h + 1) has only fast "slow points"
    sp = recurrent.slow_points(lambda h, g: h + 1.0 + g, 0.0, seeds[:4], num_steps=10)
    assert np.all(sp.speeds == pytest.approx(1.0))
    assert len(recurrent.fixed_points(lambda h, g: h + 1.0 + g, 0.0, seeds[:4], num_steps=10).points) == 0


def test_update_function_effective_lr_and_autonomous_dynamics():
    # RMSProp-like recurrent optimizer: state nu, h' = 0.5 h + 1 (relaxes to 2), update -g / h
    cell = lambda h, g: 0.5 * h + 1.0 + 0.0 * g
    lr = lambda h: h[1] if h.shape[0] > 1 else 1.0
    cell2 = lambda h, g: jnp.stack([g, 0.5 * h[1] + 1.0])
    readout = lambda h: -0.3 * h[0] / h[1]
    h = jnp.array([0.0, 3.0])
    np.testing.assert_allclose(recurrent.update_function(cell2, readout, h, jnp.array([-1.0, 2.0])),
                               [0.3 / 2.5, -0.6 / 2.5], rtol=1e-6)
    assert float(recurrent.effective_learning_rate(cell2, readout, h)) == pytest.approx(0.3 / 2.5)
    hs = recurrent.autonomous(cell, jnp.array([0.0]), 6)
    np.testing.assert_allclose(hs[:, 0], 2.0 - 2.0 * 0.5 ** np.arange(7), rtol=1e-6)
    del lr


def test_gru_parts_match_the_gru_optimizer_and_geometry_helpers():
    gru = GRUOptimizer(hidden=6)
    theta = gru.init(jax.random.PRNGKey(4))
    cell, readout, h0 = recurrent.gru_parts(gru, theta)
    task = tasks.LinearRegressionFamily(dim=5, num_data=8).sample(jax.random.PRNGKey(5))
    run = recurrent.optimize(cell, readout, h0, task.loss, task.x0, 15)
    ref = unroll.unroll(task, gru.opt_fn(theta), unroll.init_state(task, gru.opt_fn(theta), None), None, 15)
    np.testing.assert_allclose(run.losses, ref.losses, rtol=1e-5)
    np.testing.assert_allclose(run.states[-1], ref.state.opt_state.h, rtol=1e-5, atol=1e-6)
    assert run.states.shape == (16, 5, 6) and run.grads.shape == (15, 5)
    # effective learning rate agrees with lopt.dynamics on the optax form of the same optimizer
    from lopt import dynamics
    from lopt.learned.gru import GRUOptState

    h = run.states[-1, 0]
    a = float(recurrent.effective_learning_rate(cell, readout, h))
    b = float(dynamics.effective_learning_rate(gru.opt_fn(theta), GRUOptState(h)))
    assert a == pytest.approx(b, rel=1e-5)
    # total variance of identical runs is zero; PCA recovers a planted direction
    assert np.allclose(recurrent.total_variance(np.stack([run.states[:, 0]] * 3)), 0.0)
    x = np.outer(np.linspace(-1, 1, 50), [3.0, 0, 0, 4.0, 0, 0]) / 5.0
    pc = recurrent.pca(x, k=1)
    np.testing.assert_allclose(np.abs(pc.components[0]), [0.6, 0, 0, 0.8, 0, 0], atol=1e-8)
    assert pc.explained[0] == pytest.approx(1.0)


def test_family_rebuilds_the_saved_task_family():
    # notebook 10 saves dataclasses.asdict(family) in the weights' meta data (lists after JSON)
    fam = recurrent.family("two_moons", hidden=[16, 16, 16], num_data=32, noise=0.1, data_seed=0)
    assert fam == tasks.TwoMoonsFamily(hidden=(16, 16, 16), num_data=32)
    assert recurrent.family("linear_regression") == tasks.LinearRegressionFamily()
    with pytest.raises(ValueError, match="allowed values"):
        recurrent.family("mnist")


def test_linear_range_of_a_soft_clipping_update_function():
    # u(g) = -tanh(g): slope 1 at 0; |g - tanh(g)| <= 0.1 |g| holds up to tanh(g) = 0.9 g, g* = 0.5840
    cell = lambda h, g: jnp.tanh(g) * jnp.ones_like(h)
    readout = lambda h: -h[0]
    h = jnp.zeros(2)
    assert recurrent.linear_range(cell, readout, h, gmax=2.0, num=2000) == pytest.approx(0.5840, abs=2e-3)
    # a linear update function is linear everywhere: the whole range
    lin = lambda hh, g: g * jnp.ones_like(hh)
    assert recurrent.linear_range(lin, readout, h, gmax=3.0) == 3.0
    with pytest.raises(ValueError):
        recurrent.linear_range(cell, readout, h, gmax=0.0)


def test_s_curve_of_a_linear_system_is_its_known_fixed_points():
    # F(h, g) = A h + b g: fixed point h* = (I - A)^-1 b g; update -w.h', effective learning rate w.b everywhere
    a = jnp.asarray([0.5, 0.8, 0.2])
    b, w = jnp.asarray([1.0, -0.5, 0.3]), jnp.asarray([0.4, 0.1, -0.2])
    cell = lambda h, g: a * h + b * g
    readout = lambda h: -(w @ h)
    gs = np.linspace(-1.0, 1.0, 5)
    visited = np.random.default_rng(0).normal(size=(4, 6, 3))
    sc = recurrent.s_curve(cell, readout, jnp.zeros(3), gs, visited, num_seeds=3, num_steps=5, fp_steps=200)
    np.testing.assert_allclose(sc.points, np.outer(gs, b / (1 - a)), atol=1e-5)
    assert sc.speeds.max() < 1e-10 and sc.gs.tolist() == gs.tolist()
    np.testing.assert_allclose(sc.eff_lr, float(w @ b), rtol=1e-5)


def test_loss_curves_are_the_unroll_losses_of_each_problem():
    fam = tasks.LinearRegressionFamily(dim=4, num_data=6)
    opt = optimizers.momentum(0.3, 0.5)
    curves = np.asarray(recurrent.loss_curves(opt, fam, jax.random.PRNGKey(2), 3, 7))
    k_task, k_init = jax.random.split(jax.random.split(jax.random.PRNGKey(2), 3)[1])
    task = fam.sample(k_task)
    ref = unroll.unroll(task, opt, unroll.init_state(task, opt, k_init), None, 7).losses
    assert curves.shape == (3, 7)
    np.testing.assert_allclose(curves[1], ref, rtol=1e-6)


def test_s_curve_shape_tells_an_s_from_a_line():
    gs = np.linspace(-3, 3, 41)
    s_pts = np.stack([np.tanh(gs), 0.1 * np.tanh(gs) ** 2], 1)  # saturates toward both ends
    line = np.stack([gs, 0.5 * gs], 1)
    s, l = recurrent.s_curve_shape(gs, s_pts), recurrent.s_curve_shape(gs, line)
    assert s["monotone"] and s["pc1_explained"] > 0.99 and s["saturation"] > 10
    assert l["monotone"] and l["pc1_explained"] > 0.999 and l["saturation"] == pytest.approx(1.0, rel=1e-6)
    assert not recurrent.s_curve_shape(gs, np.stack([gs ** 2, gs], 1))["monotone"]
