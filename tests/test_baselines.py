"""lopt.baselines: Adam+Reg+Decay, per-task learning-rate tuning, curves, wall-clock (Metz 2019 sec. 4.4)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import baselines, classsplit, tasks
from lopt.optimizers import Hyperparameters


def _family():
    rng = np.random.default_rng(0)
    splits = {}
    for s in tasks.SPLITS:
        y = np.tile(np.arange(10, dtype=np.uint8), 6)
        splits[f"x_{s}"] = (rng.integers(0, 60, (60, 4, 4)) + 20 * y[:, None, None]).astype(np.uint8)
        splits[f"y_{s}"] = y
    return classsplit.class_split([0, 1, 2, 3], [4, 5, 6, 7], 2, {"train": 4, "valid": 4, "test": 4}, 4, splits=splits,
                                  model="cnn", hidden=(3, 3), strides=(1, 2), batch_size=4)


def test_adam_reg_decay_is_adam_without_reg_and_decay():
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    ours = baselines.adam_reg_decay(1e-2, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0, 0.0)
    ref = optax.adam(1e-2, b1=0.9, b2=0.999, eps=1e-8, eps_root=1e-10)
    s1, s2 = ours.init(params), ref.init(params)
    for i in range(5):
        g = {"w": jnp.array([0.3, -1.0, 2.0]) * (i + 1)}
        u1, s1 = ours.update(g, s1, params)
        u2, s2 = ref.update(g, s2, params)
        np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-5)


def test_decay_and_penalties():
    params = {"w": jnp.array([2.0, -3.0])}
    zero = {"w": jnp.zeros(2)}
    # l2 alone pulls the weights toward 0 with a zero gradient; l1 too
    for l1, l2 in ((0.0, 0.1), (0.1, 0.0)):
        opt = baselines.adam_reg_decay(1e-2, 0.9, 0.999, 1e-8, 0.0, 0.0, l1, l2)
        u, _ = opt.update(zero, opt.init(params), params)
        assert np.all(np.sign(u["w"]) == -np.sign(params["w"]))
    # the learning rate at step s: lr exp(-e s') max(1 - l s', 0), s' = s * 10000 / training_steps
    opt = baselines.adam_reg_decay(1.0, 0.0, 0.0, 0.0, 1e-4, 1e-4, 0.0, 0.0, training_steps=100)
    state = opt.init(params)
    g = {"w": jnp.array([1.0, 1.0])}
    for step in range(3):
        u, state = opt.update(g, state, params)
        s = step * 100.0
        np.testing.assert_allclose(-u["w"][0], np.exp(-1e-4 * s) * max(1 - 1e-4 * s, 0), rtol=1e-4)


def test_samples_are_log_uniform_in_the_ranges():
    cfg = baselines.sample_adam8p(jax.random.PRNGKey(0), 4000)
    for name, (lo, hi, one_minus) in baselines.ADAM8P_RANGES.items():
        x = 1 - cfg[name] if one_minus else cfg[name]
        assert lo <= x.min() and x.max() <= hi
        assert abs(np.median(np.log(x)) - 0.5 * (np.log(lo) + np.log(hi))) < 0.1 * (np.log(hi) - np.log(lo))


def test_learning_rate_tuning_and_search_score_the_same_runs():
    train, _ = _family()
    res = baselines.tune_learning_rate("adam", train, 10, 2, jax.random.PRNGKey(0), learning_rates=[1e-3, 1e-2, 10.0])
    assert res.scores.shape == (3,) and np.isfinite(res.best_score)
    assert res.best_score == res.scores.min() and res.best_lr in (1e-3, 1e-2, 10.0)
    from lopt import outer

    direct = outer.evaluate(Hyperparameters("adam", {"learning_rate": res.best_lr}),
                            train, {"learning_rate": jnp.float32(res.best_lr)}, 10, 2, jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.mean(direct), res.best_score, rtol=1e-5)
    search = baselines.random_search_adam8p(train, 5, 10, 2, jax.random.PRNGKey(1), batch=2)
    assert search.scores.shape == (5,) and search.best_score == np.min(search.scores)


def test_curves_and_per_problem_tuning():
    _, held = _family()
    hp = Hyperparameters("sgd", {"learning_rate": 0.0})
    c = baselines.curves_with_eval(hp, {"learning_rate": jnp.array([0.0, 0.1])}, held, 6, jax.random.PRNGKey(0), 3, 2, 3)
    assert c.train_batch.shape == (2, 3, 2, 6) and c.split["test"].shape == (2, 3, 2, 3)
    np.testing.assert_array_equal(c.steps, [0, 3, 6])
    # learning rate 0: the loss never moves; both thetas start from the same point
    np.testing.assert_allclose(c.split["test"][0, ..., 0], c.split["test"][0, ..., -1], rtol=1e-6)
    np.testing.assert_allclose(c.split["test"][0, ..., 0], c.split["test"][1, ..., 0], rtol=1e-6)
    tuned = baselines.tuned_curves("momentum", held, 6, jax.random.PRNGKey(0), 3, 2, 3, learning_rates=[1e-3, 0.1, 1.0])
    for obj in ("train", "valid"):
        assert tuned.lrs[obj].shape == (3,) and tuned.curves[obj].split["test"].shape == (3, 2, 3)
        # the chosen rate has the lowest tuning score on each problem
        np.testing.assert_array_equal(np.asarray([1e-3, 0.1, 1.0], np.float32)[tuned.scores[obj].argmin(0)],
                                      tuned.lrs[obj].astype(np.float32))
    with pytest.raises(ValueError, match="must divide"):
        baselines.curves_with_eval(hp, {"learning_rate": jnp.array([0.1])}, held, 7, jax.random.PRNGKey(0), 1, 1, 3)


def test_step_times_interleaved():
    _, held = _family()
    opts = {"sgd": (Hyperparameters("sgd", {"learning_rate": 0.1}), {"learning_rate": jnp.float32(0.1)}),
            "adam8p": (baselines.AdamRegDecay(10), baselines.AdamRegDecay(10).init())}
    times = baselines.step_times(opts, held, jax.random.PRNGKey(0), num_steps=3, repeats=3)
    assert set(times) == set(opts) and all(v["median"] > 0 and v["q25"] <= v["q75"] for v in times.values())
