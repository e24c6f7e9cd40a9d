"""lopt.chunked: truncations from one compiled chunk of steps give the estimates of the traced
path (every estimator, both objectives, lengths not divisible by the chunk, tasks crossing the
horizon), compile two kernels whatever the lengths, and stop at the episode end."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import chunked, estimators, outer, tasks, truncation
from lopt.learned.mlp import MLPOptimizer

ESTIMATORS = ["TruncatedBPTT", "ES", "Reparameterization", "Merged", "PES"]
HORIZON, LENGTH, CHUNK = 12, 7, 3
# per task: mid-run, crossing the horizon during the truncation, at the horizon (reset first)
STEPS = np.array([2, 9, 12])


def _learned():
    # steps large enough that +/- sigma perturbations move the loss well above float32 rounding
    return MLPOptimizer(hidden=4, step_mult=0.05)


def _family(objective):
    if objective == "train":
        return tasks.LinearRegressionFamily(dim=4, num_data=6)
    rng = np.random.default_rng(0)
    images = {s: jnp.asarray(rng.integers(0, 256, (16, 4, 4), dtype=np.uint8)) for s in tasks.SPLITS}
    labels = {s: jnp.asarray(rng.integers(0, 3, (16,), dtype=np.int32)) for s in tasks.SPLITS}
    return tasks.SingleTask(tasks.ImageClassifier(images, labels, "mlp", (4,), "relu", 8, num_classes=3))


def _staggered(state, num_tasks):
    """``state`` with its tasks at the steps ``STEPS`` (both particles of a PES pair alike)."""
    inner = state.truncated.inner
    steps = STEPS if inner.step.shape[0] == num_tasks else np.concatenate([STEPS, STEPS])
    steps = jnp.asarray(steps, inner.step.dtype)
    return state._replace(truncated=state.truncated._replace(inner=inner._replace(step=steps)))


def _close(a, b, rel=2e-5):
    """Equal up to float32 rounding: rtol 1e-5, and an atol relative to the largest entry (ES-type
    estimates divide a difference of two losses summed in a different order by 2 sigma)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    scale = max([float(np.max(np.abs(np.asarray(x, np.float64)), initial=0.0)) for x in la] + [1e-30])
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(x, np.float64), rtol=1e-5, atol=rel * scale)


# "valid": Merged's info holds the ES and reparameterization estimates too (compiles cost ~10 s a case)
CASES = [(name, "train") for name in ESTIMATORS] + [(name, "valid") for name in ("TruncatedBPTT", "Merged", "PES")]


@pytest.mark.parametrize("name,objective", CASES)
def test_chunked_equals_traced(name, objective):
    """Two truncations of 7 steps with chunks of 3 (the last chunk masked), tasks mid-run, crossing
    the horizon and reset: estimate, loss, length and carried state equal the traced path's."""
    learned, family = _learned(), _family(objective)
    kw = dict(horizon=HORIZON, length=LENGTH, num_tasks=len(STEPS), objective=objective)
    traced = getattr(estimators, name)(learned, family, **kw)
    chunk = getattr(estimators, name)(learned, family, chunk=CHUNK, **kw)
    theta = learned.init(jax.random.PRNGKey(0))
    st_a = st_b = _staggered(traced.init(jax.random.PRNGKey(1), theta), len(STEPS))
    for i in range(2):
        key = jax.random.PRNGKey(10 + i)
        g_a, st_a, info_a = traced.estimate(theta, st_a, key)
        g_b, st_b, info_b = chunk.estimate(theta, st_b, key)
        assert info_a["length"] == info_b["length"] == LENGTH
        _close(g_a, g_b)
        np.testing.assert_allclose(info_b["loss"], info_a["loss"], rtol=1e-5)
        _close(st_a.truncated, st_b.truncated, rel=1e-6)
        np.testing.assert_array_equal(st_a.truncated.inner.step, st_b.truncated.inner.step)
        np.testing.assert_array_equal(st_a.truncated.run_key, st_b.truncated.run_key)
        if name == "PES":
            _close(st_a.accum, st_b.accum, rel=1e-6)
        if name == "Merged":
            np.testing.assert_allclose(info_b["weight_rp"], info_a["weight_rp"], rtol=1e-4, atol=1e-6)
            _close(info_a["grad_es"], info_b["grad_es"])
            _close(info_a["grad_rp"], info_b["grad_rp"])
    assert chunk.chunked.forward._cache_size() == 1
    assert chunk.chunked.backward._cache_size() == (0 if name in ("ES", "PES") else 1)
    assert not chunk._compiled  # nothing compiled per length


def test_engine_losses_and_grads_match_unroll_one():
    """The engine's per-particle loss and d loss / d theta are those of TruncatedTraining.particles,
    for particles with their own theta, with and without gradients."""
    learned, family = _learned(), _family("train")
    tt = truncation.TruncatedTraining(learned, family, HORIZON)
    theta = learned.init(jax.random.PRNGKey(0))
    state = tt.init(theta, jax.random.PRNGKey(1), 3)
    state = state._replace(inner=state.inner._replace(step=jnp.asarray(STEPS, jnp.int32)))
    thetas = jax.tree.map(lambda t: jnp.stack([t, 1.1 * t, 0.9 * t]), theta)
    ref, ref_grads = tt.particles(thetas, state, LENGTH, grad=True)
    engine = chunked.ChunkedTraining(tt, 2)
    res = engine.run(thetas, state, LENGTH, grad=True)
    assert res.num_chunks == 4
    np.testing.assert_allclose(res.loss, ref.loss, rtol=1e-5)
    _close(ref_grads, res.grads)
    _close(ref.state, res.state, rel=1e-6)
    fwd = engine.run(thetas, state, LENGTH)
    assert fwd.grads is None
    np.testing.assert_array_equal(fwd.loss, res.loss)
    with pytest.raises(ValueError, match="chunk"):
        chunked.ChunkedTraining(tt, 0)


def test_stops_at_the_episode_end():
    """Every task 3 steps before its horizon: a truncation of 7 runs ceil(3 / 2) = 2 chunks and
    reports length 3; the next starts fresh runs. In outer.train the history holds min(L, T - t)."""
    learned, family = _learned(), _family("train")
    est = estimators.TruncatedBPTT(learned, family, horizon=HORIZON, length=LENGTH, num_tasks=2, chunk=2)
    theta = learned.init(jax.random.PRNGKey(0))
    state = est.init(jax.random.PRNGKey(1), theta)
    inner = state.truncated.inner
    state = state._replace(truncated=state.truncated._replace(inner=inner._replace(step=jnp.full_like(inner.step, 9))))
    assert est.chunked.stop(state.truncated, LENGTH) == 3
    res = est.chunked.run(est._particles(theta, state, None)[0], state.truncated, LENGTH, grad=True)
    assert res.num_chunks == 2
    np.testing.assert_array_equal(res.state.inner.step, [HORIZON, HORIZON])
    _, state, info = est.estimate(theta, state, jax.random.PRNGKey(2))
    assert info["length"] == 3
    _, state, info = est.estimate(theta, state, jax.random.PRNGKey(3))
    assert info["length"] == LENGTH and np.all(np.asarray(state.truncated.inner.step) == LENGTH)
    hist = outer.train(est, theta, outer.meta_optimizer(1e-3), 6, jax.random.PRNGKey(4), progress=False).history
    np.testing.assert_array_equal(hist["length"], [7, 5, 7, 5, 7, 5])


def test_two_compiles_for_a_curriculum():
    """The jittered curriculum of sec. 4.3 draws a new length every outer step: the chunked Merged
    estimator compiles one forward and one backward kernel for all of them, where the traced path
    compiles one program per bucketed length."""
    learned, family = _learned(), _family("train")
    sched = truncation.curriculum(2, 20, 8)
    kw = dict(horizon=40, length=sched, num_tasks=2)
    est = estimators.Merged(learned, family, chunk=4, **kw)
    theta = learned.init(jax.random.PRNGKey(0))
    res = outer.train(est, theta, outer.meta_optimizer(1e-3), 9, jax.random.PRNGKey(1), progress=False)
    lengths = res.history["length"]
    assert len(set(lengths.tolist())) >= 5, lengths
    assert res.num_skipped == 0 and np.all(np.isfinite(res.history["loss"]))
    assert est.chunked.forward._cache_size() == 1 and est.chunked.backward._cache_size() == 1
    assert not est._compiled
    buckets = {truncation.bucket(int(n)) for n in lengths}
    assert len(buckets) >= 5  # what the traced path would have compiled
