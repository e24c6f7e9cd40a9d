"""The per-parameter MLP learned optimizer (Metz et al. 2019 sec. 4.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import tasks, unroll
from lopt.learned import MLPOptimizer


def _task():
    return tasks.Quadratic.from_eigenvalues(jax.random.PRNGKey(0), [0.5, 1.0, 2.0])


def test_size_and_feature_groups():
    full = MLPOptimizer()
    theta = full.init(jax.random.PRNGKey(0))
    n_weights = sum(x.size for x in jax.tree.leaves(theta))
    assert 500 < n_weights < 1500  # "about 1k weights"
    assert full.num_inputs == 2 + 5 + 9
    assert MLPOptimizer(use_momentum=False).num_inputs == 2 + 9
    assert MLPOptimizer(use_time=False).num_inputs == 2 + 5


def test_features_are_normalised_per_tensor():
    opt = MLPOptimizer(use_time=False)
    g = jnp.arange(1.0, 7.0).reshape(2, 3) * 100.0
    x = opt.features(g, g * 0.01, jnp.zeros((2, 3, 5)) + 1e-3, jnp.array(0.0))
    rms = jnp.sqrt(jnp.mean(x**2, axis=(0, 1)))
    np.testing.assert_allclose(rms, 1.0, rtol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"use_momentum": False}, {"use_time": False}])
def test_fresh_optimizer_takes_small_finite_steps(kw):
    lopt = MLPOptimizer(**kw)
    opt = lopt.opt_fn(lopt.init(jax.random.PRNGKey(1)))
    task = _task()
    res = jax.jit(lambda: unroll.unroll(task, opt, unroll.init_state(task, opt, None), None, 10))()
    step = jnp.abs(res.state.params - task.w0)
    assert jnp.all(jnp.isfinite(res.losses))
    assert 0 < float(step.max()) < 10 * 10 * lopt.step_mult * 2  # ~step_mult per step, 10 steps
    assert int(res.state.step) == 10


def test_outer_gradient_is_finite_and_matches_finite_differences():
    lopt = MLPOptimizer(step_mult=0.1)
    theta = lopt.init(jax.random.PRNGKey(2))
    task = _task()
    f = jax.jit(lambda th: unroll.meta_loss(th, lopt.opt_fn, task, None, 20))
    g = jax.grad(f)(theta)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
    direction = jax.tree.map(lambda x: x / jnp.sqrt(sum(jnp.sum(y**2) for y in jax.tree.leaves(g))), g)
    eps = 1e-2
    plus = f(jax.tree.map(lambda t, d: t + eps * d, theta, direction))
    minus = f(jax.tree.map(lambda t, d: t - eps * d, theta, direction))
    directional = sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(direction)))
    np.testing.assert_allclose((plus - minus) / (2 * eps), directional, rtol=5e-2)


def test_update_requires_params():
    lopt = MLPOptimizer()
    opt = lopt.opt_fn(lopt.init(jax.random.PRNGKey(0)))
    p = jnp.zeros(3)
    with pytest.raises(ValueError, match="params"):
        opt.update(p, opt.init(p))
