"""Trajectory spread and outer-loss slices of lopt.landscape (Metz et al. 2019 Fig. 2d-f)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import landscape, optimizers, tasks, unroll
from lopt.learned import MLPOptimizer


@pytest.fixture(scope="module")
def quad():
    return tasks.Quadratic.from_eigenvalues(jax.random.PRNGKey(0), [0.5, 1.0, 2.0])


def test_trajectories_match_gradient_descent(quad):
    lrs = np.array([0.1, 0.2])
    losses, traj = landscape.trajectories(optimizers.sgd, quad, lrs, 5, jax.random.PRNGKey(1))
    assert losses.shape == (2, 5) and traj.shape == (2, 6, 3)
    for lr, w_traj in zip(lrs, np.asarray(traj)):
        w = np.asarray(quad.w0)
        for t in range(6):
            np.testing.assert_allclose(w_traj[t], w, rtol=1e-5, atol=1e-6)
            w = w - lr * np.asarray(quad.hessian) @ w


def test_flatten_trajectories_concatenates_leaves():
    params = {"a": np.arange(12.0).reshape(2, 3, 2), "b": np.ones((2, 3, 2, 2))}
    flat = landscape.flatten_trajectories(params)
    assert flat.shape == (2, 3, 6)
    np.testing.assert_array_equal(flat[1, 2, :2], [10.0, 11.0])


def test_random_projection_is_seeded_and_preserves_distances_on_average():
    x = np.random.default_rng(0).normal(size=(200, 2000))
    p = landscape.random_projection(x, 2, seed=3)
    assert p.shape == (200, 2)
    np.testing.assert_array_equal(p, landscape.random_projection(x, 2, seed=3))
    ratio = np.mean(np.sum(p**2, -1)) / np.mean(np.sum(x**2, -1))
    assert abs(ratio - 1.0) < 0.1  # E||Px||^2 = ||x||^2


def test_spread_per_step_by_hand():
    # two runs in 1D: identical at step 0, at +-1 and +-3 from their mean later
    x = np.array([[[0.0], [1.0], [4.0]], [[0.0], [-1.0], [-2.0]]])
    np.testing.assert_allclose(landscape.spread_per_step(x), [0.0, 1.0, 3.0])


def test_relative_spread_is_flat_for_a_linear_response():
    eps = np.linspace(-0.01, 0.01, 11)
    v = np.random.default_rng(0).normal(size=5)
    t = np.arange(6.0)
    x = (1 + eps)[:, None, None] * t[None, :, None] * v  # run r at step t: (1 + eps_r) t v
    rel = landscape.relative_spread_per_step(x)
    assert np.isnan(rel[0])
    np.testing.assert_allclose(rel[1:], rel[1], rtol=1e-10)
    np.testing.assert_allclose(rel[1], np.std(eps) / np.sqrt(1 + np.mean(eps**2)), rtol=1e-10)


def test_unit_and_random_directions():
    like = {"w": jnp.ones((3, 2)), "b": jnp.ones((2,))}
    u = landscape.unit_direction(like)
    assert float(landscape.tree_norm(u)) == pytest.approx(1.0, rel=1e-6)
    r = landscape.random_direction(jax.random.PRNGKey(0), like, orthogonal_to=like)
    assert float(landscape.tree_norm(r)) == pytest.approx(1.0, rel=1e-6)
    dot = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(r), jax.tree.leaves(u)))
    assert abs(dot) < 1e-6
    with pytest.raises(ValueError, match="nonzero"):
        landscape.unit_direction({"w": jnp.zeros(3)})


def test_slices_evaluate_theta_plus_directions():
    f = lambda th: jnp.sum(th["x"] ** 2) + 3.0 * th["y"]
    theta = {"x": jnp.array([1.0, 2.0]), "y": jnp.array(0.5)}
    d1 = {"x": jnp.array([1.0, 0.0]), "y": jnp.array(0.0)}
    d2 = {"x": jnp.array([0.0, 0.0]), "y": jnp.array(1.0)}
    alphas, betas = np.linspace(-1, 1, 5), np.array([0.0, 2.0])
    np.testing.assert_allclose(landscape.slice_1d(f, theta, d1, alphas), (1 + alphas) ** 2 + 4 + 1.5, rtol=1e-6)
    grid = landscape.slice_2d(f, theta, d1, d2, alphas, betas, batch_size=3)
    assert grid.shape == (5, 2)
    expected = (1 + alphas)[:, None] ** 2 + 4 + 3 * (0.5 + betas[None, :])
    np.testing.assert_allclose(grid, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="directions"):
        landscape.slice_values(f, theta, [d1], np.zeros((3, 2)))


def test_normalized_total_variation_counts_excursions():
    s = np.linspace(0, 1, 401)
    assert landscape.normalized_total_variation(s**2) == pytest.approx(1.0)
    assert landscape.normalized_total_variation(np.cos(2 * np.pi * s)) == pytest.approx(2.0, rel=1e-3)
    assert landscape.normalized_total_variation(np.sin(10 * np.pi * s)) == pytest.approx(10.0, rel=1e-2)


def test_roughness_2d_separates_smooth_from_rough():
    a = np.linspace(-1, 1, 32)
    smooth = np.exp(-(a[:, None] ** 2) - 2 * a[None, :] ** 2)  # one bump: 1 up and 1 down per line
    rough = smooth + 0.2 * np.random.default_rng(0).normal(size=smooth.shape)
    rs, rr = landscape.roughness_2d(smooth), landscape.roughness_2d(rough)
    assert rs["normalized_total_variation"] == pytest.approx(2.0, rel=0.05)
    assert rr["normalized_total_variation"] > 3 and rr["high_frequency_energy"] > 10 * rs["high_frequency_energy"]


def test_mlp_normalized_sgd_theta_implements_normalized_gradient_descent():
    lopt = MLPOptimizer(hidden=4)
    theta = landscape.mlp_normalized_sgd_theta(lopt, 0.05)
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    grads = {"w": jnp.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])}
    opt = lopt.opt_fn(theta)
    updates, _ = opt.update(grads, opt.init(params), params)
    g = grads["w"]
    np.testing.assert_allclose(updates["w"], -0.05 * g / jnp.sqrt(jnp.mean(g**2)), rtol=1e-5)
    noisy = landscape.mlp_normalized_sgd_theta(lopt, 0.05, noise=0.1, key=jax.random.PRNGKey(2))
    assert float(landscape.tree_norm(jax.tree.map(jnp.subtract, noisy, theta))) > 0
    with pytest.raises(ValueError, match="hidden"):
        landscape.mlp_normalized_sgd_theta(MLPOptimizer(hidden=1), 0.05)


def test_outer_loss_fn_is_the_mean_loss_after_each_update(quad):
    lopt = MLPOptimizer(hidden=4)
    theta = landscape.mlp_normalized_sgd_theta(lopt, 0.05, noise=0.1, key=jax.random.PRNGKey(3))
    f = landscape.outer_loss_fn(lopt, quad, 4, jax.random.PRNGKey(0), objective="train")
    res, _ = unroll.run(lopt.opt_fn, theta, quad, None, 5)
    assert float(f(theta)) == pytest.approx(float(jnp.mean(res.losses[1:])), rel=1e-5)
    g = jax.grad(f)(theta)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
