"""The per-coordinate GRU learned optimizer (Maheswaranathan et al. 2021 eqs. 1-2, App. D.2)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import tasks, unroll
from lopt.learned import GRUOptimizer

H = 8


def _params():
    return {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.array([0.5, -0.5])}


def test_theta_and_state_shapes():
    gru = GRUOptimizer(hidden=H)
    theta = gru.init(jax.random.PRNGKey(0))
    assert theta["w_in"].shape == (3, H) and theta["u"].shape == (3, H, H)
    assert theta["readout"].shape == (H,) and gru.initial_state(theta).shape == (H,)
    h1 = gru.cell(theta, gru.initial_state(theta), 0.3)
    assert h1.shape == (H,) and gru.readout(theta, h1).shape == ()
    opt = gru.opt_fn(theta)
    state = opt.init(_params())
    assert state.h["w"].shape == (2, 3, H) and state.h["b"].shape == (2, H)
    assert dataclasses.asdict(gru) == {"hidden": H, "input_scale": 1.0, "output_scale": 0.1}


def test_opt_fn_applies_cell_and_readout_per_coordinate():
    gru = GRUOptimizer(hidden=H, input_scale=0.5)
    theta = gru.init(jax.random.PRNGKey(1))
    theta["h0"] = jax.random.normal(jax.random.PRNGKey(2), (H,)) * 0.3
    opt = gru.opt_fn(theta)
    params = _params()
    grads = jax.tree.map(lambda p: jnp.sin(3.0 * p) + 0.2, params)
    state = opt.init(params)
    for _ in range(3):
        updates, new_state = opt.update(grads, state, params)
        for name in params:
            g, h = np.asarray(grads[name]).ravel(), np.asarray(state.h[name]).reshape(-1, H)
            for i in range(g.size):
                h1 = gru.cell(theta, jnp.asarray(h[i]), g[i])
                np.testing.assert_allclose(new_state.h[name].reshape(-1, H)[i], h1, rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(updates[name].ravel()[i], gru.readout(theta, h1), rtol=1e-5, atol=1e-7)
        state = new_state


def test_input_scale_rescales_the_gradient():
    theta = GRUOptimizer(hidden=H).init(jax.random.PRNGKey(3))
    h = jnp.full((H,), 0.1)
    a = GRUOptimizer(hidden=H, input_scale=0.1).cell(theta, h, 2.0)
    b = GRUOptimizer(hidden=H, input_scale=1.0).cell(theta, h, 0.2)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_fresh_optimizer_takes_small_steps():
    gru = GRUOptimizer()
    theta = gru.init(jax.random.PRNGKey(4))
    opt = gru.opt_fn(theta)
    task = tasks.LinearRegressionFamily().sample(jax.random.PRNGKey(5))
    res = unroll.unroll(task, opt, unroll.init_state(task, opt, None), None, 20, record_params=True)
    steps = np.abs(np.diff(np.asarray(res.params), axis=0))
    assert np.all(np.isfinite(res.losses))
    # |h| <= 1, so a step is at most output_scale * ||readout||_1, which is small at init
    bound = gru.output_scale * float(jnp.abs(theta["readout"]).sum())
    assert bound < 0.1
    assert 0 < steps.max() <= bound + 1e-6 and steps.max() < 0.05


def test_jit_vmap_grad_compose():
    gru = GRUOptimizer(hidden=H)
    theta = gru.init(jax.random.PRNGKey(6))
    family = tasks.LinearRegressionFamily(dim=4, num_data=6)
    batch = family.sample_many(jax.random.PRNGKey(7), 3)

    def meta(th, task):
        return unroll.meta_loss(th, gru.opt_fn, task, None, 10)

    f = jax.jit(lambda th: jnp.mean(jax.vmap(meta, in_axes=(None, 0))(th, batch)))
    value, grad = jax.value_and_grad(f)(theta)
    assert np.isfinite(float(value))
    assert set(grad) == set(theta)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(grad))
    assert float(jnp.abs(grad["readout"]).sum()) > 0 and float(jnp.abs(grad["h0"]).sum()) > 0
    # the gradient agrees with a finite difference along the readout
    d = {k: jnp.zeros_like(v) for k, v in theta.items()}
    d["readout"] = grad["readout"] / jnp.linalg.norm(grad["readout"])
    eps = 1e-2
    plus = f(jax.tree.map(lambda t, e: t + eps * e, theta, d))
    minus = f(jax.tree.map(lambda t, e: t - eps * e, theta, d))
    assert float((plus - minus) / (2 * eps)) == pytest.approx(float(jnp.linalg.norm(grad["readout"])), rel=5e-2)
