"""The two objectives of Schröter 2022 (sec. 5.1), as :mod:`lopt.tasks` tasks and task families.

- :class:`NormQuadratic` / :class:`QuadraticFamily`: f(theta) = ||W theta - y|| with W, y ~ N(0, 1), n = 16.
  The author's code takes the *unsquared* norm and draws theta0 ~ N(0, 0.05^2) (Keras's ``RandomNormal``); eq. 5.1
  (l.398) squares it and l.400 says theta0 ~ N(0, 1): ``squared`` and ``init_std`` switch to the text.
- :class:`ThesisMLP` / :class:`MLPFamily`: a 784-32-10 MLP on (Fashion-)MNIST, batch 128 (l.408-438). The hidden
  activation is a *traced* index into :data:`ACTIVATIONS` (``lax.switch``), so one compiled program covers all
  four of sec. 5.4.1; the output layer is a sigmoid (the default, l.408) or a softmax (sec. 5.4.1, l.507), both
  scored by Keras's sparse cross-entropy as the code ran it (:func:`keras_xent`). Glorot-uniform weights and zero
  biases (Keras ``Dense``). Images can be average-pooled (``pool``) for cheap runs.

A task of the MLP family is the data set plus an initialisation and a minibatch order, both drawn by the run's key
in :class:`lopt.truncation.TruncatedTraining`. Minibatches are drawn with replacement from the first ``num_train``
images (the code shuffles and walks each epoch): :meth:`Task.batch` only sees a per-step key. An epoch is still
``num_train / batch`` steps (48k / 128 = 375, l.438).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..tasks import Task, TaskFamily, pytree_dataclass, static

Array = jax.Array

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu")
_ACT_FNS = (jax.nn.sigmoid, jnp.tanh, jax.nn.relu, lambda z: jax.nn.leaky_relu(z, 0.1))
OUTPUTS = ("sigmoid", "softmax")
KERAS_EPS = 1e-7


def activation_index(name: str) -> int:
    """The index of a hidden activation in :data:`ACTIVATIONS`."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; allowed values: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS.index(name)


def hidden_activation(index: Array | int, z: Array) -> Array:
    """sigmoid, tanh, ReLU or leaky ReLU (slope 0.1, sec. 5.4.1) of z, chosen by a (traced) index."""
    return jax.lax.switch(jnp.asarray(index, jnp.int32), _ACT_FNS, z)


def keras_xent(probs: Array, labels: Array) -> Array:
    """Keras's ``SparseCategoricalCrossentropy()`` on probabilities, as TF 2 evaluates it eagerly: clip to
    [1e-7, 1 - 1e-7], log, then softmax cross-entropy, i.e. -ln p_y + ln sum_j p_j (renormalises sigmoid outputs).
    probs (..., classes), labels (...) -> per-example losses (...)."""
    logp = jnp.log(jnp.clip(probs, KERAS_EPS, 1.0 - KERAS_EPS))
    return jax.nn.logsumexp(logp, axis=-1) - jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


# ---------------------------------------------------------------------------------------------- quadratic


@pytree_dataclass
class NormQuadratic(Task):
    """f(theta) = ||W theta - y||_2 (``squared``: ||.||^2, eq. 5.1), started at theta0."""

    W: Array
    y: Array
    theta0: Array
    squared: bool = static(False)

    def init(self, key: Array | None = None) -> Array:
        return self.theta0

    def loss(self, params: Array, batch: Any = None) -> Array:
        r = self.W @ params - self.y
        sq = r @ r
        return sq if self.squared else jnp.sqrt(sq)


@pytree_dataclass
class QuadraticFamily(TaskFamily):
    """Random quadratics (sec. 5.1.1): W (dim, dim), y (dim,) ~ N(0, 1); theta0 ~ N(0, init_std^2)."""

    dim: int = static(16)
    squared: bool = static(False)
    init_std: float = static(0.05)

    def sample(self, key: Array) -> NormQuadratic:
        k_w, k_y, k_0 = jax.random.split(key, 3)
        W = jax.random.normal(k_w, (self.dim, self.dim))
        y = jax.random.normal(k_y, (self.dim,))
        return NormQuadratic(W, y, self.init_std * jax.random.normal(k_0, (self.dim,)), self.squared)


# ---------------------------------------------------------------------------------------------- MLP


@pytree_dataclass
class ThesisMLP(Task):
    """One-hidden-layer MLP classifier (sec. 5.1.2). ``images`` / ``labels`` map split names to uint8 images
    (n, h, w) and int labels; ``act`` is the index of the hidden activation (a leaf: may be traced)."""

    images: dict[str, Array]
    labels: dict[str, Array]
    act: Array
    hidden: int = static(32)
    output: str = static("sigmoid")
    batch_size: int = static(128)
    pool: int = static(1)
    num_classes: int = static(10)

    @property
    def num_inputs(self) -> int:
        h, w = self.images["train"].shape[1:]
        return (h // self.pool) * (w // self.pool)

    @property
    def steps_per_epoch(self) -> int:
        return self.images["train"].shape[0] // self.batch_size

    def with_activation(self, act: Array | int | str) -> "ThesisMLP":
        idx = activation_index(act) if isinstance(act, str) else act
        return ThesisMLP(self.images, self.labels, jnp.asarray(idx, jnp.int32), self.hidden, self.output,
                         self.batch_size, self.pool, self.num_classes)

    def inputs(self, images: Array) -> Array:
        """uint8 images (..., h, w) -> pooled, flattened inputs in [0, 1], shape (..., num_inputs)."""
        x = images.astype(jnp.float32) / 255.0
        if self.pool > 1:
            k, (h, w) = self.pool, x.shape[-2:]
            x = x.reshape(*x.shape[:-2], h // k, k, w // k, k).mean(axis=(-3, -1))
        return x.reshape(*x.shape[:-2], -1)

    def init(self, key: Array) -> dict[str, dict[str, Array]]:
        glorot = jax.nn.initializers.glorot_uniform()
        k1, k2 = jax.random.split(key)
        return {"hidden": {"w": glorot(k1, (self.num_inputs, self.hidden)), "b": jnp.zeros((self.hidden,))},
                "output": {"w": glorot(k2, (self.hidden, self.num_classes)), "b": jnp.zeros((self.num_classes,))}}

    def probs(self, params: Any, images: Array) -> Array:
        """Class probabilities (sigmoid or softmax output layer) for uint8 images."""
        z = hidden_activation(self.act, self.inputs(images) @ params["hidden"]["w"] + params["hidden"]["b"])
        logits = z @ params["output"]["w"] + params["output"]["b"]
        return jax.nn.sigmoid(logits) if self.output == "sigmoid" else jax.nn.softmax(logits, axis=-1)

    def loss(self, params: Any, batch: tuple[Array, Array]) -> Array:
        images, labels = batch
        return jnp.mean(keras_xent(self.probs(params, images), labels))

    def batch(self, key: Array, split: str = "train") -> tuple[Array, Array]:
        n = self.images[split].shape[0]
        idx = jax.random.randint(key, (self.batch_size,), 0, n)
        return self.images[split][idx], self.labels[split][idx]

    def _per_example(self, params: Any, split: str, fn, chunk: int) -> Array:
        return jax.lax.map(lambda xy: fn(params, xy[0], xy[1]), (self.images[split], self.labels[split]),
                           batch_size=chunk)

    def full_loss(self, params: Any, split: str = "train", chunk: int = 4096) -> Array:
        """The loss on a whole split (the full-batch loss), in chunks of ``chunk`` images."""
        per = self._per_example(params, split, lambda p, x, y: keras_xent(self.probs(p, x), y), chunk)
        return jnp.mean(per)

    def accuracy(self, params: Any, split: str = "train", chunk: int = 4096) -> Array:
        per = self._per_example(params, split, lambda p, x, y: jnp.argmax(self.probs(p, x), -1) == y, chunk)
        return jnp.mean(per.astype(jnp.float32))


@pytree_dataclass
class MLPFamily(TaskFamily):
    """The MLP objective as a family: every sample is the same data set (runs differ by their keys)."""

    task: ThesisMLP

    def sample(self, key: Array) -> ThesisMLP:
        return self.task

    def with_activation(self, act: Array | int | str) -> "MLPFamily":
        return MLPFamily(self.task.with_activation(act))


def make_mlp(images: Any, labels: Any, act: str | int = "sigmoid", output: str = "sigmoid", hidden: int = 32,
             batch_size: int = 128, pool: int = 1, test_images: Any = None, test_labels: Any = None) -> MLPFamily:
    """The MLP objective on given uint8 images (n, h, w) and labels (a ``"test"`` split if given)."""
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; allowed values: {', '.join(OUTPUTS)}")
    h, w = np.shape(images)[1:]
    if h % pool or w % pool:
        raise ValueError(f"pool {pool} must divide the image size {h}x{w}")
    ims = {"train": jnp.asarray(images, jnp.uint8)}
    labs = {"train": jnp.asarray(labels, jnp.int32)}
    if test_images is not None:
        ims["test"], labs["test"] = jnp.asarray(test_images, jnp.uint8), jnp.asarray(test_labels, jnp.int32)
    task = ThesisMLP(ims, labs, jnp.asarray(0, jnp.int32), int(hidden), output, int(batch_size), int(pool))
    return MLPFamily(task.with_activation(act))


def fashion_mnist_mlp(num_train: int = 48_000, act: str | int = "sigmoid", output: str = "sigmoid",
                      hidden: int = 32, batch_size: int = 128, pool: int = 1, num_test: int | None = 10_000) -> MLPFamily:
    """The thesis's MLP objective on Fashion-MNIST (:func:`lopt.data.load_splits`): the first ``num_train``
    training images (48k as the thesis's 80 % of 60k; the prepared train split has 50k), the test split."""
    from .. import data

    s = data.load_splits()
    if num_train > len(s["x_train"]):
        raise ValueError(f"num_train {num_train} > {len(s['x_train'])} training images")
    test = {} if not num_test else {"test_images": s["x_test"][:num_test], "test_labels": s["y_test"][:num_test]}
    return make_mlp(s["x_train"][:num_train], s["y_train"][:num_train], act, output, hidden, batch_size, pool, **test)
