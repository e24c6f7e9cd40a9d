"""Out-of-distribution task families (Metz et al. 2019 sec. 4.4, Fig. 7, App. F): lopt.generalization."""

import jax
import numpy as np
import pytest

from lopt import baselines, generalization, tasks

TRAINED = {"test_classes": [5, 6, 7], "num_classes": 2, "per_class": {"train": 3, "valid": 2, "test": 2},
           "image_size": 4, "batch_size": 4, "loss_cap_factor": 1.5}


def _splits(n=12, hw=8, seed=0):
    """Fake Fashion-MNIST splits: image value = 20 * class + index within its split and class, so every image of
    a split is distinct and recognisable; each split's values are offset (split i adds i to pixel (0, 0))."""
    rng = np.random.default_rng(seed)
    out = {}
    for s, split in enumerate(tasks.SPLITS):
        y = np.repeat(np.arange(10, dtype=np.uint8), n)
        x = np.zeros((y.size, hw, hw), np.uint8)
        for c in range(10):
            x[y == c] = (20 * c + np.arange(n, dtype=np.uint8))[:, None, None]
        x[:, 0, 0] = 200 + s
        perm = rng.permutation(y.size)
        out[f"x_{split}"], out[f"y_{split}"] = x[perm], y[perm]
    return out


def _spec(**kw):
    return {"data": "fashion_mnist", "model": "cnn", "hidden": [3, 3], "strides": [1, 2], "num_classes": 10,
            "image_size": 8, "per_class": {"train": 4, "valid": 3, "test": 2},
            "pool_per_class": {"train": 10, "valid": 8, "test": 6}, **kw}


def test_digits_are_uint8_in_three_disjoint_splits():
    s = generalization.digits_splits(0)
    xs = [s[f"x_{split}"] for split in tasks.SPLITS]
    assert all(x.dtype == np.uint8 and x.shape[1:] == (8, 8) for x in xs)
    assert sum(len(x) for x in xs) == 1797 and max(int(x.max()) for x in xs) == 255
    assert all(set(np.unique(s[f"y_{split}"])) == set(range(10)) for split in tasks.SPLITS)
    rows = [{r.tobytes() for r in x.reshape(len(x), -1)} for x in xs]  # the 1797 digits are distinct images
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    assert np.array_equal(generalization.digits_splits(0)["x_train"], xs[0])
    assert not np.array_equal(generalization.digits_splits(1)["x_train"], xs[0])


def test_resampled_problems_draw_classes_labels_and_images():
    fam = generalization.build(_spec(num_classes=3), TRAINED, _splits())
    assert isinstance(fam, generalization.ResampledFamily)
    orders, train_sets = set(), set()
    for i in range(10):
        key = jax.random.PRNGKey(i)
        task = fam.sample(key)
        classes = fam.task_classes(key)
        orders.add(tuple(classes))
        assert task.num_classes == 3 and task.strides == (1, 2) and task.hidden == (3, 3) and task.batch_size == 4
        seen = {}
        for split, n in (("train", 4), ("valid", 3), ("test", 2)):
            x, y = np.asarray(task.images[split]), np.asarray(task.labels[split])
            assert x.shape == (3 * n, 8, 8) and y.shape == (3 * n,)
            assert np.all(x[:, 0, 0] == 200 + tasks.SPLITS.index(split))  # from its own split's pool only
            for label, c in enumerate(classes):  # label i: the i-th drawn class, n distinct images of it
                vals = x[y == label][:, 1, 1]
                assert np.all(vals // 20 == c) and len(set(vals)) == n
            seen[split] = {r.tobytes() for r in x.reshape(len(x), -1)}
        assert not (seen["train"] & seen["valid"] or seen["train"] & seen["test"] or seen["valid"] & seen["test"])
        train_sets.add(frozenset(seen["train"]))
    assert len(orders) > 5 and len(train_sets) == 10  # label orders and images differ between problems
    many = fam.sample_many(jax.random.PRNGKey(0), 4)
    assert many.images["train"].shape == (4, 12, 8, 8)


def test_all_classes_problems_permute_labels_and_train():
    fam = generalization.build(_spec(), TRAINED, _splits())
    a, b = fam.sample(jax.random.PRNGKey(0)), fam.sample(jax.random.PRNGKey(1))
    assert a.num_classes == 10 and a.images["train"].shape == (40, 8, 8)
    assert fam.task_classes(jax.random.PRNGKey(0)) != fam.task_classes(jax.random.PRNGKey(1))
    assert not np.array_equal(np.asarray(a.images["train"]), np.asarray(b.images["train"]))
    c = baselines.tuned_curves("adam", fam, 4, jax.random.PRNGKey(2), 2, 1, 2, learning_rates=[1e-3, 1e-2])
    assert c.curves["valid"].split["test"].shape == (2, 1, 3) and np.all(np.isfinite(c.curves["train"].train_batch))


def test_held_out_problems_are_notebook_05s_with_another_architecture():
    fam = generalization.build({"data": "held_out", "model": "mlp", "hidden": [5]}, TRAINED, _splits())
    task = fam.sample(jax.random.PRNGKey(0))
    assert task.model == "mlp" and task.hidden == (5,) and task.strides is None and task.num_classes == 2
    assert set(fam.task_classes(jax.random.PRNGKey(0))) <= {5, 6, 7}
    assert task.images["train"].shape == (6, 4, 4) and task.images["test"].shape == (4, 4, 4)
    params = task.init(jax.random.PRNGKey(1))
    assert params[0]["w"].shape == (16, 5) and np.isfinite(task.loss(params, task.batch(jax.random.PRNGKey(2))))
    wide = generalization.build({"data": "held_out", "hidden": [6, 6, 6], "strides": [1, 2, 2]}, TRAINED, _splits())
    assert wide.sample(jax.random.PRNGKey(0)).init(jax.random.PRNGKey(1))["conv"][2]["w"].shape == (3, 3, 6, 6)


def test_digits_family_is_10_way_8x8():
    fam = generalization.build(_spec(data="digits", per_class={"train": 2, "valid": 2, "test": 2},
                                     pool_per_class={"train": 40, "valid": 40, "test": 40}), TRAINED)
    task = fam.sample(jax.random.PRNGKey(0))
    assert task.images["train"].shape == (20, 8, 8) and task.images["train"].dtype == np.uint8


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="allowed values: digits, fashion_mnist, held_out"):
        generalization.build(_spec(data="mnist"), TRAINED, _splits())
    with pytest.raises(ValueError, match="allowed values: cnn, mlp"):
        generalization.build(_spec(model="rnn"), TRAINED, _splits())
    with pytest.raises(ValueError, match="one entry per conv layer"):
        generalization.build(_spec(strides=[1, 2, 2]), TRAINED, _splits())
    with pytest.raises(ValueError, match="raise pool_per_class.valid or lower per_class.valid"):
        generalization.build(_spec(per_class={"train": 4, "valid": 9, "test": 2}), TRAINED, _splits())
    with pytest.raises(ValueError, match="needs 'pool_per_class'"):
        generalization.build({k: v for k, v in _spec().items() if k != "pool_per_class"}, TRAINED, _splits())
    with pytest.raises(ValueError, match="lower per_class.train"):  # the pool is more than the data set has
        generalization.build(_spec(pool_per_class={"train": 13, "valid": 8, "test": 6}), TRAINED, _splits())
    with pytest.raises(ValueError, match="2 <= k <= 10"):
        generalization.build(_spec(num_classes=11), TRAINED, _splits())


def test_summary_reads_median_curves():
    steps = np.array([0, 5, 10])
    # (problems=1, inits=3, evals): medians per step [3, 1, 2] (train) and [4, 2, 3] (test)
    train = baselines.Curves(np.zeros((1, 3, 10)), {"train": np.array([[[3, 1, 2], [9, 0, 9], [2, 5, 1]]], float),
                                                    "test": np.full((1, 3, 3), 7.0)}, steps)
    test = baselines.Curves(np.zeros((1, 3, 10)), {"train": np.full((1, 3, 3), 7.0),
                                                   "test": np.array([[[4, 2, 3], [5, 9, 3], [1, 1, 9]]], float)}, steps)
    s = generalization.summary(train, test)
    assert s == {"initial_train": 3.0, "final_train": 2.0, "lowest_train": 1.0,
                 "initial_test": 4.0, "final_test": 3.0, "lowest_test": 2.0}
