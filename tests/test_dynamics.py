"""lopt.dynamics: update functions and effective learning rates of hand-designed optimizers."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import dynamics, optimizers

GRADS = jnp.linspace(-3.0, 3.0, 13)


def test_sgd_update_function_and_effective_lr():
    lr = 0.1
    opt = optimizers.sgd(lr)
    state = opt.init(jnp.zeros(()))
    np.testing.assert_allclose(dynamics.update_function(opt, state, GRADS), -lr * GRADS, rtol=1e-6)
    assert float(dynamics.effective_learning_rate(opt, state)) == pytest.approx(lr, rel=1e-6)
    # the state of SGD is empty, whatever it was fed
    later = dynamics.state_after(opt, jnp.full((5,), 2.0))
    assert float(dynamics.effective_learning_rate(opt, later)) == pytest.approx(lr, rel=1e-6)


@pytest.mark.parametrize("history", [[2.0] * 10, [-1.0] * 3, [0.5, -2.0, 1.0]])
def test_momentum_update_function(history):
    lr, beta = 0.1, 0.9
    opt = optimizers.momentum(lr, beta)
    state = dynamics.state_after(opt, jnp.array(history))
    v = float(optax.tree_utils.tree_get(state, "trace"))
    # the trace is the beta-discounted sum of the gradients fed
    expected_v = sum(g * beta ** (len(history) - 1 - i) for i, g in enumerate(history))
    assert v == pytest.approx(expected_v, rel=1e-5)
    assert float(dynamics.effective_learning_rate(opt, state)) == pytest.approx(lr, rel=1e-5)
    updates = dynamics.update_function(opt, state, GRADS)
    np.testing.assert_allclose(updates, -lr * GRADS - lr * beta * v, rtol=1e-5, atol=1e-6)
    offset = float(dynamics.update_function(opt, state, jnp.zeros(1))[0])
    assert offset == pytest.approx(-lr * beta * v, rel=1e-5)


def test_clipped_sgd_saturates():
    lr, threshold = 0.1, 1.0
    opt = optimizers.clipped_sgd(lr, threshold)
    state = opt.init(jnp.zeros(()))
    updates = np.asarray(dynamics.update_function(opt, state, GRADS))
    expected = -lr * np.clip(np.asarray(GRADS), -threshold, threshold)
    np.testing.assert_allclose(updates, expected, rtol=1e-6, atol=1e-8)
    assert updates.min() == pytest.approx(-lr * threshold)
    assert updates.max() == pytest.approx(lr * threshold)
    assert float(dynamics.effective_learning_rate(opt, state)) == pytest.approx(lr, rel=1e-6)


def test_rmsprop_effective_learning_rate():
    lr, decay, eps = 0.1, 0.9, 1e-8
    opt = optimizers.rmsprop(lr, decay=decay, eps=eps)
    rates = []
    for c in (0.5, 1.0, 2.0, 4.0):
        state = dynamics.state_after(opt, jnp.full((200,), c))
        nu = float(optax.tree_utils.tree_get(state, "nu"))
        assert nu == pytest.approx(c**2, rel=1e-4)  # 200 steps of decay 0.9: converged
        rate = float(dynamics.effective_learning_rate(opt, state))
        assert rate == pytest.approx(lr / (np.sqrt(decay * nu) + eps), rel=1e-5)
        rates.append(rate)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    # update at the state's own gradient: normalised to ~lr
    state = dynamics.state_after(opt, jnp.full((200,), 3.0))
    u = float(dynamics.update_function(opt, state, jnp.array([3.0]))[0])
    assert u == pytest.approx(-lr, rel=1e-4)


def test_state_after_holds_parameter_fixed():
    opt = optimizers.adam(0.1)
    state = dynamics.state_after(opt, jnp.array([1.0, 1.0, 1.0]), param=5.0)
    assert int(optax.tree_utils.tree_get(state, "count")) == 3
    mu = float(optax.tree_utils.tree_get(state, "mu"))
    assert mu == pytest.approx(1 - 0.9**3, rel=1e-5)
