"""lopt.unroll: scan-based inner training, trajectories, remat, sweeps, vmap over tasks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import optimizers, tasks, unroll


@pytest.fixture(scope="module")
def quadratic() -> tasks.Quadratic:
    return jax.jit(tasks.Quadratic.from_eigenvalues)(jax.random.PRNGKey(1), jnp.array([0.5, 1.0, 2.0]))


def test_unroll_shapes_and_trajectory(quadratic):
    opt = optimizers.momentum(0.1, 0.5)
    state0 = unroll.init_state(quadratic, opt, None)
    res = unroll.unroll(quadratic, opt, state0, None, 7, record_params=True)
    assert res.losses.shape == (7,)
    assert res.params.shape == (8, 3)
    np.testing.assert_array_equal(res.params[0], quadratic.init(None))
    np.testing.assert_array_equal(res.params[-1], res.state.params)
    assert int(res.state.step) == 7
    # losses are recorded before each update: loss[t] = l(w_t)
    np.testing.assert_allclose(res.losses, jax.vmap(quadratic.loss)(res.params[:-1]), rtol=1e-5)
    # without record_params there is no trajectory, and the same final state
    plain = unroll.unroll(quadratic, opt, state0, None, 7)
    assert plain.params is None
    np.testing.assert_allclose(plain.state.params, res.state.params, rtol=1e-6)


def test_unroll_continues_from_state(quadratic):
    """Two truncations of 3 + 4 steps equal one unroll of 7 (the state carries everything)."""
    opt = optimizers.adam(0.1)
    state0 = unroll.init_state(quadratic, opt, None)
    full = unroll.unroll(quadratic, opt, state0, None, 7)
    first = unroll.unroll(quadratic, opt, state0, None, 3)
    second = unroll.unroll(quadratic, opt, first.state, None, 4)
    np.testing.assert_allclose(jnp.concatenate([first.losses, second.losses]), full.losses, rtol=1e-6)
    np.testing.assert_allclose(second.state.params, full.state.params, rtol=1e-6)
    assert int(second.state.step) == 7


@pytest.mark.parametrize("num_steps", [0, -3])
def test_num_steps_must_be_positive(quadratic, num_steps):
    opt = optimizers.sgd(0.1)
    with pytest.raises(ValueError, match="num_steps"):
        unroll.unroll(quadratic, opt, unroll.init_state(quadratic, opt, None), None, num_steps)


def test_remat_gives_identical_losses_and_gradients(quadratic):
    hp = optimizers.Hyperparameters("momentum", {"learning_rate": 0.05}, fixed={"beta": 0.9}, log=("learning_rate",))
    theta = hp.init(None)
    opt = hp.opt_fn(theta)
    state0 = unroll.init_state(quadratic, opt, None)
    a = unroll.unroll(quadratic, opt, state0, None, 15)
    b = unroll.unroll(quadratic, opt, state0, None, 15, remat=True)
    # bit-identical on the CPU; a GPU may fuse the recomputed steps differently (float32 rounding)
    same = np.testing.assert_array_equal if jax.default_backend() == "cpu" else \
        (lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=0))
    same(a.losses, b.losses)

    def grad(remat):
        return jax.grad(unroll.meta_loss)(theta, hp.opt_fn, quadratic, None, 15, "mean", remat)

    g0, g1 = grad(False), grad(True)
    assert np.isfinite(g0["learning_rate"]) and g0["learning_rate"] != 0
    same(g0["learning_rate"], g1["learning_rate"])


def test_meta_loss_objectives(quadratic):
    opt_fn = optimizers.sgd
    mean = unroll.meta_loss(0.1, opt_fn, quadratic, None, 5, "mean")
    final = unroll.meta_loss(0.1, opt_fn, quadratic, None, 5, "final")
    res = unroll.unroll(quadratic, opt_fn(0.1), unroll.init_state(quadratic, opt_fn(0.1), None), None, 5)
    assert float(mean) == pytest.approx(float(jnp.mean(res.losses)), rel=1e-6)
    assert float(final) == pytest.approx(float(quadratic.loss(res.state.params)), rel=1e-6)
    with pytest.raises(ValueError, match="mean, final"):
        unroll.meta_loss(0.1, opt_fn, quadratic, None, 5, "median")


def test_sweep_is_deterministic_and_consistent(quadratic):
    thetas = jnp.array([0.1, 0.4, 0.9])
    a = unroll.sweep(optimizers.sgd, quadratic, thetas, 10)
    b = unroll.sweep(optimizers.sgd, quadratic, thetas, 10)
    for x, y in zip((a.loss, a.grad, a.params), (b.loss, b.grad, b.params)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert a.loss.shape == a.grad.shape == (3,)
    assert a.params.shape == (3, 3)
    # each entry is the final loss of that theta's unroll
    for i, th in enumerate(np.asarray(thetas)):
        w = unroll.final_params(optimizers.sgd, quadratic, jnp.float32(th), 10)
        np.testing.assert_allclose(a.params[i], w, rtol=1e-5, atol=1e-7)
        assert float(a.loss[i]) == pytest.approx(float(quadratic.loss(w)), rel=1e-4)
    # and its gradient is d l(w_T) / d theta
    g = jax.grad(lambda th: quadratic.loss(unroll.final_params(optimizers.sgd, quadratic, th, 10)))(jnp.float32(0.4))
    assert float(a.grad[1]) == pytest.approx(float(g), rel=1e-4)


def test_sweep_records_trajectories(quadratic):
    res = unroll.sweep(optimizers.sgd, quadratic, jnp.array([0.1, 0.2]), 4, record_params=True)
    assert res.params.shape == (2, 5, 3)
    np.testing.assert_array_equal(res.params[:, 0], jnp.broadcast_to(quadratic.w0, (2, 3)))


def test_vmap_over_tasks_matches_loop():
    family = tasks.LinearRegressionFamily(dim=4, num_data=6)
    batch = family.sample_many(jax.random.PRNGKey(0), 3)
    opt = optimizers.sgd(0.1)

    def run(task):
        return unroll.unroll(task, opt, unroll.init_state(task, opt, None), None, 12).losses

    batched = jax.jit(jax.vmap(run))(batch)
    assert batched.shape == (3, 12)
    for i in range(3):
        task_i = jax.tree.map(lambda x: x[i], batch)
        np.testing.assert_allclose(batched[i], run(task_i), rtol=1e-5, atol=1e-7)
    assert not np.allclose(batched[0], batched[1])


def test_minibatch_unroll_learns():
    """SGD on a tiny image task with learnable labels (class = position of a bright pixel block)."""
    rng = np.random.default_rng(0)
    n, hw = 256, 6
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = rng.integers(0, 40, (n, hw, hw)).astype(np.uint8)
    flat = images.reshape(n, -1)
    for i, y in enumerate(labels):
        flat[i, 3 * y : 3 * y + 3] = 255
    images = {s: jnp.asarray(images) for s in tasks.SPLITS}
    labels = {s: jnp.asarray(labels) for s in tasks.SPLITS}
    task = tasks.ImageClassifier(images, labels, "mlp", (16,), "relu", 32)
    opt = optimizers.sgd(0.1)

    @jax.jit
    def run(key):
        k_init, k_unroll = jax.random.split(key)
        return unroll.unroll(task, opt, unroll.init_state(task, opt, k_init), k_unroll, 30).losses

    losses = np.asarray(run(jax.random.PRNGKey(0)))
    assert losses.shape == (30,)
    assert np.all(np.isfinite(losses))
    assert losses[-10:].mean() < losses[:10].mean() - 0.1
    # a different key gives different minibatches
    assert not np.array_equal(losses, np.asarray(run(jax.random.PRNGKey(1))))


def test_one_key_means_one_inner_run_across_entry_points():
    """meta_loss("final"), final_params and sweep unroll through unroll.run: the same key gives the
    same initialisation, minibatches and final batch in each."""
    rng = np.random.default_rng(1)
    images = {s: jnp.asarray(rng.integers(0, 255, (64, 4, 4)).astype(np.uint8)) for s in tasks.SPLITS}
    labels = {s: jnp.asarray(rng.integers(0, 10, 64).astype(np.int32)) for s in tasks.SPLITS}
    task = tasks.ImageClassifier(images, labels, "mlp", (8,), "relu", 16)
    key, lr = jax.random.PRNGKey(3), jnp.float32(0.05)
    s = unroll.sweep(optimizers.sgd, task, jnp.array([lr]), 5, key=key)
    p = unroll.final_params(optimizers.sgd, task, lr, 5, key=key)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(s.params)):
        np.testing.assert_allclose(a, b[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(unroll.meta_loss(lr, optimizers.sgd, task, key, 5, "final"), s.loss[0], rtol=1e-6)
