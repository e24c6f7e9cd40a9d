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

Each estimator is two parts: ``_particles`` (theta -> the particles: one theta and one inner run
each, plus what the estimate needs, e.g. the noise) and ``_combine`` (the particles' losses and
d loss / d theta -> the estimate, the carried state and diagnostics). Between them the particles
are unrolled, either in one traced program per compiled length (``chunk=None``: the bucketed
sizes of :func:`lopt.truncation.bucket`, or ``max_length``) or, with ``chunk=K``, by
:mod:`lopt.chunked` as a host loop over one compiled chunk of K steps (two programs whatever the
lengths: the choice for the jittered curriculum of sec. 4.3), e.g. ``Merged(..., chunk=10)``. Both
stop at the episode end, min(L, T - t), and give the same estimate.

Estimators are frozen dataclasses: their compiled kernels are cached on the instance, so a
setting is changed by making a new one, ``dataclasses.replace(est, sigma=0.05)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .chunked import ChunkedTraining
from .optimizers import LearnedOptimizer
from .samples import (all_finite, half, inverse_variance_merge, mean_and_variance, per_sample, pooled,  # noqa: F401
                      rows, stack2, tree_normal)
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


def _schedule_rng(key: Array) -> np.random.Generator:
    """A host-side generator seeded from ``key`` (for the jitter of a truncation schedule)."""
    return np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))


# ---------------------------------------------------------------------------------------------
# estimators over truncations


@dataclasses.dataclass(eq=False, frozen=True)
class TruncatedEstimator(GradientEstimator):
    """Common machinery: truncated inner training, the length schedule, compiled kernels, and the
    particles -> unroll -> combine pipeline (module docstring). ``chunk``: run truncations through
    :mod:`lopt.chunked` with this many steps per compiled chunk (``None``: one traced program per
    compiled length)."""

    learned_opt: LearnedOptimizer
    family: TaskFamily
    horizon: int
    length: int | Schedule | None = None  # default: the horizon (whole runs)
    num_tasks: int = 8
    objective: str = "train"
    remat: bool = False
    max_length: int | None = None  # with a schedule: compile this one size, shorter truncations skip the rest
    chunk: int | None = None  # steps per compiled chunk (lopt.chunked); None: one program per compiled length

    uses_grad = True  # whether _combine needs the particles' d loss / d theta

    def __post_init__(self) -> None:  # frozen: fields and caches are set through object.__setattr__
        set_ = functools.partial(object.__setattr__, self)
        training = TruncatedTraining(self.learned_opt, self.family, int(self.horizon), self.objective, self.remat)
        set_("training", training)
        if self.length is None:
            set_("length", int(self.horizon))
        if isinstance(self.length, (int, np.integer)) and int(self.length) < 1:
            raise ValueError(f"truncation length must be >= 1, got {self.length}")
        if self.max_length is not None and int(self.max_length) < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if int(self.num_tasks) < 1:
            raise ValueError(f"num_tasks must be >= 1, got {self.num_tasks}")
        set_("_compiled", {})  # compiled length -> jitted estimate
        set_("chunked", None if self.chunk is None else ChunkedTraining(self.training, int(self.chunk)))

    def init(self, key: Array, theta: Theta) -> EstimatorState:
        return EstimatorState(jnp.zeros((), jnp.int32), self.training.init(theta, key, self.num_tasks))

    def truncation_length(self, outer_step: int, key: Array, state: EstimatorState | None = None) -> tuple[int, int]:
        """(compiled length, active steps) for this outer step. A schedule's length compiles to
        ``max_length`` when set (one kernel for every length; longer draws are cut to it), else to
        :func:`bucket` sizes (with ``chunk`` the compiled length is unused). With ``state``, the
        active steps stop at the episode end, min(L, T - t)."""
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
        if self.chunked is not None:
            grad, state, info = self._estimate_chunked(theta, state, k_est, active)
        else:
            if size not in self._compiled:
                self._compiled[size] = jax.jit(lambda th, st, k, n: self._estimate(th, st, k, size, n))
            grad, state, info = self._compiled[size](theta, state, k_est, jnp.asarray(active, jnp.int32))
        info["length"] = active
        return grad, state, info

    def _estimate(self, theta, state, key, length, num_active):
        """The estimate as one traced program (static ``length``, ``num_active`` steps active)."""
        thetas, runs, aux = self._particles(theta, state, key)
        res, grads = self.training.particles(thetas, runs, length, num_active, grad=self.uses_grad)
        return self._combine(theta, state, aux, res.loss, grads, res.state)

    def _estimate_chunked(self, theta, state, key, length):
        """The estimate, the truncation run by :mod:`lopt.chunked`; the two other parts jitted once."""
        if not hasattr(self, "_chunk_fns"):
            object.__setattr__(self, "_chunk_fns", (jax.jit(self._particles), jax.jit(self._combine)))
        particles, combine = self._chunk_fns
        thetas, runs, aux = particles(theta, state, key)
        res = self.chunked.run(thetas, runs, length, grad=self.uses_grad)
        return combine(theta, state, aux, res.loss, res.grads, res.state)

    def _particles(self, theta, state, key) -> tuple[Theta, TruncatedState, Any]:
        """(thetas with a leading particle axis, their inner runs, what ``_combine`` needs)."""
        raise NotImplementedError

    def _combine(self, theta, state, aux, losses, grads, runs) -> tuple[Theta, EstimatorState, Info]:
        """The particles' losses (and d loss / d theta when ``uses_grad``) and inner runs after the
        truncation -> (estimate, new estimator state, info)."""
        raise NotImplementedError


@dataclasses.dataclass(eq=False, frozen=True)
class TruncatedBPTT(TruncatedEstimator):
    """Backpropagation through one truncation from the carried inner state (module docstring):
    one particle per task, all at theta; the estimate is the mean of their gradients."""

    def _particles(self, theta, state, key):
        n = state.truncated.run_key.shape[0]
        return jax.tree.map(lambda t: jnp.broadcast_to(t, (n, *jnp.shape(t))), theta), state.truncated, None

    def _combine(self, theta, state, aux, losses, grads, runs):
        grad = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
        return grad, EstimatorState(state.step + 1, runs), {"loss": jnp.mean(losses)}


class FullUnroll(TruncatedBPTT):
    """Backpropagation through whole inner runs of ``num_steps`` steps, fresh tasks every call
    (Maheswaranathan et al. 2021 C.2: 200 steps, a batch of 32 problems)."""

    def __init__(self, learned_opt: LearnedOptimizer, family: TaskFamily, num_steps: int, num_tasks: int = 8,
                 objective: str = "train", remat: bool = False, chunk: int | None = None):
        super().__init__(learned_opt, family, num_steps, num_steps, num_tasks, objective, remat, chunk=chunk)


@dataclasses.dataclass(eq=False, frozen=True)
class Antithetic(TruncatedEstimator):
    """Shared machinery of ES, reparameterization and merged estimates: one antithetic pair
    theta +/- sigma n per task, both started from the task's carried state (2n particles)."""

    sigma: float = DEFAULT_SIGMA
    keep_samples: bool = False
    uses_grad: bool = True

    def _particles(self, theta, state, key):
        noise = tree_normal(key, theta, self.num_tasks)
        thetas = jax.tree.map(lambda t, e: jnp.concatenate([t + self.sigma * e, t - self.sigma * e]), theta, noise)
        return thetas, stack2(state.truncated), noise

    def _samples(self, noise, losses, grads):
        """Per pair: the ES estimate (L+ - L-) / (2 sigma) n and the reparameterization estimate
        (grad L+ + grad L-) / 2 (``None`` without gradients)."""
        n = self.num_tasks
        es = per_sample((losses[:n] - losses[n:]) / (2.0 * self.sigma), noise)
        rp = None if grads is None else jax.tree.map(lambda g: 0.5 * (g[:n] + g[n:]), grads)
        return es, rp

    def _next(self, state, losses, runs):
        """The carried state (the positive particles' runs) and the info every pair estimator reports."""
        return EstimatorState(state.step + 1, half(runs, True)), {"loss": jnp.mean(losses)}

    def _with_samples(self, info: Info, **samples: Theta) -> Info:
        if self.keep_samples:
            info.update({f"samples_{k}": v for k, v in samples.items()})
        return info


@dataclasses.dataclass(eq=False, frozen=True)
class ES(Antithetic):
    """Antithetic evolution strategies on the smoothed loss (forward passes only)."""

    uses_grad: bool = False

    def _combine(self, theta, state, noise, losses, grads, runs):
        es, _ = self._samples(noise, losses, None)
        grad, var = mean_and_variance(es)
        new, info = self._next(state, losses, runs)
        return grad, new, self._with_samples({**info, "var_es": var}, es=es)


@dataclasses.dataclass(eq=False, frozen=True)
class Reparameterization(Antithetic):
    """The reparameterization (pathwise) gradient of the smoothed loss, on antithetic samples."""

    def _combine(self, theta, state, noise, losses, grads, runs):
        _, rp = self._samples(noise, losses, grads)
        grad, var = mean_and_variance(rp)
        new, info = self._next(state, losses, runs)
        return grad, new, self._with_samples({**info, "var_rp": var}, rp=rp)


@dataclasses.dataclass(eq=False, frozen=True)
class Merged(Antithetic):
    """Inverse-variance weighting of the reparameterization and ES estimates (eq. 1). With
    ``per_coordinate``, eq. (1) per coordinate of theta, with the per-coordinate variances of the
    two sample means instead of their averages over coordinates; ``weight_rp`` is then the mean
    weight and ``var_es``/``var_rp`` the averages."""

    per_coordinate: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_tasks < 2:
            raise ValueError("Merged needs num_tasks >= 2 pairs to estimate the variances")

    def _combine(self, theta, state, noise, losses, grads, runs):
        es, rp = self._samples(noise, losses, grads)
        g_es, var_es = mean_and_variance(es, self.per_coordinate)
        g_rp, var_rp = mean_and_variance(rp, self.per_coordinate)
        grad, w_rp = inverse_variance_merge(g_rp, var_rp, g_es, var_es)
        if self.per_coordinate:
            var_es, var_rp, w_rp = pooled(var_es), pooled(var_rp), pooled(w_rp)
        new, info = self._next(state, losses, runs)
        info = {**info, "var_es": var_es, "var_rp": var_rp, "weight_rp": w_rp, "grad_es": g_es, "grad_rp": g_rp}
        return grad, new, self._with_samples(info, es=es, rp=rp)


@dataclasses.dataclass(eq=False, frozen=True)
class PES(TruncatedEstimator):
    """Persistent evolution strategies (Vicol et al. 2021), antithetic: pair i runs theta + e and
    theta - e from its own two inner states and accumulates xi_i = sum of its perturbations e
    since the run started; its estimate is xi_i (L+ - L-) / (2 sigma^2)."""

    sigma: float = DEFAULT_SIGMA
    keep_samples: bool = False

    uses_grad = False

    def init(self, key: Array, theta: Theta) -> EstimatorState:
        runs = self.training.init(theta, key, self.num_tasks)
        accum = jax.tree.map(lambda t: jnp.zeros((self.num_tasks, *jnp.shape(t)), jnp.result_type(t)), theta)
        return EstimatorState(jnp.zeros((), jnp.int32), stack2(runs), accum)

    def _particles(self, theta, state, key):
        eps = jax.tree.map(lambda e: self.sigma * e, tree_normal(key, theta, self.num_tasks))
        reset = half(state.truncated.inner.step, True) >= self.horizon  # both particles alike
        xi = jax.tree.map(lambda a, e: jnp.where(rows(reset, a), 0.0, a) + e, state.accum, eps)
        thetas = jax.tree.map(lambda t, e: jnp.concatenate([t + e, t - e]), theta, eps)
        return thetas, state.truncated, xi

    def _combine(self, theta, state, xi, losses, grads, runs):
        n = self.num_tasks
        samples = per_sample((losses[:n] - losses[n:]) / (2.0 * self.sigma**2), xi)
        grad, var = mean_and_variance(samples)
        info = {"loss": jnp.mean(losses), "var_pes": var}
        if self.keep_samples:
            info["samples_pes"] = samples
        return grad, EstimatorState(state.step + 1, runs, xi), info
