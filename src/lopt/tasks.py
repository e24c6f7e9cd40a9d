"""Tasks (a loss and an initial point) and task families (distributions over tasks).

One small interface, after learned_optimization's ``Task``/``TaskFamily``:

- ``task.init(key) -> params``: the initial point (problems whose initial point is part of the
  problem, as in Maheswaranathan et al. 2021 C.1, store it and ignore ``key``);
- ``task.loss(params, batch) -> scalar``;
- ``task.batch(key, split="train")``: a minibatch (``None`` for deterministic losses);
- ``family.sample(key) -> task``.

Tasks are frozen dataclasses registered as pytrees: arrays are leaves, sizes and names are static.
So a batch of tasks is ``jax.vmap(family.sample)(keys)`` and an unroll can be vmapped over it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Params = Any
Batch = Any

SPLITS = ("train", "valid", "test")


def static(default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that is static (part of the pytree structure, not a leaf)."""
    return dataclasses.field(default=default, metadata={"static": True})


def pytree_dataclass(cls: type) -> type:
    """Frozen dataclass registered as a pytree; fields made with :func:`static` are not leaves."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    return jax.tree_util.register_dataclass(cls)


class Task:
    """A loss to minimise and an initial point (see the module docstring)."""

    def init(self, key: Array) -> Params:
        raise NotImplementedError

    def loss(self, params: Params, batch: Batch = None) -> Array:
        raise NotImplementedError

    def batch(self, key: Array, split: str = "train") -> Batch:
        return None

    def outer_loss(self, loss: Array) -> Array:
        """The value an outer-objective records for the inner loss ``loss`` (unchanged here; a task
        may cap it so that one diverging inner run cannot dominate an estimate)."""
        return loss


class TaskFamily:
    """A distribution over tasks: ``sample(key) -> Task``."""

    def sample(self, key: Array) -> Task:
        raise NotImplementedError

    def sample_many(self, key: Array, n: int) -> Task:
        """``n`` tasks stacked along a leading axis (vmap an unroll over them)."""
        return jax.vmap(self.sample)(jax.random.split(key, n))


@dataclasses.dataclass(frozen=True, eq=False)
class SingleTask(TaskFamily):
    """The family holding one fixed task (say, an MLP on Fashion-MNIST): tasks differ only by their
    initialisation and minibatch keys. The task is not copied per sample, so vmapping over many
    inner runs of it does not replicate its data."""

    task: Task

    def sample(self, key: Array) -> Task:
        return self.task


# ---------------------------------------------------------------------------------------------
# Metz et al. 2019, Fig. 2a and App. A


@pytree_dataclass
class TwoMinima(Task):
    """The 1D loss with two minima of Metz et al. 2019 Fig. 2a: l(w) = (w-4)(w-3)w^2.

    Local minimum at w = 0 (l = 0), global minimum at w = (21 + sqrt(57))/8 ~ 3.57 (l ~ -3.12).
    """

    w0: float = static(-1.2)

    def init(self, key: Array | None = None) -> Array:
        return jnp.asarray(self.w0, dtype=jnp.result_type(float))

    def loss(self, params: Array, batch: Batch = None) -> Array:
        w = params
        return (w - 4.0) * (w - 3.0) * w**2

    @staticmethod
    def minima() -> tuple[float, float]:
        """The two minima (local at 0, global at (21 + sqrt 57) / 8)."""
        return 0.0, float((21.0 + np.sqrt(57.0)) / 8.0)


@pytree_dataclass
class Quadratic(Task):
    """l(w) = 1/2 (w - c)^T H (w - c), started at w0 (Metz et al. 2019 App. A)."""

    hessian: Array
    center: Array
    w0: Array

    def init(self, key: Array | None = None) -> Array:
        return self.w0

    def loss(self, params: Array, batch: Batch = None) -> Array:
        d = params - self.center
        return 0.5 * d @ (self.hessian @ d)

    @classmethod
    def from_eigenvalues(cls, key: Array, eigenvalues: Sequence[float] | Array) -> "Quadratic":
        """A randomly rotated quadratic with the given Hessian spectrum; c = 0, w0 ~ N(0, I).

        The minimum sits at the origin so that converged iterates keep full relative precision
        (with c != 0, w_T - c is swamped by rounding once it falls below ~1e-16 |c|)."""
        eig = jnp.asarray(eigenvalues, dtype=jnp.result_type(float))
        k_rot, k_c = jax.random.split(key)
        q, _ = jnp.linalg.qr(jax.random.normal(k_rot, (eig.size, eig.size), eig.dtype))
        hess = (q * eig) @ q.T
        hess = 0.5 * (hess + hess.T)
        return cls(hess, jnp.zeros_like(eig), jax.random.normal(k_c, (eig.size,), eig.dtype))


# ---------------------------------------------------------------------------------------------
# Maheswaranathan et al. 2021, App. C.1


@pytree_dataclass
class LinearRegression(Task):
    """f(x) = 1/2 ||A x - b||^2 with Hessian A^T A, started at x0 (Maheswaranathan C.1)."""

    A: Array
    b: Array
    x0: Array

    def init(self, key: Array | None = None) -> Array:
        return self.x0

    def loss(self, params: Array, batch: Batch = None) -> Array:
        r = self.A @ params - self.b
        return 0.5 * r @ r

    def hessian_eigenvalues(self) -> Array:
        return jnp.linalg.eigvalsh(self.A.T @ self.A)


@dataclasses.dataclass(frozen=True)
class LinearRegressionFamily(TaskFamily):
    """Random linear regression: A ~ N(0, 1/num_data), b ~ N(0, 1), x0 = 0.

    The Hessians A^T A follow a Marchenko-Pastur spectrum, so condition numbers vary from task to
    task (Maheswaranathan et al. 2021 Fig. 2a shows their distribution).
    """

    dim: int = 10
    num_data: int = 20

    def sample(self, key: Array) -> LinearRegression:
        k_a, k_b = jax.random.split(key)
        A = jax.random.normal(k_a, (self.num_data, self.dim)) / jnp.sqrt(self.num_data)
        b = jax.random.normal(k_b, (self.num_data,))
        return LinearRegression(A, b, jnp.zeros((self.dim,)))


@pytree_dataclass
class Rosenbrock(Task):
    """f(x, y) = (1 - x)^2 + 100 (y - x^2)^2 from a given start (Maheswaranathan C.1)."""

    x0: Array

    def init(self, key: Array | None = None) -> Array:
        return self.x0

    def loss(self, params: Array, batch: Batch = None) -> Array:
        x, y = params[0], params[1]
        return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2


@dataclasses.dataclass(frozen=True)
class RosenbrockFamily(TaskFamily):
    """Rosenbrock with starts uniform on x in (-2, 2), y in (-1, 3)."""

    def sample(self, key: Array) -> Rosenbrock:
        lo, hi = jnp.array([-2.0, -1.0]), jnp.array([2.0, 3.0])
        return Rosenbrock(jax.random.uniform(key, (2,), minval=lo, maxval=hi))


# ---------------------------------------------------------------------------------------------
# Neural networks


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.1),
}


def activation(name: str) -> Callable[[Array], Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; allowed values: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def mlp_init(key: Array, sizes: Sequence[int]) -> list[dict[str, Array]]:
    """Weights of a fully connected net with layer sizes ``sizes`` (LeCun-normal, zero biases)."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (m, n)) / jnp.sqrt(m), "b": jnp.zeros((n,))}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:])
    ]


def mlp_apply(params: list[dict[str, Array]], x: Array, act: str = "relu") -> Array:
    """Forward pass: ``act`` after every layer but the last."""
    f = activation(act)
    for layer in params[:-1]:
        x = f(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def softmax_xent(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy against integer labels."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


@pytree_dataclass
class TwoMoons(Task):
    """A 3x64 tanh MLP classifying the two-moons data set, logistic loss, full batch
    (Maheswaranathan C.1); the initial weights are part of the problem."""

    x: Array
    y: Array
    params0: Any

    def init(self, key: Array | None = None) -> Params:
        return self.params0

    def loss(self, params: Params, batch: Batch = None) -> Array:
        logits = mlp_apply(params, self.x, "tanh")[:, 0]
        return jnp.mean(jax.nn.softplus(-(2.0 * self.y - 1.0) * logits))


@dataclasses.dataclass(frozen=True)
class TwoMoonsFamily(TaskFamily):
    """Two moons from scikit-learn's ``make_moons`` (fixed data), sampled initial weights."""

    num_data: int = 128
    noise: float = 0.1
    hidden: tuple[int, ...] = (64, 64, 64)
    data_seed: int = 0

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import make_moons

        x, y = make_moons(self.num_data, noise=self.noise, random_state=self.data_seed)
        return x.astype(np.float32), y.astype(np.float32)

    def sample(self, key: Array) -> TwoMoons:
        x, y = self.data()
        return TwoMoons(jnp.asarray(x), jnp.asarray(y), mlp_init(key, (2, *self.hidden, 1)))


@pytree_dataclass
class ImageClassifier(Task):
    """Minibatch classification of images (Fashion-MNIST here; MNIST in the papers).

    ``model`` is ``"mlp"`` (hidden sizes ``hidden``, activation ``act``) or ``"cnn"`` (a conv net,
    ``hidden`` = channels per 3x3 conv layer with ``strides`` (default 2 everywhere), then mean
    pooling and a linear readout to ``num_classes`` logits). Images are stored as uint8 and scaled
    per batch. ``batch(key, split)`` samples with replacement. ``loss_cap`` (if set) bounds the loss
    that *outer*-objectives record (:meth:`outer_loss`); inner gradients are never capped.
    """

    images: dict[str, Array]
    labels: dict[str, Array]
    model: str = static("mlp")
    hidden: tuple[int, ...] = static((128,))
    act: str = static("relu")
    batch_size: int = static(128)
    num_classes: int = static(10)
    strides: tuple[int, ...] | None = static(None)
    loss_cap: float | None = static(None)

    def init(self, key: Array) -> Params:
        shape = self.images["train"].shape[1:]
        if self.model == "mlp":
            return mlp_init(key, (int(np.prod(shape)), *self.hidden, self.num_classes))
        if self.model == "cnn":
            return cnn_init(key, shape[-1] if len(shape) == 3 else 1, self.hidden, self.num_classes)
        raise ValueError(f"unknown model {self.model!r}; allowed values: mlp, cnn")

    def apply(self, params: Params, images: Array) -> Array:
        x = images.astype(jnp.float32) / 255.0
        if self.model == "mlp":
            return mlp_apply(params, x.reshape(x.shape[0], -1), self.act)
        if x.ndim == 3:
            x = x[..., None]
        return cnn_apply(params, x, self.act, self.strides)

    def loss(self, params: Params, batch: Batch) -> Array:
        images, labels = batch
        return softmax_xent(self.apply(params, images), labels)

    def outer_loss(self, loss: Array) -> Array:
        """The value an outer-objective records for an inner loss: ``min(loss, loss_cap)``."""
        return loss if self.loss_cap is None else jnp.minimum(loss, self.loss_cap)

    def split_loss(self, params: Params, split: str = "test") -> Array:
        """The loss on a whole split (the curves of Metz et al. 2019 Fig. 6)."""
        return softmax_xent(self.apply(params, self.images[split]), self.labels[split])

    def batch(self, key: Array, split: str = "train") -> Batch:
        if split not in self.images:
            raise ValueError(f"unknown split {split!r}; allowed values: {', '.join(self.images)}")
        n = self.images[split].shape[0]
        idx = jax.random.randint(key, (self.batch_size,), 0, n)
        return self.images[split][idx], self.labels[split][idx]

    def accuracy(self, params: Params, split: str = "test") -> Array:
        logits = self.apply(params, self.images[split])
        return jnp.mean(jnp.argmax(logits, -1) == self.labels[split])


def fashion_mnist_task(
    model: str = "mlp",
    hidden: Sequence[int] = (128,),
    act: str = "relu",
    batch_size: int = 128,
    max_examples: int | None = None,
) -> ImageClassifier:
    """An :class:`ImageClassifier` on the prepared Fashion-MNIST splits (``lopt.data``)."""
    from . import data

    splits = data.load_splits()
    images, labels = {}, {}
    for split in SPLITS:
        x, y = splits[f"x_{split}"], splits[f"y_{split}"]
        if max_examples:
            x, y = x[:max_examples], y[:max_examples]
        images[split], labels[split] = jnp.asarray(x), jnp.asarray(y.astype(np.int32))
    return ImageClassifier(images, labels, model, tuple(hidden), act, batch_size)


# ---------------------------------------------------------------------------------------------
# Convolutions as patches + matmul (lax.conv inside lax.scan is ~10x slower on CPU, jax#12868)


def extract_patches(x: Array, size: int = 3, stride: int = 1) -> Array:
    """SAME-padded ``size`` x ``size`` patches of NHWC ``x``: shape (N, H', W', size*size*C).

    Built from strided slices only, so that a conv becomes one matmul (fast inside ``lax.scan``).
    Patch features are ordered (dy, dx, channel), matching an HWIO kernel reshaped to (-1, O).
    """
    n, h, w, c = x.shape
    out_h, out_w = -(-h // stride), -(-w // stride)
    pad_h = max((out_h - 1) * stride + size - h, 0)
    pad_w = max((out_w - 1) * stride + size - w, 0)
    xp = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    cols = [
        xp[:, dy : dy + stride * (out_h - 1) + 1 : stride, dx : dx + stride * (out_w - 1) + 1 : stride, :]
        for dy in range(size)
        for dx in range(size)
    ]
    return jnp.concatenate(cols, axis=-1)


def conv2d(x: Array, kernel: Array, stride: int = 1) -> Array:
    """SAME convolution of NHWC ``x`` with an HWIO ``kernel`` via patches + matmul."""
    size = kernel.shape[0]
    return extract_patches(x, size, stride) @ kernel.reshape(-1, kernel.shape[-1])


def cnn_init(key: Array, in_channels: int, channels: Sequence[int], num_classes: int) -> Params:
    keys = jax.random.split(key, len(channels) + 1)
    layers, c_in = [], in_channels
    for k, c_out in zip(keys[:-1], channels):
        layers.append(
            {"w": jax.random.normal(k, (3, 3, c_in, c_out)) / jnp.sqrt(9.0 * c_in), "b": jnp.zeros((c_out,))}
        )
        c_in = c_out
    head = {"w": jax.random.normal(keys[-1], (c_in, num_classes)) / jnp.sqrt(c_in), "b": jnp.zeros((num_classes,))}
    return {"conv": layers, "head": head}


def cnn_apply(params: Params, x: Array, act: str = "relu", strides: Sequence[int] | None = None) -> Array:
    """3x3 conv layers with ``act`` (stride ``strides[i]`` for layer i; 2 everywhere by default),
    global mean pooling, linear readout."""
    f = activation(act)
    strides = strides or (2,) * len(params["conv"])
    if len(strides) != len(params["conv"]):
        raise ValueError(f"strides {tuple(strides)} must have one entry per conv layer ({len(params['conv'])})")
    for layer, stride in zip(params["conv"], strides):
        x = f(conv2d(x, layer["w"], stride=int(stride)) + layer["b"])
    x = jnp.mean(x, axis=(1, 2))
    return x @ params["head"]["w"] + params["head"]["b"]
