"""Tests of lopt.tuning: grids, the vectorised random search, edge detection, held-out evaluation (the pilots and
the selection of meta-training: test_selection.py)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import tasks, tuning
from lopt.tasks import Quadratic, TaskFamily

CURVATURE = 2.0  # gradient descent on 1/2 h |w|^2 converges in one step at lr = 1 / h


@dataclasses.dataclass(frozen=True)
class IsotropicQuadratics(TaskFamily):
    """1/2 h |w|^2 in 3 dimensions from w0 ~ N(0, I)."""

    def sample(self, key):
        return Quadratic(CURVATURE * jnp.eye(3), jnp.zeros(3), jax.random.normal(key, (3,)))


def test_axis_scales_and_errors():
    np.testing.assert_allclose(tuning.axis(1e-3, 1e1, 5), [1e-3, 1e-2, 1e-1, 1e0, 1e1])
    np.testing.assert_allclose(tuning.axis(0.0, 1.0, 3, "linear"), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(tuning.axis(0.0, 0.999, 4, "log1m"), [0.0, 0.9, 0.99, 0.999])
    with pytest.raises(ValueError, match="allowed values"):
        tuning.axis(0.1, 1.0, 3, "cubic")
    with pytest.raises(ValueError, match="num >= 2"):
        tuning.axis(0.1, 1.0, 1)
    spec = {"learning_rate": {"lo": 0.1, "hi": 10.0, "num": 3}, "beta": {"lo": 0.0, "hi": 0.99, "num": 3, "scale": "log1m"}}
    axes = tuning.axes_from_spec(spec)
    np.testing.assert_allclose(axes["beta"], [0.0, 0.9, 0.99])


def test_sample_grid_distinct_and_whole_grid():
    idx = tuning.sample_grid(jax.random.PRNGKey(0), (4, 5), 7)
    assert idx.shape == (7, 2)
    assert len({tuple(r) for r in idx}) == 7
    assert np.all(idx >= 0) and np.all(idx[:, 0] < 4) and np.all(idx[:, 1] < 5)
    assert tuning.sample_grid(jax.random.PRNGKey(0), (4, 5), 100).shape == (20, 2)


def test_search_finds_known_best_learning_rate_inside_grid():
    axes = {"learning_rate": tuning.axis(0.05, 5.0, 21)}  # 0.5 = 1 / h is the middle value
    res = tuning.random_search("sgd", axes, IsotropicQuadratics(), num_steps=30, num_tasks=4, num_samples=21,
                               key=jax.random.PRNGKey(0))
    assert res.best["learning_rate"] == pytest.approx(1.0 / CURVATURE, rel=1e-6)
    assert res.best_loss < 1e-6 and np.sum(res.loss < 1e-3) == 1
    assert np.isinf(res.loss[-1])  # lr = 5: |1 - lr h|^60 = 9^60 overflows float32 -> inf, never chosen
    assert tuning.on_edge(res) == {"learning_rate": False}


def test_edge_detection_momentum():
    # with lr = 1/h, beta = 0 is exact: the best sits on the beta = 0 edge of the grid
    axes = {"learning_rate": tuning.axis(0.05, 5.0, 11), "beta": tuning.axis(0.0, 0.99, 5, "log1m")}
    res = tuning.random_search("momentum", axes, IsotropicQuadratics(), num_steps=10, num_tasks=2, num_samples=55,
                               key=jax.random.PRNGKey(1))
    assert res.best == pytest.approx({"learning_rate": 0.5, "beta": 0.0})
    assert tuning.on_edge(res) == {"learning_rate": False, "beta": True}
    grid = res.grid_loss()
    assert grid.shape == (11, 5) and np.nanargmin(np.where(np.isfinite(grid), grid, np.nan)) == 5 * 5 + 0
    proj = res.projection("beta", "learning_rate")
    assert proj.shape == (5, 11)


def test_projection_is_min_over_other_axes_and_nan_where_unsampled():
    axes = {"learning_rate": tuning.axis(0.05, 1.0, 4), "b1": tuning.axis(0.0, 0.9, 3, "linear"),
            "b2": tuning.axis(0.9, 0.999, 3, "log1m")}
    res = tuning.random_search("adam", axes, IsotropicQuadratics(), num_steps=5, num_tasks=2, num_samples=10,
                               key=jax.random.PRNGKey(2))
    grid = res.grid_loss()
    assert np.sum(~np.isnan(grid)) == 10
    proj = res.projection("learning_rate", "b1")
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nanmin(grid, axis=2)
    np.testing.assert_array_equal(proj, expected)


def test_evaluate_is_mean_loss_after_each_update():
    # SGD on 1/2 h w^2: l(w_t) = (1 - lr h)^(2t) l(w_0); meta-objective = mean over t = 1..T
    lr, steps = 0.1, 7
    key = jax.random.PRNGKey(3)
    per_task = tuning.evaluate_baseline("sgd", {"learning_rate": lr}, IsotropicQuadratics(), steps, 5, key)
    # the same problems: outer.evaluate draws problem i from fold_in(split(key, n)[i], 0)
    keys = jax.random.split(key, 5)
    w0 = np.stack([np.asarray(IsotropicQuadratics().sample(jax.random.fold_in(k, 0)).w0) for k in keys])
    l0 = 0.5 * CURVATURE * np.sum(w0**2, axis=1)
    factor = np.mean([(1 - lr * CURVATURE) ** (2 * t) for t in range(1, steps + 1)])
    np.testing.assert_allclose(per_task, factor * l0, rtol=1e-5)


def test_mean_and_se():
    mean, se = tuning.mean_and_se([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2.0)
    with pytest.raises(ValueError, match="at least 2"):
        tuning.mean_and_se([1.0])


def test_curves_mean_is_evaluate_and_matches_outer_evaluate():
    from lopt import outer

    hp, theta = tuning.baseline("momentum", {"learning_rate": 0.2, "beta": 0.5})
    key = jax.random.PRNGKey(4)
    c = tuning.curves(hp, theta, IsotropicQuadratics(), 6, 3, key)
    assert c.shape == (3, 6)
    np.testing.assert_allclose(c.mean(axis=1), np.asarray(outer.evaluate(hp, IsotropicQuadratics(), theta, 6, 3, key)),
                               rtol=1e-6)


def test_plot_search_marks_best():
    import matplotlib.pyplot as plt

    axes = {"learning_rate": tuning.axis(0.05, 5.0, 11), "beta": tuning.axis(0.0, 0.99, 5, "log1m")}
    res = tuning.random_search("momentum", axes, IsotropicQuadratics(), num_steps=10, num_tasks=2, num_samples=55,
                               key=jax.random.PRNGKey(1))
    fig, ax = plt.subplots()
    im = tuning.plot_search(ax, res, "learning_rate", "beta")
    assert im.get_array().shape == (5, 11)
    plt.close(fig)


def test_loss_floors_bound_the_curves_of_the_same_problems():
    fam = tasks.LinearRegressionFamily(dim=4, num_data=8)
    key = jax.random.PRNGKey(3)
    floors = tuning.loss_floors(fam, 5, key)
    # long gradient descent on the same problems approaches the floor from above
    c = tuning.curves(*tuning.baseline("momentum", {"learning_rate": 0.3, "beta": 0.5}), fam, 400, 5, key)
    assert np.all(c.min(axis=1) >= floors - 1e-4) and np.allclose(c[:, -1], floors, atol=1e-3)
    assert np.all(floors > 0)  # more data than dimensions: an irreducible loss
    np.testing.assert_array_equal(tuning.loss_floors(tasks.RosenbrockFamily(), 3, key), np.zeros(3))
