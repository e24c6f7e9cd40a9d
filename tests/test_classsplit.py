"""Class-split task families (Metz et al. 2019 sec. 4.2) and the configurable CNN."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import classsplit, tasks
from lopt.learned import MLPOptimizer


def _splits(n=20, hw=8, seed=0):
    """Fake data-set splits: every class present, image value = 10 * class so pools are recognisable."""
    rng = np.random.default_rng(seed)
    out = {}
    for split in tasks.SPLITS:
        y = np.tile(np.arange(10, dtype=np.uint8), n)
        rng.shuffle(y)
        out[f"x_{split}"] = np.broadcast_to((10 * y)[:, None, None], (y.size, hw, hw)).astype(np.uint8)
        out[f"y_{split}"] = y
    return out


def _families(**kw):
    kw = {"num_classes": 3, "per_class": {"train": 4, "valid": 3, "test": 2}, "image_size": 4,
          "splits": _splits(), "hidden": (4, 4), "strides": (1, 2), "batch_size": 6, **kw}
    return classsplit.class_split([0, 1, 2, 3, 4], [5, 6, 7, 8, 9], **kw)


def test_tasks_draw_k_classes_of_their_side_with_permuted_labels():
    train, test = _families()
    seen_orders = set()
    for i in range(12):
        key = jax.random.PRNGKey(i)
        task = train.sample(key)
        classes = train.task_classes(key)
        assert len(set(classes)) == 3 and set(classes) <= {0, 1, 2, 3, 4}
        seen_orders.add(tuple(classes))
        for split, n in (("train", 4), ("valid", 3), ("test", 2)):
            x, y = np.asarray(task.images[split]), np.asarray(task.labels[split])
            assert x.shape == (3 * n, 4, 4) and y.shape == (3 * n,)
            # label i holds the images of the i-th drawn class (value 10 * class)
            for label, c in enumerate(classes):
                assert np.all(x[y == label] == 10 * c)
        assert set(test.task_classes(key)) <= {5, 6, 7, 8, 9}
    assert len(seen_orders) > 6  # different class sets and label orders


def test_task_is_a_cnn_with_k_outputs_strides_and_a_loss_cap():
    train, _ = _families()
    task = train.sample(jax.random.PRNGKey(0))
    assert task.num_classes == 3 and task.strides == (1, 2)
    assert task.loss_cap == pytest.approx(1.5 * math.log(3))
    params = task.init(jax.random.PRNGKey(1))
    logits = task.apply(params, task.images["train"])
    assert logits.shape == (12, 3)
    loss = task.loss(params, task.batch(jax.random.PRNGKey(2)))
    assert np.isfinite(loss)
    assert float(task.outer_loss(jnp.asarray(100.0))) == pytest.approx(1.5 * math.log(3))
    assert float(task.outer_loss(jnp.asarray(0.5))) == 0.5
    assert float(task.split_loss(params, "test")) > 0
    # vmap over tasks (one per particle of an estimator)
    many = train.sample_many(jax.random.PRNGKey(3), 4)
    assert many.images["train"].shape == (4, 12, 4, 4)


def test_strides_change_the_cnn():
    x = jnp.ones((2, 8, 8, 1))
    params = tasks.cnn_init(jax.random.PRNGKey(0), 1, (3, 3), 5)
    a = tasks.cnn_apply(params, x, "relu", (1, 1))
    b = tasks.cnn_apply(params, x, "relu")  # stride 2 everywhere (as before)
    assert a.shape == b.shape == (2, 5)
    with pytest.raises(ValueError, match="one entry per conv layer"):
        tasks.cnn_apply(params, x, "relu", (1,))


def test_bad_settings_name_the_fix():
    with pytest.raises(ValueError, match="both sides"):
        classsplit.class_split([0, 1, 2], [2, 3, 4], splits=_splits())
    with pytest.raises(ValueError, match="2 <= k <= 5"):
        _families(num_classes=6)
    with pytest.raises(ValueError, match="must divide"):
        _families(image_size=3)
    with pytest.raises(ValueError, match="lower per_class.train"):
        _families(per_class={"train": 50, "valid": 1, "test": 1})
    with pytest.raises(ValueError, match="one entry per conv layer"):
        _families(strides=(1, 2, 2))


def test_init_linear_is_normalised_momentum():
    lopt = MLPOptimizer()
    theta = lopt.init_linear(jax.random.PRNGKey(0), 0.05, "ema_0.9", noise=0.0)
    opt = lopt.opt_fn(theta)
    params = {"w": jnp.arange(1.0, 7.0)}
    state = opt.init(params)
    g = {"w": jnp.array([1.0, -2.0, 3.0, 0.5, -1.0, 2.0])}
    upd, state = opt.update(g, state, params)
    m = 0.1 * g["w"]
    np.testing.assert_allclose(upd["w"], -0.05 * m / jnp.sqrt(jnp.mean(m**2)), rtol=1e-5)
    with pytest.raises(ValueError, match="allowed values"):
        lopt.input_index("ema_0.42")
