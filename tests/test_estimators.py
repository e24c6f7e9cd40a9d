"""lopt.estimators: unbiasedness (z-tests against a closed form), exactness, merged variance,
the known bias of truncated backpropagation, and training a learning rate with every estimator.

The closed-form problem: a "drift" optimizer whose update is theta itself (w_{t+1} = w_t + theta)
on a noisy quadratic l(w; xi) = 1/2 ||w - c - xi||^2 with a fresh xi ~ N(0, s^2 I) per minibatch.
Then every outer-loss is quadratic in theta (and in the perturbations), so the gradient of the
smoothed loss E[L(theta + sigma n)] equals the gradient of E_xi L at theta:

    d/dtheta mean_{t in truncation} 1/2 ||w0 + t theta - c||^2 = mean_t t (w0 + t theta - c),

with t counting post-update steps from the start of the inner run.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import estimators, optimizers, outer, samples, tasks, truncation, variance

D = 3
CENTER = jnp.array([1.0, -2.0, 0.5])
W0 = jnp.array([0.3, 0.1, -0.4])
THETA = jnp.array([0.2, -0.3, 0.1])
ALPHA = 1e-3  # family-wise significance of each z-test (Bonferroni over coordinates)


NoisyQuadratic, Drift = variance.NoisyQuadratic, variance.Drift
FAMILY = tasks.SingleTask(NoisyQuadratic(CENTER, W0))
z_scores = variance.z_scores


def closed_form_grad(theta: jax.Array, steps: range) -> np.ndarray:
    """Gradient of the noise-free mean loss over the post-update steps ``steps``."""
    return variance.drift_gradient(FAMILY.task, theta, steps)


def z_threshold(dim: int = D, alpha: float = ALPHA) -> float:
    return variance.z_threshold(dim, alpha)


@pytest.mark.parametrize("name", ["ES", "Reparameterization", "Merged"])
def test_antithetic_estimators_unbiased(name):
    """Per-pair estimates over one truncation of 4 steps from a fresh run: z-test at alpha=1e-3."""
    cls = getattr(estimators, name)
    est = cls(Drift(), FAMILY, horizon=4, num_tasks=4000, keep_samples=True, sigma=0.1)
    state = est.init(jax.random.PRNGKey(0), THETA)
    grad, _, info = est.estimate(THETA, state, jax.random.PRNGKey(1))
    expected = closed_form_grad(THETA, range(1, 5))
    keys = {"ES": ["es"], "Reparameterization": ["rp"], "Merged": ["es", "rp"]}[name]
    for k in keys:
        z = z_scores(info[f"samples_{k}"], expected)
        assert np.all(np.abs(z) < z_threshold()), (k, z)
    # the estimate is the mean of the samples (merged: a convex combination of the two means)
    tol = 0.15 * np.linalg.norm(expected)
    assert np.linalg.norm(np.asarray(grad) - expected) < tol


def test_antithetic_es_exact_for_linear_loss():
    """For L linear in theta, each antithetic pair gives exactly (n . grad L) n (no sigma error)."""

    @tasks.pytree_dataclass
    class Linear(tasks.Task):
        def init(self, key=None):
            return jnp.zeros((D,))

        def loss(self, params, batch=None):
            return jnp.dot(jnp.array([1.0, -2.0, 3.0]), params)

    sigma = 0.37
    est = estimators.ES(Drift(), tasks.SingleTask(Linear()), horizon=2, num_tasks=5, sigma=sigma, keep_samples=True)
    state = est.init(jax.random.PRNGKey(0), THETA)
    key = jax.random.PRNGKey(3)
    _, _, info = est.estimate(THETA, state, key)
    # the noise the estimator drew for this call
    _, k_est = jax.random.split(key)
    noise = estimators.tree_normal(k_est, THETA, 5)
    grad_l = np.array([1.0, -2.0, 3.0]) * np.mean([1.0, 2.0])  # d/dtheta mean_t a . (t theta)
    np.testing.assert_allclose(info["samples_es"], (np.asarray(noise) @ grad_l)[:, None] * np.asarray(noise),
                               rtol=2e-4, atol=1e-5)


def test_pes_unbiased_per_truncation_and_over_the_horizon():
    """PES over three truncations of 2 steps (horizon 6): truncation k's estimate is unbiased for
    the gradient of its loss through the whole history, and their mean for the horizon's mean loss."""
    est = estimators.PES(Drift(), FAMILY, horizon=6, length=2, num_tasks=3000, keep_samples=True)
    state = est.init(jax.random.PRNGKey(0), THETA)
    per_truncation = []
    for k in range(3):
        _, state, info = est.estimate(THETA, state, jax.random.PRNGKey(10 + k))
        samples = np.asarray(info["samples_pes"])
        z = z_scores(samples, closed_form_grad(THETA, range(2 * k + 1, 2 * k + 3)))
        assert np.all(np.abs(z) < z_threshold()), (k, z)
        per_truncation.append(samples)
    z = z_scores(np.mean(per_truncation, axis=0), closed_form_grad(THETA, range(1, 7)))
    assert np.all(np.abs(z) < z_threshold()), z
    # the accumulated perturbations restart with the run: truncation 4 resets the tasks
    _, state, _ = est.estimate(THETA, state, jax.random.PRNGKey(20))
    assert np.all(np.asarray(state.truncated.inner.step) == 2)


def test_truncated_es_is_biased_pes_is_not():
    """Truncated ES from a carried state ignores how theta shaped that state (truncation bias);
    PES does not. At truncation 2 (steps 3-4) of a 4-step run, the truncated estimate targets
    d/dtheta of the loss with w_2 held fixed: mean_t (t - 2) (w_t - c)."""
    est = estimators.ES(Drift(), FAMILY, horizon=4, length=2, num_tasks=3000, keep_samples=True)
    state = est.init(jax.random.PRNGKey(0), THETA)
    _, state, _ = est.estimate(THETA, state, jax.random.PRNGKey(1))
    _, _, info = est.estimate(THETA, state, jax.random.PRNGKey(2))
    samples = np.asarray(info["samples_es"])
    truth = closed_form_grad(THETA, range(3, 5))
    # the carried state came from theta + sigma n of the previous positive particle; on average
    # w_2 = w0 + 2 theta, so the truncated target is mean_t (t - 2) (w0 + t theta - c)
    ts = np.array([3.0, 4.0])[:, None]
    greedy = np.mean((ts - 2) * (np.asarray(W0) + ts * np.asarray(THETA) - np.asarray(CENTER)), axis=0)
    assert np.all(np.abs(z_scores(samples, greedy)) < z_threshold())
    assert np.any(np.abs(z_scores(samples, truth)) > 10)


def test_tbptt_length_one_is_the_greedy_gradient():
    """SGD on l(w) = 1/2 h w^2 with a learned log learning rate: TBPTT over one step at w_k gives
    the greedy d/dlog(lr) 1/2 h (w_k (1 - lr h))^2 = -lr h^2 w_k^2 (1 - lr h), not the gradient of
    the horizon's mean loss (which also counts how lr moved w_k)."""
    h, w0, lr = 2.0, 1.5, 0.1
    quad = tasks.Quadratic(jnp.array([[h]]), jnp.zeros(1), jnp.array([w0]))
    lopt = optimizers.Hyperparameters("sgd", {"learning_rate": lr}, log=("learning_rate",))
    theta = lopt.init(None)
    est = estimators.TruncatedBPTT(lopt, tasks.SingleTask(quad), horizon=5, length=1, num_tasks=1)
    state = est.init(jax.random.PRNGKey(0), theta)
    for k in range(5):
        grad, state, _ = est.estimate(theta, state, jax.random.PRNGKey(k))
        w_k = w0 * (1 - lr * h) ** k
        greedy = -lr * h**2 * w_k**2 * (1 - lr * h)
        np.testing.assert_allclose(grad["learning_rate"], greedy, rtol=1e-5)
    # the whole-run gradient (FullUnroll) is a different number: the greedy estimate is biased
    full = estimators.FullUnroll(lopt, tasks.SingleTask(quad), num_steps=5, num_tasks=1)
    g_full, _, _ = full.estimate(theta, full.init(jax.random.PRNGKey(0), theta), jax.random.PRNGKey(0))
    ts = np.arange(1, 6)
    closed = np.mean(-ts * lr * h**2 * w0**2 * (1 - lr * h) ** (2 * ts - 1))
    np.testing.assert_allclose(g_full["learning_rate"], closed, rtol=1e-5)


def test_merged_variance_not_larger_than_the_smaller():
    """Over repeated estimates, the merged estimate's variance is at most about min(var_rp, var_es)."""
    est = estimators.Merged(Drift(), FAMILY, horizon=4, num_tasks=8)
    g, g_rp, g_es = [], [], []
    for i in range(300):  # fresh inner runs (minibatch noise) and perturbations every time
        state = est.init(jax.random.PRNGKey(1000 + i), THETA)
        grad, _, info = est.estimate(THETA, state, jax.random.PRNGKey(i))
        g.append(grad)
        g_rp.append(info["grad_rp"])
        g_es.append(info["grad_es"])
    var = {k: float(np.mean(np.var(np.asarray(v), axis=0))) for k, v in (("m", g), ("rp", g_rp), ("es", g_es))}
    assert var["rp"] < var["es"] / 3  # a setting where the two differ
    assert var["m"] <= 1.2 * min(var["rp"], var["es"]), var


def test_inverse_variance_merge_and_variance_helpers():
    a, b = {"x": jnp.array([1.0, 1.0])}, {"x": jnp.array([3.0, -1.0])}
    merged, w = estimators.inverse_variance_merge(a, jnp.array(1.0), b, jnp.array(3.0))
    assert float(w) == pytest.approx(0.75)
    np.testing.assert_allclose(merged["x"], [1.5, 0.5], rtol=1e-6)
    bad = {"x": jnp.array([jnp.nan, 1.0])}
    merged, w = estimators.inverse_variance_merge(bad, jnp.array(1.0), b, jnp.array(3.0))
    assert float(w) == 0.0
    np.testing.assert_allclose(merged["x"], b["x"])
    samples = {"x": jnp.array([[1.0, 2.0], [3.0, 6.0]]), "y": jnp.array([0.0, 2.0])}
    mean, var = estimators.mean_and_variance(samples)
    np.testing.assert_allclose(mean["x"], [2.0, 4.0])
    # per-coordinate sample variances 2, 8, 2; averaged (4) and divided by n = 2
    assert float(var) == pytest.approx(2.0)


def test_per_coordinate_merge():
    """Eq. (1) per coordinate: weights var_es_i / (var_es_i + var_rp_i) in [0, 1], the merge a convex
    combination per coordinate, and the pooled formula when every coordinate has the same variances."""
    rng = np.random.default_rng(0)
    rp = {"a": jnp.asarray(rng.normal(0, [0.1, 1.0, 3.0], (16, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=(16,)))}
    es = {"a": jnp.asarray(rng.normal(1, [2.0, 0.5, 3.0], (16, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=(16,)))}
    g_rp, v_rp = estimators.mean_and_variance(rp, per_coordinate=True)
    g_es, v_es = estimators.mean_and_variance(es, per_coordinate=True)
    np.testing.assert_allclose(v_rp["a"], np.var(np.asarray(rp["a"]), axis=0, ddof=1) / 16, rtol=1e-5)
    assert float(estimators.mean_and_variance(rp)[1]) == pytest.approx(float(samples.pooled(v_rp)), rel=1e-6)
    merged, w = estimators.inverse_variance_merge(g_rp, v_rp, g_es, v_es)
    for k in ("a", "b"):
        w_k = np.asarray(w[k])
        assert np.all((0 <= w_k) & (w_k <= 1))
        np.testing.assert_allclose(w_k, np.asarray(v_es[k]) / (np.asarray(v_es[k]) + np.asarray(v_rp[k])), rtol=1e-5)
        np.testing.assert_allclose(merged[k], w_k * g_rp[k] + (1 - w_k) * g_es[k], rtol=1e-5, atol=1e-7)
    assert w["a"][0] > 0.9 and w["a"][1] < 0.5  # rp is precise on coordinate 0, es on coordinate 1
    # equal variances across coordinates: the per-coordinate merge is the pooled one
    const = lambda tree, v: jax.tree.map(lambda x: jnp.full_like(x, v), tree)
    per, w_per = estimators.inverse_variance_merge(g_rp, const(g_rp, 0.3), g_es, const(g_es, 0.7))
    pool, w_pool = estimators.inverse_variance_merge(g_rp, jnp.float32(0.3), g_es, jnp.float32(0.7))
    for k in ("a", "b"):
        np.testing.assert_allclose(w_per[k], float(w_pool), rtol=1e-6)
        np.testing.assert_allclose(per[k], pool[k], rtol=1e-6)
    # a non-finite estimate gets weight 0 at every coordinate
    bad = {**g_rp, "b": g_rp["b"] * jnp.nan}
    merged, w = estimators.inverse_variance_merge(bad, v_rp, g_es, v_es)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(w))
    np.testing.assert_allclose(merged["a"], g_es["a"])
    # the estimator: weight_rp is the mean weight, in [0, 1]
    est = estimators.Merged(Drift(), FAMILY, horizon=4, num_tasks=8, per_coordinate=True)
    grad, _, info = est.estimate(THETA, est.init(jax.random.PRNGKey(0), THETA), jax.random.PRNGKey(1))
    assert 0 <= float(info["weight_rp"]) <= 1 and np.all(np.isfinite(np.asarray(grad)))
    lo, hi = np.minimum(info["grad_rp"], info["grad_es"]), np.maximum(info["grad_rp"], info["grad_es"])
    assert np.all((lo - 1e-6 <= np.asarray(grad)) & (np.asarray(grad) <= hi + 1e-6))


def test_estimators_reject_bad_settings():
    with pytest.raises(ValueError, match="num_tasks >= 2"):
        estimators.Merged(Drift(), FAMILY, horizon=4, num_tasks=1)
    with pytest.raises(ValueError, match="truncation length"):
        estimators.ES(Drift(), FAMILY, horizon=4, length=0)


def test_estimators_are_frozen():
    """Estimators cache compiled kernels, so their settings cannot change after construction (a
    changed sigma would be silently ignored); dataclasses.replace makes a new estimator instead."""
    est = estimators.ES(Drift(), FAMILY, horizon=4, num_tasks=2)
    state = est.init(jax.random.PRNGKey(0), THETA)
    grad, _, _ = est.estimate(THETA, state, jax.random.PRNGKey(1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        est.sigma = 0.5
    assert est.sigma == estimators.DEFAULT_SIGMA
    for other in (estimators.PES(Drift(), FAMILY, horizon=4, num_tasks=2, chunk=2),
                  estimators.FullUnroll(Drift(), FAMILY, num_steps=4), estimators.Merged(Drift(), FAMILY, horizon=4)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            other.horizon = 8
    wider = dataclasses.replace(est, sigma=0.5)
    assert wider.sigma == 0.5 and wider._compiled is not est._compiled
    grad_wider, _, _ = wider.estimate(THETA, state, jax.random.PRNGKey(1))
    assert not np.array_equal(np.asarray(grad), np.asarray(grad_wider))


def _lr_problem():
    quad = tasks.Quadratic(jnp.array([[1.0]]), jnp.zeros(1), jnp.array([1.0]))
    lopt = optimizers.Hyperparameters("sgd", {"learning_rate": 0.1}, log=("learning_rate",))
    return lopt, tasks.SingleTask(quad)


@pytest.mark.parametrize("name", ["TruncatedBPTT", "FullUnroll", "ES", "Reparameterization", "Merged", "PES"])
def test_learned_learning_rate_moves_toward_optimum(name):
    """SGD on l(w) = 1/2 w^2: every step's loss is smallest at lr = 1 (log lr = 0); start at
    lr = 0.1 and take 40 Adam steps of 0.05 on log lr with each estimator."""
    lopt, family = _lr_problem()
    if name == "FullUnroll":
        est = estimators.FullUnroll(lopt, family, num_steps=10, num_tasks=2)
    elif name == "TruncatedBPTT":
        est = estimators.TruncatedBPTT(lopt, family, horizon=10, length=5, num_tasks=2)
    else:
        est = getattr(estimators, name)(lopt, family, horizon=10, length=5, num_tasks=4)
    theta0 = lopt.init(None)
    res = outer.train(est, theta0, optax.adam(0.05), 40, jax.random.PRNGKey(0), progress=False)
    start, end = abs(float(theta0["learning_rate"])), abs(float(res.theta["learning_rate"]))
    assert end < 0.5 * start, (name, start, end)
    assert res.num_skipped == 0
    assert res.history["loss"][-5:].mean() < res.history["loss"][:5].mean()


def test_schedule_lengths_reported():
    lopt, family = _lr_problem()
    est = estimators.ES(lopt, family, horizon=100, length=truncation.curriculum(4, 40, 10), num_tasks=2)
    state = est.init(jax.random.PRNGKey(0), lopt.init(None))
    theta = lopt.init(None)
    lengths = []
    for i in range(12):
        _, state, info = est.estimate(theta, state, jax.random.PRNGKey(i))
        lengths.append(info["length"])
    assert lengths[0] <= 5 and lengths[-1] >= 32
    assert len(est._compiled) <= len(set(truncation.bucket(n) for n in lengths))
