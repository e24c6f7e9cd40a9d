"""lopt.truncation: truncated inner training, resets at the horizon, schedules, buckets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import optimizers, tasks, truncation


@pytest.fixture(scope="module")
def training() -> truncation.TruncatedTraining:
    quad = jax.jit(tasks.Quadratic.from_eigenvalues)(jax.random.PRNGKey(0), jnp.array([0.5, 1.0, 2.0]))
    lopt = optimizers.Hyperparameters("momentum", {"learning_rate": 0.1}, fixed={"beta": 0.5}, log=("learning_rate",))
    return truncation.TruncatedTraining(lopt, tasks.SingleTask(quad), horizon=6)


def test_truncations_compose(training):
    """One truncation of 6 steps equals three of 2: the carried state holds everything."""
    theta = training.learned_opt.init(None)
    state = training.init(theta, jax.random.PRNGKey(1), num_tasks=2)
    whole = training.unroll(theta, state, 6)
    losses, st = [], state
    for _ in range(3):
        part = training.unroll(theta, st, 2)
        losses.append(part.losses)
        st = part.state
    np.testing.assert_allclose(jnp.concatenate(losses, axis=1), whole.losses, rtol=1e-6)
    np.testing.assert_allclose(st.inner.params, whole.state.inner.params, rtol=1e-6)
    assert np.all(np.asarray(st.inner.step) == 6)


def test_losses_are_post_update(training):
    """The outer-loss of a truncation is the mean of l(w_{t+1}) over its steps."""
    theta = training.learned_opt.init(None)
    state = training.init(theta, jax.random.PRNGKey(2), num_tasks=1)
    res = training.unroll(theta, state, 3)
    quad = training.family.task
    opt = training.learned_opt.opt_fn(theta)
    w, s, expected = state.inner.params[0], state.inner.opt_state, []
    s = jax.tree.map(lambda x: x[0], s)
    for _ in range(3):
        u, s = opt.update(jax.grad(quad.loss)(w), s, w)
        w = w + u
        expected.append(quad.loss(w))
    np.testing.assert_allclose(res.losses[0], expected, rtol=1e-5)
    np.testing.assert_allclose(res.loss[0], np.mean(expected), rtol=1e-5)


def test_horizon_masks_and_resets(training):
    """Steps past the horizon leave the state alone and carry no weight; the next truncation
    starts a fresh run with a new key."""
    theta = training.learned_opt.init(None)
    state = training.init(theta, jax.random.PRNGKey(3), num_tasks=2)
    first = training.unroll(theta, state, 4)
    second = training.unroll(theta, first.state, 4)  # steps 5, 6 active, 7, 8 masked
    np.testing.assert_array_equal(second.active, [[True, True, False, False]] * 2)
    assert np.all(np.asarray(second.state.inner.step) == 6)
    assert not np.any(np.asarray(second.reset))
    third = training.unroll(theta, second.state, 4)
    assert np.all(np.asarray(third.reset))
    assert np.all(np.asarray(third.state.inner.step) == 4)
    assert not np.array_equal(third.state.run_key, second.state.run_key)
    # num_active masks the tail of a padded truncation
    part = training.unroll(theta, state, 4, num_active=3)
    np.testing.assert_array_equal(part.active, [[True, True, True, False]] * 2)
    exact = training.unroll(theta, state, 3)
    np.testing.assert_allclose(part.loss, exact.loss, rtol=1e-6)
    np.testing.assert_allclose(part.state.inner.params, exact.state.inner.params, rtol=1e-6)


def test_valid_objective_needs_known_name():
    with pytest.raises(ValueError, match="allowed values"):
        truncation.TruncatedTraining(optimizers.Hyperparameters("sgd", {"learning_rate": 0.1}),
                                     tasks.SingleTask(tasks.TwoMinima()), horizon=5, objective="test")


def test_bucket_and_schedules():
    assert [truncation.bucket(n) for n in (1, 7, 8, 9, 17, 100, 1000)] == [1, 7, 8, 9, 18, 104, 1024]
    for n in range(1, 5000, 37):
        assert n <= truncation.bucket(n) < 1.126 * n + 1
    with pytest.raises(ValueError, match=">= 1"):
        truncation.bucket(0)
    rng = np.random.default_rng(0)
    assert truncation.constant(5)(123, rng) == 5
    sched = truncation.curriculum(50, 10_000, 5000, jitter=0.2)
    first = [sched(0, rng) for _ in range(200)]
    last = [sched(9999, rng) for _ in range(200)]
    mid = [sched(2500, rng) for _ in range(200)]
    assert 40 <= min(first) and max(first) <= 60
    assert 8000 <= min(last) and max(last) <= 12000
    assert abs(np.mean(mid) - 5025) < 150
    with pytest.raises(ValueError, match="bad curriculum"):
        truncation.curriculum(50, 100, 10, jitter=1.5)


def test_remaining_stops_at_the_episode_end(training):
    theta = training.learned_opt.init(None)
    state = training.init(theta, jax.random.PRNGKey(4), num_tasks=2)
    assert training.remaining(state) == 6
    state = training.unroll(theta, state, 4).state
    assert training.remaining(state) == 2
    state = training.unroll(theta, state, 2).state
    assert training.remaining(state) == 6  # finished tasks restart at the next truncation


def test_one_compiled_size_for_a_schedule_and_gradients_match_exact_lengths():
    """Metz et al. 2019 sec. 4.3's jittered curriculum with ``max_length``: one compile for every drawn
    length, and each estimate equals the one compiled at exactly that length (masked steps skip)."""
    from lopt import estimators, outer

    fam = tasks.LinearRegressionFamily(dim=4, num_data=6)
    lopt = optimizers.Hyperparameters("momentum", {"learning_rate": 0.05}, fixed={"beta": 0.5}, log=("learning_rate",))
    theta = lopt.init(None)
    sched = truncation.curriculum(2, 9, 6, jitter=0.2)
    est = estimators.Merged(lopt, fam, horizon=12, length=sched, num_tasks=2, max_length=11)
    res = outer.train(est, theta, outer.meta_optimizer(1e-2), 8, jax.random.PRNGKey(0), progress=False)
    lengths = res.history["length"]
    assert len(set(lengths.tolist())) >= 3 and lengths.max() <= 11
    fused = [v for v in est._outer_cache.values()]
    assert sum(f._cache_size() for f in fused) == 1  # one compiled outer step for every length
    # an estimate padded to 11 steps equals the estimate compiled at its length
    state = est.init(jax.random.PRNGKey(1), theta)
    key = jax.random.PRNGKey(2)
    padded = est._estimate(theta, state, key, 11, jnp.asarray(5))
    exact = est._estimate(theta, state, key, 5, jnp.asarray(5))
    rtol = 1e-5 if jax.default_backend() == "cpu" else 5e-5  # a GPU sums the masked steps in another order
    for a, b in zip(jax.tree.leaves(padded[0]), jax.tree.leaves(exact[0])):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-7)
    np.testing.assert_allclose(padded[2]["loss"], exact[2]["loss"], rtol=1e-6)
    # the episode end caps the active steps: min(L, T - t)
    st = est.init(jax.random.PRNGKey(3), theta)
    st = st._replace(truncated=st.truncated._replace(inner=st.truncated.inner._replace(
        step=jnp.full_like(st.truncated.inner.step, 9))))
    assert est.truncation_length(5, jax.random.PRNGKey(4), st)[1] <= 3


def test_outer_loss_cap_bounds_recorded_losses_not_gradients():
    rng = np.random.default_rng(0)
    images = {s: jnp.asarray(rng.integers(0, 256, (16, 4, 4), dtype=np.uint8)) for s in tasks.SPLITS}
    labels = {s: jnp.asarray(rng.integers(0, 3, (16,), dtype=np.int32)) for s in tasks.SPLITS}
    capped = tasks.ImageClassifier(images, labels, "mlp", (4,), "relu", 8, num_classes=3, loss_cap=0.5)
    lopt = optimizers.Hyperparameters("sgd", {"learning_rate": 0.1})
    for obj in truncation.OBJECTIVES:
        tt = truncation.TruncatedTraining(lopt, tasks.SingleTask(capped), horizon=5, objective=obj)
        res = tt.unroll(lopt.init(), tt.init(lopt.init(), jax.random.PRNGKey(0), 2), 5)
        assert float(jnp.max(res.losses)) <= 0.5 + 1e-6  # a fresh 3-way classifier's loss ~ ln 3 > 0.5
