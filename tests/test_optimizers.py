"""lopt.optimizers: the optax-backed hand-designed optimizers, make(), Hyperparameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import optimizers, tasks, unroll

NUM_STEPS = 20


@pytest.fixture(scope="module")
def quadratic() -> tasks.Quadratic:
    return jax.jit(tasks.Quadratic.from_eigenvalues)(jax.random.PRNGKey(0), jnp.array([0.2, 1.0, 3.0]))


CASES = {
    "sgd": (lambda: optimizers.sgd(0.1), lambda: optax.sgd(0.1)),
    "momentum": (lambda: optimizers.momentum(0.05, 0.9), lambda: optax.sgd(0.05, momentum=0.9)),
    "rmsprop": (lambda: optimizers.rmsprop(0.01, decay=0.95), lambda: optax.rmsprop(0.01, decay=0.95)),
    "adam": (lambda: optimizers.adam(0.05, b1=0.8, b2=0.99), lambda: optax.adam(0.05, b1=0.8, b2=0.99)),
}


def _reference_loop(task, opt, num_steps):
    """The plain training loop, written out with optax."""
    params = task.init(None)
    state = opt.init(params)
    grad_fn = jax.jit(jax.value_and_grad(task.loss))
    losses = []
    for _ in range(num_steps):
        loss, grads = grad_fn(params)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        losses.append(loss)
    return np.array(losses), params


@pytest.mark.parametrize("name", list(CASES))
def test_unroll_matches_optax_loop(quadratic, name):
    ours, theirs = CASES[name]
    opt = ours()
    res = unroll.unroll(quadratic, opt, unroll.init_state(quadratic, opt, None), None, NUM_STEPS)
    ref_losses, ref_params = _reference_loop(quadratic, theirs(), NUM_STEPS)
    assert res.losses.shape == (NUM_STEPS,)
    np.testing.assert_allclose(res.losses, ref_losses, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.state.params, ref_params, rtol=1e-5, atol=1e-7)
    assert int(res.state.step) == NUM_STEPS
    assert ref_losses[-1] < ref_losses[0]  # the comparison is not between two stalled runs


def test_make_by_name_equals_constructor(quadratic):
    params = quadratic.init(None)
    grads = jax.grad(quadratic.loss)(params)
    a = optimizers.make("adam", learning_rate=1e-2)
    b = optimizers.adam(1e-2)
    ua, _ = a.update(grads, a.init(params), params)
    ub, _ = b.update(grads, b.init(params), params)
    np.testing.assert_array_equal(ua, ub)
    assert set(optimizers.HAND_DESIGNED) == {"sgd", "momentum", "clipped_sgd", "rmsprop", "adam"}


def test_make_unknown_name():
    with pytest.raises(ValueError) as exc:
        optimizers.make("bad", learning_rate=0.1)
    assert "bad" in str(exc.value)
    assert "adam" in str(exc.value) and "sgd" in str(exc.value)


def test_clipped_sgd_clips_elementwise():
    opt = optimizers.clipped_sgd(0.1, 1.0)
    params = jnp.zeros(5)
    grads = jnp.array([-5.0, -0.5, 0.0, 0.5, 5.0])
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates, [0.1, 0.05, 0.0, -0.05, -0.1], rtol=1e-6)
    # unclipped gradients give plain SGD
    plain, _ = optimizers.sgd(0.1).update(grads, optimizers.sgd(0.1).init(params), params)
    assert not np.allclose(updates, plain)
    small = jnp.array([0.3, -0.7])
    u_clip, _ = opt.update(small, opt.init(small), small)
    u_sgd, _ = optimizers.sgd(0.1).update(small, optimizers.sgd(0.1).init(small), small)
    np.testing.assert_allclose(u_clip, u_sgd)


def test_hyperparameters_theta_is_log_learning_rate():
    hp = optimizers.Hyperparameters("adam", {"learning_rate": 1e-2}, fixed={"b1": 0.5}, log=("learning_rate",))
    theta = hp.init(None)
    assert set(theta) == {"learning_rate"}
    assert float(theta["learning_rate"]) == pytest.approx(np.log(1e-2))
    values = hp.hyperparameters(theta)
    assert float(values["learning_rate"]) == pytest.approx(1e-2, rel=1e-6)
    assert values["b1"] == 0.5


def test_outer_gradient_through_adam_learning_rate(quadratic):
    hp = optimizers.Hyperparameters("adam", {"learning_rate": 1e-2}, log=("learning_rate",))
    theta = hp.init(None)

    def outer(th):
        return unroll.meta_loss(th, hp.opt_fn, quadratic, None, NUM_STEPS)

    value, grad = jax.jit(jax.value_and_grad(outer))(theta)
    g = float(grad["learning_rate"])
    assert np.isfinite(float(value)) and np.isfinite(g)
    assert g != 0.0
    assert g < 0  # a larger learning rate lowers the mean loss of a short, slow unroll

    f = jax.jit(outer)
    eps = 1e-2
    up = float(f({"learning_rate": theta["learning_rate"] + eps}))
    down = float(f({"learning_rate": theta["learning_rate"] - eps}))
    fd = (up - down) / (2 * eps)
    assert g == pytest.approx(fd, rel=1e-2)


@pytest.mark.parametrize("name, kwargs, key", [
    ("sgd", {"learning_rate": float("nan")}, "learning_rate"),
    ("adam", {"learning_rate": float("inf")}, "learning_rate"),
    ("momentum", {"learning_rate": -0.1, "beta": 0.9}, "learning_rate"),
    ("rmsprop", {"learning_rate": 0.1, "decay": 1.5}, "decay"),
    ("clipped_sgd", {"learning_rate": 0.1, "threshold": -1.0}, "threshold"),
])
def test_concrete_bad_hyperparameters_raise(name, kwargs, key):
    """Issue: a NaN / inf / negative learning rate gave NaN losses silently."""
    with pytest.raises(ValueError, match=f"{name}: {key}"):
        optimizers.make(name, **kwargs)


def test_traced_hyperparameters_are_not_checked():
    # under jit the values are tracers (the meta-gradient path); only concrete values are checked
    f = jax.jit(lambda lr: optimizers.sgd(lr).update({"w": jnp.ones(2)}, optimizers.sgd(lr).init({"w": jnp.ones(2)}))[0]["w"])
    assert np.all(np.isfinite(np.asarray(f(-1.0))))
