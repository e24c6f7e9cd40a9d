"""Variances of outer-gradient estimators against the unroll length (Metz et al. 2019 sec. 3, Fig. 4).

The smoothed outer-loss of sec. 3 is ``E[L(theta + sigma n)]``, n ~ N(0, I), sigma^2 = 0.01. Its two
unbiased estimators use the same antithetic samples theta +/- sigma n (one pair per inner run):

- reparameterization ``g_rp = (grad L(theta + sigma n) + grad L(theta - sigma n)) / 2``,
- ES ``g_es = (L(theta + sigma n) - L(theta - sigma n)) / (2 sigma) n``,

and eq. (1) merges them by inverse-variance weights. As in :mod:`lopt.estimators`, "the variance" of an
estimator is the variance of its mean over ``num_pairs`` pairs, per coordinate of theta, averaged over
the coordinates (:func:`lopt.estimators.mean_and_variance`).

:class:`LengthSweep` computes these estimates for many unroll lengths at once: L(theta) for length T is
the mean of the inner losses over the first T steps of one run, so a single unroll of ``max(lengths)``
steps per particle gives every length's loss (ES) and, with one batched backward pass per length,
every length's gradient (reparameterization). One compilation serves every length and every theta.

:func:`truncated_sweep` does the same for estimators that only unroll truncations of K steps
(:class:`lopt.estimators.PES`, or the truncated ES / reparameterization / merged estimates of
:class:`lopt.estimators.Merged`): the estimate of a T-step run is the mean of its T / K truncation
estimates, per pair; PES is unbiased for it, the truncated ones are not (they ignore how theta shaped
the state each truncation starts from, sec. 2.4).
"""

from __future__ import annotations

import dataclasses
from statistics import NormalDist
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from .estimators import (DEFAULT_SIGMA, GradientEstimator, all_finite, inverse_variance_merge, mean_and_variance,
                         tree_normal)
from . import tasks
from .optimizers import LearnedOptimizer
from .tasks import ImageClassifier, TaskFamily
from .truncation import TruncatedTraining

Array = jax.Array
Theta = Any
KINDS = ("rp", "es", "merged")


def variances(es: Theta, rp: Theta) -> dict[str, Array]:
    """Per-pair samples of g_es and g_rp (leading axis: pairs) -> the variance of each mean, the
    eq. (1) weight of g_rp, the empirical variance of the merged estimate (the same weight applied to
    every pair, the same samples for weights and variances, as in the paper) and the variance that
    eq. (1) promises for independent estimates, ``1 / (1 / var_rp + 1 / var_es)``."""
    g_es, var_es = mean_and_variance(es)
    g_rp, var_rp = mean_and_variance(rp)
    _, w = inverse_variance_merge(g_rp, var_rp, g_es, var_es)
    ok = jnp.isfinite(var_rp) & all_finite(rp)
    merged = jax.tree.map(lambda a, b: w * jnp.where(ok, a, 0.0) + (1.0 - w) * b, rp, es)
    _, var_merged = mean_and_variance(merged)
    ideal = jnp.where(ok, 1.0 / (1.0 / var_rp + 1.0 / var_es), var_es)
    return {"var_rp": var_rp, "var_es": var_es, "var_merged": var_merged, "var_ideal": ideal, "weight_rp": w}


@dataclasses.dataclass(eq=False)
class LengthSweep:
    """g_rp, g_es and merged estimates of the smoothed outer-loss of inner runs of each length in
    ``lengths`` (module docstring), from one unroll of ``max(lengths)`` steps per particle.

    ``sweep(theta, key)`` returns ``{name: array over lengths}`` (:func:`variances` plus ``loss``).
    With the same key it uses the same inner runs and perturbations as
    ``Merged(..., horizon=T, length=T).init(k_init, theta)`` then ``.estimate(theta, state, k_est)``
    with ``k_init, k_est = jax.random.split(key)``, so the longest length equals that estimate."""

    learned_opt: LearnedOptimizer
    family: TaskFamily
    lengths: Sequence[int]
    num_pairs: int = 8
    sigma: float = DEFAULT_SIGMA
    objective: str = "train"
    remat: bool = True

    def __post_init__(self) -> None:
        self.lengths = tuple(sorted({int(t) for t in self.lengths}))
        if not self.lengths or self.lengths[0] < 1:
            raise ValueError(f"lengths must be >= 1, got {self.lengths}")
        if int(self.num_pairs) < 2:
            raise ValueError(f"num_pairs must be >= 2 to estimate a variance, got {self.num_pairs}")
        self.training = TruncatedTraining(self.learned_opt, self.family, self.lengths[-1], self.objective, self.remat)
        self._samples = jax.jit(self._trace_samples)
        self._summary = jax.jit(jax.vmap(variances, in_axes=1))

    def samples(self, theta: Theta, key: Array) -> tuple[Theta, Theta, Array]:
        """Per pair and length (axes 0, 1): g_es and g_rp samples, and each pair's mean loss (jitted)."""
        return self._samples(theta, key)

    def _trace_samples(self, theta: Theta, key: Array) -> tuple[Theta, Theta, Array]:
        n, idx = int(self.num_pairs), jnp.asarray(self.lengths)
        k_init, k_est = jax.random.split(key)
        runs = self.training.init(theta, k_init, n)
        noise = tree_normal(jax.random.split(k_est)[1], theta, n)
        eye = jnp.eye(len(self.lengths))

        def prefix_losses(th, inner, run_key):
            losses = self.training.unroll_one(th, inner, run_key, self.lengths[-1]).losses
            return jnp.cumsum(losses)[idx - 1] / idx

        def one(th, inner, run_key):  # losses of every length and their gradients (lengths first)
            loss, vjp = jax.vjp(lambda t: prefix_losses(t, inner, run_key), th)
            return loss, jax.vmap(vjp)(eye)[0]

        def pair(e, inner, run_key):
            plus = jax.tree.map(lambda t, x: t + self.sigma * x, theta, e)
            minus = jax.tree.map(lambda t, x: t - self.sigma * x, theta, e)
            (lp, gp), (lm, gm) = one(plus, inner, run_key), one(minus, inner, run_key)
            diff = (lp - lm) / (2.0 * self.sigma)
            es = jax.tree.map(lambda x: diff.reshape((-1,) + (1,) * x.ndim) * x, e)
            rp = jax.tree.map(lambda a, b: 0.5 * (a + b), gp, gm)
            return es, rp, 0.5 * (lp + lm)

        return jax.vmap(pair)(noise, runs.inner, runs.run_key)

    def sweep(self, theta: Theta, key: Array) -> dict[str, np.ndarray]:
        """Variances (and eq. (1) weight, mean loss) per length: ``{name: (len(lengths),)}``."""
        es, rp, loss = self.samples(theta, key)
        out = {k: np.asarray(v, np.float64) for k, v in self._summary(es, rp).items()}
        out["loss"] = np.asarray(jnp.mean(loss, axis=0), np.float64)
        out["length"] = np.asarray(self.lengths, np.float64)
        return out


def truncated_sweep(
    estimator: GradientEstimator,
    theta: Theta,
    lengths: Sequence[int],
    key: Array,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Variances of the estimate of a run of T steps for T in ``lengths`` (multiples of the
    estimator's truncation length K; the horizon must be >= max(lengths)), made of its T / K truncation
    estimates at a fixed ``theta``: per pair, the mean of the truncations' samples (module docstring).

    ``estimator`` must have ``keep_samples=True`` (PES, ES, Reparameterization or Merged). Returns
    ``{"length": ..., "var_<kind>": ...}`` (kinds: ``pes``, ``es``, ``rp``, and for Merged ``merged``
    and ``weight_rp``) over the lengths."""
    k = int(estimator.length)
    lengths = sorted(int(t) for t in lengths)
    if not getattr(estimator, "keep_samples", False):
        raise ValueError("truncated_sweep needs per-sample estimates: build the estimator with keep_samples=True")
    if any(t % k for t in lengths) or lengths[-1] > int(estimator.horizon):
        raise ValueError(f"lengths {lengths} must be multiples of the truncation length {k} and <= the horizon "
                         f"{estimator.horizon}")
    k_init, k_est = jax.random.split(key)
    state = estimator.init(k_init, theta)
    sums: dict[str, Theta] = {}
    rows: dict[str, list[float]] = {}
    for t in tqdm(range(lengths[-1] // k), desc=f"truncations of {k}", disable=not progress):
        _, state, info = estimator.estimate(theta, state, jax.random.fold_in(k_est, t))
        for name, s in info.items():
            if name.startswith("samples_"):
                kind = name[len("samples_"):]
                sums[kind] = s if kind not in sums else jax.tree.map(jnp.add, sums[kind], s)
        if (t + 1) * k in lengths:
            means = {kind: jax.tree.map(lambda x: x / (t + 1), s) for kind, s in sums.items()}
            row = _summarise(means)
            for name, v in row.items():
                rows.setdefault(name, []).append(float(v))
    out = {name: np.asarray(v, np.float64) for name, v in rows.items()}
    out["length"] = np.asarray(lengths, np.float64)
    return out


def _summarise(means: Mapping[str, Theta]) -> dict[str, Array]:
    if "es" in means and "rp" in means:
        return variances(means["es"], means["rp"])
    return {f"var_{kind}": mean_and_variance(s)[1] for kind, s in means.items()}


def orders_of_magnitude(a: Any, b: Any) -> np.ndarray:
    """log10(a / b): how many orders of magnitude ``a`` exceeds ``b`` (elementwise)."""
    return np.log10(np.asarray(a, np.float64)) - np.log10(np.asarray(b, np.float64))


def downsample(task: ImageClassifier, factor: int) -> ImageClassifier:
    """``task`` with its images average-pooled by ``factor`` in each direction (28x28 -> 7x7 for 4):
    a cpu-scale inner problem whose per-parameter learned optimizer is ``factor**2`` times cheaper."""
    if int(factor) < 1 or task.images["train"].shape[1] % int(factor):
        raise ValueError(f"factor must be >= 1 and divide the image size {task.images['train'].shape[1:]}, got {factor}")
    f = int(factor)

    def pool(x: Array) -> Array:
        n, h, w = x.shape[:3]
        y = x.reshape(n, h // f, f, w // f, f, *x.shape[3:]).astype(jnp.float32).mean(axis=(2, 4))
        return jnp.round(y).astype(x.dtype)

    return dataclasses.replace(task, images={k: pool(v) for k, v in task.images.items()})


def track_merged(theta: Theta, grad: Theta, info: Mapping[str, Any]) -> dict[str, float]:
    """An ``outer.train`` ``track`` for a ``Merged(..., keep_samples=True)`` estimator: the empirical
    variance of the merged estimate at each outer step (beside the history's var_rp and var_es)."""
    return {"var_merged": float(variances(info["samples_es"], info["samples_rp"])["var_merged"])}


def scale_mlp_steps(theta: Mapping[str, Array], factor: float) -> dict[str, Array]:
    """Meta-parameters of :class:`lopt.learned.MLPOptimizer` whose updates are ``factor`` times
    larger: its direction output (first readout column) scaled, its log learning rate unchanged. A
    stand-in for the more aggressive optimizers that long outer-training produces (Fig. 4)."""
    return {**theta, "w2": theta["w2"].at[:, 0].multiply(factor), "b2": theta["b2"].at[0].multiply(factor)}


class Snapshots:
    """An ``outer.train`` ``track`` that keeps theta every ``every`` outer steps (before that step's update):
    ``snapshots.thetas[step]``; Fig. 4a's variances can then be measured on long unrolls along outer-training."""

    def __init__(self, every: int) -> None:
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every, self.step, self.thetas = int(every), 0, {}

    def __call__(self, theta: Theta, grad: Theta, info: Mapping[str, Any]) -> dict[str, float]:
        if self.step % self.every == 0:
            self.thetas[self.step] = jax.tree.map(jnp.array, theta)
        self.step += 1
        return {}


# ----------------------------------------------------------------------------------------------------------
# A problem whose smoothed outer-gradient is known in closed form (the unbiasedness check of Fig. 4's estimators)

@tasks.pytree_dataclass
class NoisyQuadratic(tasks.Task):
    """l(w; xi) = 1/2 ||w - center - xi||^2 with a fresh xi ~ N(0, noise^2 I) per minibatch, from ``w0``."""

    center: jax.Array
    w0: jax.Array
    noise: float = tasks.static(0.5)

    def init(self, key: Array | None = None) -> Array:
        return self.w0

    def loss(self, params: Array, batch: Array | None = None) -> Array:
        return 0.5 * jnp.sum((params - self.center - batch) ** 2)

    def batch(self, key: Array, split: str = "train") -> Array:
        return self.noise * jax.random.normal(key, self.center.shape)


@dataclasses.dataclass(frozen=True)
class Drift(LearnedOptimizer):
    """A learned optimizer whose update is theta itself (w_{t+1} = w_t + theta), whatever the gradient: every
    outer-loss on :class:`NoisyQuadratic` is then quadratic in theta, so the gradient of the smoothed loss
    E[L(theta + sigma n)] is that of E_xi L at theta, :func:`drift_gradient`."""

    dim: int = 3

    def init(self, key: Array | None = None) -> Array:
        return jnp.zeros((self.dim,))

    def opt_fn(self, theta: Array) -> optax.GradientTransformation:
        return optax.GradientTransformation(lambda p: optax.EmptyState(), lambda g, s, p=None: (theta, s))


def drift_gradient(task: NoisyQuadratic, theta: Any, steps: Sequence[int]) -> np.ndarray:
    """d/dtheta of the noise-free mean loss over the post-update steps ``steps`` of :class:`Drift` on ``task``:
    mean_t t (w0 + t theta - center)."""
    ts = np.asarray(list(steps), np.float64)[:, None]
    w0, c, th = (np.asarray(x, np.float64) for x in (task.w0, task.center, theta))
    return np.mean(ts * (w0 + ts * th - c), axis=0)


def z_scores(samples: Any, expected: Any) -> np.ndarray:
    """(mean of the samples - expected) / its standard error, per coordinate (samples: leading axis)."""
    samples = np.asarray(samples, np.float64)
    se = samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
    return (samples.mean(axis=0) - np.asarray(expected, np.float64)) / se


def z_threshold(num_tests: int, alpha: float = 1e-3) -> float:
    """Two-sided threshold on |z| for ``num_tests`` tests at family-wise level ``alpha`` (Bonferroni)."""
    return NormalDist().inv_cdf(1 - alpha / (2 * int(num_tests)))
