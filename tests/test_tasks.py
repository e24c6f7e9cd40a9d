"""lopt.tasks: toy losses, task families, convolutions as patches, image classifiers."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import tasks


def test_two_minima_stationary_points_and_values():
    task = tasks.TwoMinima()
    local, glob = task.minima()
    assert local == 0.0
    assert glob == pytest.approx((21 + math.sqrt(57)) / 8)
    grad = jax.grad(task.loss)
    for w in (local, glob):
        assert abs(float(grad(jnp.float32(w)))) < 1e-4
        assert float(jax.grad(grad)(jnp.float32(w))) > 0  # minima, not maxima
    assert float(task.loss(jnp.float32(local))) == 0.0
    assert float(task.loss(jnp.float32(glob))) == pytest.approx(-3.12, abs=5e-3)
    assert float(task.loss(jnp.float32(glob))) < float(task.loss(jnp.float32(local)))
    assert float(task.init(None)) == pytest.approx(-1.2)


def test_quadratic_from_eigenvalues():
    eig = np.array([0.1, 0.5, 1.0, 2.0])
    task = jax.jit(tasks.Quadratic.from_eigenvalues)(jax.random.PRNGKey(3), eig)
    np.testing.assert_allclose(task.hessian, task.hessian.T, atol=1e-7)
    np.testing.assert_allclose(np.linalg.eigvalsh(np.asarray(task.hessian)), eig, rtol=1e-5, atol=1e-6)
    assert float(task.loss(task.center)) == 0.0
    assert task.init(None).shape == (4,)
    # the Hessian of the loss is the stored matrix
    np.testing.assert_allclose(jax.jit(jax.hessian(task.loss))(task.w0), task.hessian, atol=1e-6)


@pytest.mark.parametrize(
    "family, n",
    [
        (tasks.LinearRegressionFamily(dim=4, num_data=6), 3),
        (tasks.RosenbrockFamily(), 5),
        (tasks.TwoMoonsFamily(num_data=16, hidden=(8, 8)), 2),
    ],
    ids=["linreg", "rosenbrock", "two_moons"],
)
def test_family_sample_many_stacks(family, n):
    batch = family.sample_many(jax.random.PRNGKey(0), n)
    single = jax.eval_shape(family.sample, jax.random.PRNGKey(1))
    assert type(batch) is type(single)
    for leaf_b, leaf_s in zip(jax.tree.leaves(batch), jax.tree.leaves(single)):
        assert leaf_b.shape == (n, *leaf_s.shape)
    losses = jax.jit(jax.vmap(lambda t: t.loss(t.init(None))))(batch)
    assert losses.shape == (n,)
    assert np.all(np.isfinite(losses))
    # different keys give different tasks
    leaves = [l for l in jax.tree.leaves(batch) if np.asarray(l).std() > 0]
    assert any(not np.allclose(l[0], l[1]) for l in leaves)


def test_linear_regression_hessian():
    task = jax.jit(tasks.LinearRegressionFamily(dim=3, num_data=5).sample)(jax.random.PRNGKey(2))
    np.testing.assert_allclose(
        np.sort(np.linalg.eigvalsh(np.asarray(jax.jit(jax.hessian(task.loss))(task.x0)))),
        jax.jit(task.hessian_eigenvalues)(),
        rtol=1e-4,
        atol=1e-6,
    )


def test_rosenbrock_minimum_and_starts():
    task = tasks.Rosenbrock(jnp.zeros(2))
    assert float(task.loss(jnp.array([1.0, 1.0]))) == 0.0
    assert np.allclose(jax.grad(task.loss)(jnp.array([1.0, 1.0])), 0.0)
    starts = tasks.RosenbrockFamily().sample_many(jax.random.PRNGKey(0), 200).x0
    x, y = np.asarray(starts[:, 0]), np.asarray(starts[:, 1])
    assert np.all((x > -2) & (x < 2)) and np.all((y > -1) & (y < 3))
    assert x.min() < -1.5 and x.max() > 1.5 and y.min() < -0.5 and y.max() > 2.5  # covers the box


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_matches_lax(size, stride):
    rng = np.random.default_rng(size * 10 + stride)
    x = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 3, 5)), jnp.float32)
    expected = jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    got = tasks.conv2d(x, kernel, stride=stride)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
    patches = tasks.extract_patches(x, 3, stride)
    assert patches.shape == (*expected.shape[:3], 27)
    np.testing.assert_allclose(patches @ kernel.reshape(-1, 5), expected, atol=1e-5)


def _random_images(n=64, hw=8, seed=0):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.integers(0, 256, (n, hw, hw), dtype=np.uint8)),
        jnp.asarray(rng.integers(0, 10, (n,), dtype=np.int32)),
    )


def _classifier(model, hidden, batch_size=16):
    images, labels = {}, {}
    for i, split in enumerate(tasks.SPLITS):
        images[split], labels[split] = _random_images(seed=i)
    return tasks.ImageClassifier(images, labels, model, hidden, "relu", batch_size)


@jax.jit
def _classifier_outputs(task, key):
    k_init, k_batch = jax.random.split(key)
    params = task.init(k_init)
    batch = task.batch(k_batch)
    loss, grads = jax.value_and_grad(task.loss)(params, batch)
    return params, batch, task.apply(params, batch[0]), loss, grads, task.accuracy(params, "valid")


@pytest.mark.parametrize("model, hidden", [("mlp", (16,)), ("cnn", (4, 6))])
def test_image_classifier(model, hidden):
    task = _classifier(model, hidden)
    params, batch, logits, loss, grads, acc = _classifier_outputs(task, jax.random.PRNGKey(0))
    images, labels = batch
    assert images.shape == (16, 8, 8) and images.dtype == jnp.uint8
    assert labels.shape == (16,)
    assert logits.shape == (16, 10)
    assert loss.shape == () and np.isfinite(loss)
    if model == "mlp":
        assert [p["w"].shape for p in params] == [(64, 16), (16, 10)]
        assert abs(float(loss) - math.log(10)) < 0.5
    else:
        assert [p["w"].shape for p in params["conv"]] == [(3, 3, 1, 4), (3, 3, 4, 6)]
        assert params["head"]["w"].shape == (6, 10)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))
    assert 0.0 <= float(acc) <= 1.0
    with pytest.raises(ValueError, match="allowed values"):
        task.batch(jax.random.PRNGKey(0), "holdout")


def test_image_classifier_unknown_model():
    with pytest.raises(ValueError, match="mlp, cnn"):
        _classifier("resnet", (4,)).init(jax.random.PRNGKey(0))


def test_activation():
    assert tasks.activation("relu") is jax.nn.relu
    np.testing.assert_allclose(tasks.activation("leaky_relu")(jnp.array([-1.0, 2.0])), [-0.1, 2.0])
    with pytest.raises(ValueError) as exc:
        tasks.activation("bad")
    for name in ("relu", "tanh", "sigmoid", "leaky_relu"):
        assert name in str(exc.value)


def test_softmax_xent_uniform():
    logits = jnp.zeros((4, 10))
    assert float(tasks.softmax_xent(logits, jnp.array([0, 3, 5, 9]))) == pytest.approx(math.log(10), rel=1e-6)
