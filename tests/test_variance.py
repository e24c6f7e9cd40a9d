"""lopt.variance: estimator variances against the unroll length (Metz et al. 2019 sec. 3, Fig. 4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import estimators, optimizers, tasks, variance
from lopt.learned import MLPOptimizer

LENGTHS = (2, 4, 6)


@pytest.fixture(scope="module")
def setup():
    """A cheap learned optimizer (momentum with learned log lr and beta) on random linear regression."""
    family = tasks.LinearRegressionFamily(dim=4, num_data=6)
    learned = optimizers.Hyperparameters("momentum", {"learning_rate": 0.3, "beta": 0.5}, log=("learning_rate",))
    return family, learned, learned.init(None)


def test_variances_match_definitions():
    key = jax.random.PRNGKey(0)
    es = {"a": jax.random.normal(key, (6, 3))}
    rp = {"a": 0.1 * jax.random.normal(jax.random.PRNGKey(1), (6, 3))}
    out = variance.variances(es, rp)
    var_es = np.var(np.asarray(es["a"]), axis=0, ddof=1).mean() / 6
    var_rp = np.var(np.asarray(rp["a"]), axis=0, ddof=1).mean() / 6
    np.testing.assert_allclose(out["var_es"], var_es, rtol=1e-5)
    np.testing.assert_allclose(out["var_rp"], var_rp, rtol=1e-5)
    w = (1 / var_rp) / (1 / var_rp + 1 / var_es)
    np.testing.assert_allclose(out["weight_rp"], w, rtol=1e-5)
    merged = w * np.asarray(rp["a"]) + (1 - w) * np.asarray(es["a"])
    np.testing.assert_allclose(out["var_merged"], np.var(merged, axis=0, ddof=1).mean() / 6, rtol=1e-4)
    np.testing.assert_allclose(out["var_ideal"], 1 / (1 / var_rp + 1 / var_es), rtol=1e-5)
    assert out["var_merged"] <= min(out["var_rp"], out["var_es"]) * 1.01


def test_non_finite_rp_falls_back_to_es():
    es = {"a": jnp.arange(12.0).reshape(4, 3)}
    rp = {"a": jnp.full((4, 3), jnp.inf)}
    out = variance.variances(es, rp)
    assert float(out["weight_rp"]) == 0.0
    np.testing.assert_allclose(out["var_merged"], out["var_es"])
    np.testing.assert_allclose(out["var_ideal"], out["var_es"])


def test_length_sweep_longest_equals_merged_estimator(setup):
    """The sweep's longest length is exactly estimators.Merged over a whole run of that length."""
    family, learned, theta = setup
    sweep = variance.LengthSweep(learned, family, LENGTHS, num_pairs=4, remat=False)
    key = jax.random.PRNGKey(3)
    out = sweep.sweep(theta, key)
    es, rp, _ = sweep.samples(theta, key)
    k_init, k_est = jax.random.split(key)
    est = estimators.Merged(learned, family, horizon=LENGTHS[-1], num_tasks=4, keep_samples=True)
    _, _, info = est.estimate(theta, est.init(k_init, theta), k_est)
    for a, b in zip(jax.tree.leaves(es), jax.tree.leaves(info["samples_es"])):
        np.testing.assert_allclose(a[:, -1], b, rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(rp), jax.tree.leaves(info["samples_rp"])):
        np.testing.assert_allclose(a[:, -1], b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["var_rp"][-1], info["var_rp"], rtol=1e-4)
    np.testing.assert_allclose(out["var_es"][-1], info["var_es"], rtol=1e-4)
    np.testing.assert_allclose(out["weight_rp"][-1], info["weight_rp"], rtol=1e-4)
    assert out["length"].tolist() == list(LENGTHS)
    assert all(np.all(np.isfinite(v)) for v in out.values())


def test_length_sweep_shorter_length_is_its_own_run(setup):
    """A shorter length's estimate equals a whole run of that length (same runs and noise)."""
    family, learned, theta = setup
    key = jax.random.PRNGKey(4)
    long = variance.LengthSweep(learned, family, LENGTHS, num_pairs=3, remat=False).samples(theta, key)
    short = variance.LengthSweep(learned, family, (LENGTHS[0],), num_pairs=3, remat=False).samples(theta, key)
    for a, b in zip(jax.tree.leaves(long[:2]), jax.tree.leaves(short[:2])):
        np.testing.assert_allclose(a[:, 0], b[:, 0], rtol=1e-4, atol=1e-6)


def test_rp_and_es_agree_on_a_quadratic():
    """Both estimators are unbiased for the smoothed loss: on a learned SGD learning rate over a
    quadratic (smooth in theta) their means over many pairs agree."""
    family = tasks.SingleTask(tasks.Quadratic.from_eigenvalues(jax.random.PRNGKey(0), [0.5, 1.0, 2.0]))
    learned = optimizers.Hyperparameters("sgd", {"learning_rate": 0.1}, log=("learning_rate",))
    theta = learned.init(None)
    sweep = variance.LengthSweep(learned, family, (3, 5), num_pairs=256, remat=False)
    es, rp, _ = sweep.samples(theta, jax.random.PRNGKey(0))
    g_es, g_rp = np.asarray(es["learning_rate"]).mean(0), np.asarray(rp["learning_rate"]).mean(0)
    se = np.asarray(es["learning_rate"]).std(0) / np.sqrt(256)
    assert np.all(np.abs(g_es - g_rp) < 4 * se + 1e-6)


def test_truncated_sweep_pes_and_merged(setup):
    family, learned, theta = setup
    pes = estimators.PES(learned, family, horizon=6, length=2, num_tasks=3, keep_samples=True)
    out = variance.truncated_sweep(pes, theta, (2, 6), jax.random.PRNGKey(0))
    assert out["length"].tolist() == [2, 6] and out["var_pes"].shape == (2,)
    merged = estimators.Merged(learned, family, horizon=6, length=2, num_tasks=3, keep_samples=True)
    out = variance.truncated_sweep(merged, theta, (2, 4), jax.random.PRNGKey(0))
    assert set(out) >= {"var_rp", "var_es", "var_merged", "weight_rp", "length"}
    assert all(np.all(np.isfinite(v)) for v in out.values())


def test_truncated_sweep_first_truncation_is_one_estimate(setup):
    family, learned, theta = setup
    pes = estimators.PES(learned, family, horizon=4, length=2, num_tasks=3, keep_samples=True)
    out = variance.truncated_sweep(pes, theta, (2,), jax.random.PRNGKey(1))
    k_init, k_est = jax.random.split(jax.random.PRNGKey(1))
    _, _, info = pes.estimate(theta, pes.init(k_init, theta), jax.random.fold_in(k_est, 0))
    np.testing.assert_allclose(out["var_pes"][0], info["var_pes"], rtol=1e-5)


def test_errors(setup):
    family, learned, theta = setup
    with pytest.raises(ValueError, match="num_pairs"):
        variance.LengthSweep(learned, family, (2,), num_pairs=1)
    pes = estimators.PES(learned, family, horizon=4, length=2, num_tasks=2)
    with pytest.raises(ValueError, match="keep_samples"):
        variance.truncated_sweep(pes, theta, (2,), jax.random.PRNGKey(0))
    pes = estimators.PES(learned, family, horizon=4, length=2, num_tasks=2, keep_samples=True)
    with pytest.raises(ValueError, match="multiples"):
        variance.truncated_sweep(pes, theta, (3,), jax.random.PRNGKey(0))


def test_orders_of_magnitude():
    np.testing.assert_allclose(variance.orders_of_magnitude([1e5, 1.0], [1.0, 1e-2]), [5.0, 2.0])


def test_downsample():
    images = {s: jnp.arange(2 * 4 * 4, dtype=jnp.uint8).reshape(2, 4, 4) for s in ("train", "valid", "test")}
    labels = {s: jnp.zeros((2,), jnp.int32) for s in images}
    task = tasks.ImageClassifier(images, labels, "mlp", (3,), "relu", 2)
    small = variance.downsample(task, 2)
    assert small.images["train"].shape == (2, 2, 2) and small.images["train"].dtype == jnp.uint8
    assert int(small.images["train"][0, 0, 0]) == round((0 + 1 + 4 + 5) / 4)
    assert small.init(jax.random.PRNGKey(0))[0]["w"].shape == (4, 3)
    with pytest.raises(ValueError, match="divide"):
        variance.downsample(task, 3)


def test_scale_mlp_steps():
    learned = MLPOptimizer(hidden=4, decays=(0.9,), time_scales=(10.0,))
    theta = learned.init(jax.random.PRNGKey(0))
    theta = {**theta, "b2": jnp.array([0.3, -0.2])}
    params, grads = jnp.linspace(-1.0, 1.0, 5), jnp.linspace(0.5, -0.5, 5)
    step = lambda th: learned.opt_fn(th).update(grads, learned.opt_fn(th).init(params), params)[0]
    np.testing.assert_allclose(step(variance.scale_mlp_steps(theta, 10.0)), 10.0 * step(theta), rtol=1e-5, atol=1e-9)


def test_track_merged_matches_variances():
    info = {"samples_es": {"a": jnp.arange(8.0).reshape(4, 2)}, "samples_rp": {"a": jnp.ones((4, 2)) * jnp.arange(4.0)[:, None]}}
    out = variance.track_merged(None, None, info)
    np.testing.assert_allclose(out["var_merged"], variance.variances(info["samples_es"], info["samples_rp"])["var_merged"])
