"""Outer-gradient estimators (Metz et al. 2019 sec. 2-3; PES: Vicol et al. 2021).

Every estimator has the same small interface, after learned_optimization's GradientEstimator::

    state = est.init(key, theta)                     # inner runs in progress, outer step 0
    grad, state, info = est.estimate(theta, state, key)

``grad`` has the structure of ``theta``; ``info`` holds at least ``loss`` (the mean outer-loss
of the truncation) and ``length``, plus estimator-specific diagnostics (variances, weights,
per-sample estimates with ``keep_samples=True``). Inner training is :class:`TruncatedTraining`:
``horizon`` steps per task, outer-gradients over truncations of ``length`` steps (an int or a
schedule from :mod:`lopt.truncation`), ``num_tasks`` tasks (one antithetic pair per task for the
perturbation estimators) from ``family``.

What each estimate is unbiased for, and its bias:

- :class:`TruncatedBPTT`: backprop through one truncation from the carried state. Biased for the
  full-horizon objective: it ignores how theta shaped the state it starts from (short-horizon /
  truncation bias, sec. 2.4); exact, and exploding for long truncations (sec. 2.3).
- :class:`FullUnroll`: backprop through the whole inner run (truncation = horizon, fresh tasks
  every call). Unbiased for the mean loss over the run; its variance explodes with the horizon.
- :class:`ES`: antithetic evolution strategies on the variational loss E[L(theta + sigma n)]
  (sec. 3): ``(L(theta + sigma n) - L(theta - sigma n)) / (2 sigma) n``. Unbiased for the
  gradient of the smoothed loss of the truncation; never explodes; variance ~ dim(theta).
- :class:`Reparameterization`: ``grad L`` at the same antithetic samples. Unbiased for the same
  smoothed loss; its variance grows with the unroll length (Fig. 4).
- :class:`Merged`: the inverse-variance weighting of the two (eq. 1), with variances estimated
  from the per-sample estimates (the same samples, as in the paper; a slight bias that the paper
  accepts). A non-finite reparameterization estimate gets weight 0.
- :class:`PES`: persistent evolution strategies: each pair keeps its own +/- inner runs and the sum
  of the perturbations applied since the run started, which multiplies the loss difference.
  Unbiased for the smoothed loss of the whole inner run although it only unrolls truncations.

Truncated ES, reparameterization and merged estimates carry the state of the positive particle of
each pair to the next truncation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .optimizers import LearnedOptimizer
from .tasks import TaskFamily
from .truncation import Schedule, TruncatedState, TruncatedTraining, bucket

Array = jax.Array
Theta = Any
Info = dict[str, Any]

DEFAULT_SIGMA = 0.1  # sigma^2 = 0.01 (Metz et al. 2019 sec. 3)


class EstimatorState(NamedTuple):
    """What an estimator carries between outer steps."""

    step: Array  # outer steps taken (drives the truncation schedule)
    truncated: TruncatedState  # the inner runs in progress
    accum: Any = None  # PES: per pair, the perturbations applied since its run started


class GradientEstimator:
    """``init(key, theta) -> state``; ``estimate(theta, state, key) -> (grad, state, info)``."""

    def init(self, key: Array, theta: Theta) -> EstimatorState:
        raise NotImplementedError

    def estimate(self, theta: Theta, state: EstimatorState, key: Array) -> tuple[Theta, EstimatorState, Info]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# pytree helpers


def tree_normal(key: Array, tree: Theta, n: int) -> Theta:
    """``n`` standard normal samples shaped like ``tree`` (leading axis ``n``)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten(
        [jax.random.normal(k, (n, *jnp.shape(x)), jnp.result_type(x)) for k, x in zip(keys, leaves)]
    )


def mean_and_variance(samples: Theta) -> tuple[Theta, Array]:
    """The mean of per-sample estimates (leading axis) and the variance of that mean: the
    per-coordinate sample variance / n, averaged over all coordinates of theta."""
    leaves = jax.tree.leaves(samples)
    n = leaves[0].shape[0]
    mean = jax.tree.map(lambda x: jnp.mean(x, axis=0), samples)
    total = sum(jnp.sum(jnp.var(x, axis=0, ddof=1)) for x in leaves)
    size = sum(x[0].size for x in leaves)
    return mean, total / size / n


def all_finite(tree: Any) -> Array:
    """Whether every floating-point leaf of ``tree`` is finite."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def inverse_variance_merge(g_a: Theta, var_a: Array, g_b: Theta, var_b: Array) -> tuple[Theta, Array]:
    """Eq. (1): (g_a / var_a + g_b / var_b) / (1 / var_a + 1 / var_b), and the weight of ``g_a``.
    An estimate that is not finite (or has a non-finite variance) gets weight 0."""
    ok_a = jnp.isfinite(var_a) & all_finite(g_a)
    ok_b = jnp.isfinite(var_b) & all_finite(g_b)
    tiny = jnp.finfo(jnp.result_type(var_a, var_b)).tiny
    w_a = jnp.where(ok_a, 1.0 / jnp.maximum(jnp.where(ok_a, var_a, 1.0), tiny), 0.0)
    w_b = jnp.where(ok_b, 1.0 / jnp.maximum(jnp.where(ok_b, var_b, 1.0), tiny), 0.0)
    total = w_a + w_b
    weight_a = jnp.where(total > 0, w_a / jnp.where(total > 0, total, 1.0), jnp.nan)
    merged = jax.tree.map(
        lambda a, b: weight_a * jnp.where(ok_a, a, 0.0) + (1.0 - weight_a) * jnp.where(ok_b, b, 0.0), g_a, g_b
    )
    return merged, weight_a


def _stack2(tree: Any) -> Any:
    """Each leaf twice along its leading axis ([x; x])."""
    return jax.tree.map(lambda x: jnp.concatenate([x, x]), tree)


def _half(tree: Any, first: bool) -> Any:
    return jax.tree.map(lambda x: x[: x.shape[0] // 2] if first else x[x.shape[0] // 2 :], tree)


def _schedule_rng(key: Array) -> np.random.Generator:
    """A host-side generator seeded from ``key`` (for the jitter of a truncation schedule)."""
    return np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))


# ---------------------------------------------------------------------------------------------
# estimators over truncations


@dataclasses.dataclass(eq=False)
class TruncatedEstimator(GradientEstimator):
    """Common machinery: truncated inner training, the length schedule and compiled kernels."""

    learned_opt: LearnedOptimizer
    family: TaskFamily
    horizon: int
    length: int | Schedule | None = None  # default: the horizon (whole runs)
    num_tasks: int = 8
    objective: str = "train"
    remat: bool = False
    max_length: int | None = None  # with a schedule: compile this one size, shorter truncations skip the rest

    def __post_init__(self) -> None:
        self.training = TruncatedTraining(self.learned_opt, self.family, int(self.horizon), self.objective, self.remat)
        if self.length is None:
            self.length = int(self.horizon)
        if isinstance(self.length, (int, np.integer)) and int(self.length) < 1:
            raise ValueError(f"truncation length must be >= 1, got {self.length}")
        if self.max_length is not None and int(self.max_length) < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if int(self.num_tasks) < 1:
            raise ValueError(f"num_tasks must be >= 1, got {self.num_tasks}")
        self._compiled: dict[int, Callable] = {}

    def init(self, key: Array, theta: Theta) -> EstimatorState:
        return EstimatorState(jnp.zeros((), jnp.int32), self.training.init(theta, key, self.num_tasks))

    def truncation_length(self, outer_step: int, key: Array, state: EstimatorState | None = None) -> tuple[int, int]:
        """(compiled length, active steps) for this outer step. A schedule's length compiles to
        ``max_length`` when set (one kernel for every length; longer draws are cut to it), else to
        :func:`bucket` sizes. With ``state``, the active steps stop at the episode end, min(L, T - t)."""
        if isinstance(self.length, (int, np.integer)):
            size = n = int(self.length)
        else:
            n = int(self.length(outer_step, _schedule_rng(key)))
            size = int(self.max_length) if self.max_length else bucket(n)
            n = min(n, size)
        if state is not None:
            n = max(1, min(n, int(self.training.remaining(state.truncated))))
        return size, n

    def estimate(self, theta: Theta, state: EstimatorState, key: Array) -> tuple[Theta, EstimatorState, Info]:
        k_len, k_est = jax.random.split(key)
        size, active = self.truncation_length(int(state.step), k_len, state)
        if size not in self._compiled:
            self._compiled[size] = jax.jit(lambda th, st, k, n: self._estimate(th, st, k, size, n))
        grad, state, info = self._compiled[size](theta, state, k_est, jnp.asarray(active, jnp.int32))
        info["length"] = active
        return grad, state, info

    def _estimate(self, theta, state, key, length, num_active):  # traced, static length
        raise NotImplementedError


@dataclasses.dataclass(eq=False)
class TruncatedBPTT(TruncatedEstimator):
    """Backpropagation through one truncation from the carried inner state (module docstring)."""

    def _estimate(self, theta, state, key, length, num_active):
        def f(th):
            res = self.training.unroll(th, state.truncated, length, num_active)
            return jnp.mean(res.loss), res

        (loss, res), grad = jax.value_and_grad(f, has_aux=True)(theta)
        return grad, EstimatorState(state.step + 1, res.state), {"loss": loss}


class FullUnroll(TruncatedBPTT):
    """Backpropagation through whole inner runs of ``num_steps`` steps, fresh tasks every call
    (Maheswaranathan et al. 2021 C.2: 200 steps, a batch of 32 problems)."""

    def __init__(self, learned_opt: LearnedOptimizer, family: TaskFamily, num_steps: int, num_tasks: int = 8,
                 objective: str = "train", remat: bool = False):
        super().__init__(learned_opt, family, num_steps, num_steps, num_tasks, objective, remat)


@dataclasses.dataclass(eq=False)
class Antithetic(TruncatedEstimator):
    """Shared machinery of ES, reparameterization and merged estimates: one antithetic pair
    theta +/- sigma n per task, both started from the task's carried state."""

    sigma: float = DEFAULT_SIGMA
    keep_samples: bool = False
    uses_grad: bool = True

    def _pairs(self, theta, state, key, length, num_active):
        n = self.num_tasks
        noise = tree_normal(key, theta, n)
        thetas = jax.tree.map(lambda t, e: jnp.concatenate([t + self.sigma * e, t - self.sigma * e]), theta, noise)
        runs = _stack2(state.truncated)

        def one(th, inner, run_key):
            res = self.training.unroll_one(th, inner, run_key, length, num_active)
            return res.loss, res

        if self.uses_grad:
            (losses, res), grads = jax.vmap(jax.value_and_grad(one, has_aux=True))(thetas, runs.inner, runs.run_key)
            rp = jax.tree.map(lambda g: 0.5 * (g[:n] + g[n:]), grads)
        else:
            losses, res = jax.vmap(one)(thetas, runs.inner, runs.run_key)
            rp = None
        diff = (losses[:n] - losses[n:]) / (2.0 * self.sigma)
        es = jax.tree.map(lambda e: diff.reshape((n,) + (1,) * (e.ndim - 1)) * e, noise)
        inner, run_key = res.state
        new = EstimatorState(state.step + 1, TruncatedState(_half(inner, True), _half(run_key, True)))
        info = {"loss": jnp.mean(losses)}
        return es, rp, new, info

    def _with_samples(self, info: Info, **samples: Theta) -> Info:
        if self.keep_samples:
            info.update({f"samples_{k}": v for k, v in samples.items()})
        return info


@dataclasses.dataclass(eq=False)
class ES(Antithetic):
    """Antithetic evolution strategies on the smoothed loss (forward passes only)."""

    uses_grad: bool = False

    def _estimate(self, theta, state, key, length, num_active):
        es, _, new, info = self._pairs(theta, state, key, length, num_active)
        grad, var = mean_and_variance(es)
        return grad, new, self._with_samples({**info, "var_es": var}, es=es)


@dataclasses.dataclass(eq=False)
class Reparameterization(Antithetic):
    """The reparameterization (pathwise) gradient of the smoothed loss, on antithetic samples."""

    def _estimate(self, theta, state, key, length, num_active):
        _, rp, new, info = self._pairs(theta, state, key, length, num_active)
        grad, var = mean_and_variance(rp)
        return grad, new, self._with_samples({**info, "var_rp": var}, rp=rp)


@dataclasses.dataclass(eq=False)
class Merged(Antithetic):
    """Inverse-variance weighting of the reparameterization and ES estimates (eq. 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_tasks < 2:
            raise ValueError("Merged needs num_tasks >= 2 pairs to estimate the variances")

    def _estimate(self, theta, state, key, length, num_active):
        es, rp, new, info = self._pairs(theta, state, key, length, num_active)
        g_es, var_es = mean_and_variance(es)
        g_rp, var_rp = mean_and_variance(rp)
        grad, w_rp = inverse_variance_merge(g_rp, var_rp, g_es, var_es)
        info = {**info, "var_es": var_es, "var_rp": var_rp, "weight_rp": w_rp,
                "grad_es": g_es, "grad_rp": g_rp}
        return grad, new, self._with_samples(info, es=es, rp=rp)


@dataclasses.dataclass(eq=False)
class PES(TruncatedEstimator):
    """Persistent evolution strategies (Vicol et al. 2021), antithetic: pair i runs theta + e and
    theta - e from its own two inner states and accumulates xi_i = sum of its perturbations e
    since the run started; its estimate is xi_i (L+ - L-) / (2 sigma^2)."""

    sigma: float = DEFAULT_SIGMA
    keep_samples: bool = False

    def init(self, key: Array, theta: Theta) -> EstimatorState:
        runs = self.training.init(theta, key, self.num_tasks)
        accum = jax.tree.map(lambda t: jnp.zeros((self.num_tasks, *jnp.shape(t)), jnp.result_type(t)), theta)
        return EstimatorState(jnp.zeros((), jnp.int32), _stack2(runs), accum)

    def _estimate(self, theta, state, key, length, num_active):
        n = self.num_tasks
        eps = jax.tree.map(lambda e: self.sigma * e, tree_normal(key, theta, n))
        reset = _half(state.truncated.inner.step, True) >= self.horizon  # both particles alike
        shape = lambda x: reset.reshape((n,) + (1,) * (x.ndim - 1))
        xi = jax.tree.map(lambda a, e: jnp.where(shape(a), 0.0, a) + e, state.accum, eps)
        thetas = jax.tree.map(lambda t, e: jnp.concatenate([t + e, t - e]), theta, eps)
        res = self.training.unroll(thetas, state.truncated, length, num_active, batched_theta=True)
        diff = (res.loss[:n] - res.loss[n:]) / (2.0 * self.sigma**2)
        samples = jax.tree.map(lambda x: diff.reshape((n,) + (1,) * (x.ndim - 1)) * x, xi)
        grad, var = mean_and_variance(samples)
        info = {"loss": jnp.mean(res.loss), "var_pes": var}
        if self.keep_samples:
            info["samples_pes"] = samples
        return grad, EstimatorState(state.step + 1, res.state, xi), info
