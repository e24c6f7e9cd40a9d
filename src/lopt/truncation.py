"""Truncated inner training (Metz et al. 2019 sec. 2.2, 4.3).

Inner training of a task runs for ``horizon`` steps, but the outer-gradient is computed over
windows of ``length`` steps (truncations): the inner state (parameters, optimizer state, step) is
carried from one truncation to the next and a task is replaced by a fresh one (new task, new
initialisation) once it has reached its horizon. Every task's inner run is driven by one key:
the task, its initialisation and the minibatch of each step are derived from it, so a run is the
same however it is cut into truncations.

The outer-loss of a truncation is the mean over its steps of the inner loss *after* each update,
l(w_{t+1}), on the next training minibatch (Metz's L_train) or on a validation minibatch
(L_valid). Steps past the horizon, or past ``num_active`` (variable lengths compile to a few
bucketed sizes, see :func:`bucket`), leave the state unchanged and carry no weight. Tasks are
reset only at the start of a truncation, so each truncation covers one inner run per task.

A truncation is :meth:`TruncatedTraining.restart` (reset at the horizon), then
:meth:`~TruncatedTraining.steps` (the per-step body, shared with :mod:`lopt.chunked`, which runs a
truncation as a host loop over a fixed compiled chunk of steps instead of one scan per length).

Truncation schedules map the outer step to a length: :func:`constant` and the paper's
:func:`curriculum` (linear from a start to an end length over N outer updates, jittered
uniformly by up to 20 %, sec. 4.3).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .optimizers import LearnedOptimizer, Optimizer, apply_updates
from .tasks import TaskFamily
from .unroll import InnerState

Array = jax.Array
Theta = Any
Schedule = Callable[[int, np.random.Generator], int]

OBJECTIVES = ("train", "valid")


class TruncatedState(NamedTuple):
    """Inner runs in progress, batched over tasks: their state and the key that drives each run."""

    inner: InnerState
    run_key: Array  # (num_tasks, 2): task, initialisation and minibatches of the current run


class StepContext(NamedTuple):
    """What the steps of one run share (:meth:`TruncatedTraining.context`)."""

    opt: Optimizer
    task: Any  # the run's Task
    k_train: Array  # minibatch t is drawn from fold_in(k_train, t)
    k_valid: Array


class Truncation(NamedTuple):
    """One truncation of one or more tasks (:meth:`TruncatedTraining.unroll`)."""

    loss: Array  # mean outer-loss over the truncation's active steps (per task)
    losses: Array  # per-step outer-loss l(w_{t+1}), (..., length)
    active: Array  # which steps updated the state, (..., length)
    reset: Array  # whether the task was replaced by a fresh one at the start of the truncation
    state: Any  # InnerState after the truncation (and run_key, for batched calls: TruncatedState)


def tree_where(cond: Array, a: Any, b: Any) -> Any:
    """``a`` where ``cond`` else ``b``, leaf by leaf (``cond`` a scalar)."""
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def bucket(length: int) -> int:
    """The compiled size for a variable truncation length: ``length`` rounded up to a multiple of
    2^(floor(log2 length) - 3), so at most 8 sizes per octave and < 12.5 % padding."""
    length = int(length)
    if length < 1:
        raise ValueError(f"truncation length must be >= 1, got {length}")
    step = 2 ** max(0, int(math.floor(math.log2(length))) - 3)
    return -(-length // step) * step


def constant(length: int) -> Schedule:
    """The same truncation length at every outer step."""
    if int(length) < 1:
        raise ValueError(f"truncation length must be >= 1, got {length}")
    return lambda outer_step, rng: int(length)


def curriculum(start: int, end: int, num_updates: int, jitter: float = 0.2) -> Schedule:
    """Metz et al. 2019 sec. 4.3: the length grows linearly from ``start`` to ``end`` over
    ``num_updates`` outer updates (then stays at ``end``), multiplied by a uniform factor in
    [1 - jitter, 1 + jitter]."""
    if not (1 <= start and 1 <= end and num_updates >= 1 and 0 <= jitter < 1):
        raise ValueError(f"bad curriculum: start={start}, end={end}, num_updates={num_updates}, jitter={jitter}")

    def schedule(outer_step: int, rng: np.random.Generator) -> int:
        frac = min(1.0, outer_step / num_updates)
        mean = start + frac * (end - start)
        return max(1, int(round(mean * rng.uniform(1 - jitter, 1 + jitter))))

    return schedule


@dataclasses.dataclass(eq=False)
class TruncatedTraining:
    """Inner training of tasks from ``family`` by ``learned_opt``, cut into truncations.

    ``horizon`` inner steps per task; ``objective`` "train" or "valid"; ``remat`` rematerialises
    each inner step in the backward pass (``jax.checkpoint``: ~5x less memory on long unrolls).
    """

    learned_opt: LearnedOptimizer
    family: TaskFamily
    horizon: int
    objective: str = "train"
    remat: bool = False

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; allowed values: {', '.join(OBJECTIVES)}")
        if int(self.horizon) < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")

    # -- one task ---------------------------------------------------------------------------

    def fresh(self, opt: Optimizer, run_key: Array) -> InnerState:
        """The initial inner state of the run driven by ``run_key``."""
        task = self.family.sample(jax.random.fold_in(run_key, 0))
        params = task.init(jax.random.fold_in(run_key, 1))
        return InnerState(params, opt.init(params), jnp.zeros((), jnp.int32))

    def restart(self, opt: Optimizer, inner: InnerState, run_key: Array) -> tuple[InnerState, Array, Array]:
        """The start of a truncation: a task that reached its horizon is replaced by a fresh run (new
        key). Returns the inner state, the run key and whether it was reset."""
        reset = inner.step >= self.horizon
        run_key = jnp.where(reset, jax.random.fold_in(run_key, 4), run_key)
        return tree_where(reset, self.fresh(opt, run_key), inner), run_key, reset

    def context(self, opt: Optimizer, run_key: Array) -> StepContext:
        """What every step of the run driven by ``run_key`` needs: optimizer, task, minibatch keys."""
        task = self.family.sample(jax.random.fold_in(run_key, 0))
        return StepContext(opt, task, jax.random.fold_in(run_key, 2), jax.random.fold_in(run_key, 3))

    def steps(self, ctx: StepContext, inner: InnerState, ts: Array, num_active: Array | int) -> tuple[InnerState, Any]:
        """The steps ``ts`` (indices within the truncation) from ``inner``: a step updates the state if
        ``t < num_active`` and the task is before its horizon. Returns the final state and, per step,
        (loss, active): the pre-update training loss l(w_t) with objective "train" (the post-update loss
        is the next step's, see :meth:`unroll_one`), the post-update validation loss with "valid"."""
        task, opt = ctx.task, ctx.opt

        def step(state: InnerState):
            active = state.step < self.horizon
            batch = task.batch(jax.random.fold_in(ctx.k_train, state.step), "train")
            loss, grads = jax.value_and_grad(task.loss)(state.params, batch)
            updates, opt_state = opt.update(grads, state.opt_state, state.params)
            new = InnerState(apply_updates(state.params, updates), opt_state, state.step + 1)
            new = tree_where(active, new, state)
            if self.objective == "valid":
                loss = task.loss(new.params, task.batch(jax.random.fold_in(ctx.k_valid, state.step), "valid"))
            return new, (task.outer_loss(loss), active)

        def skip(state: InnerState):
            return state, (jnp.zeros((), jnp.result_type(float)), jnp.zeros((), bool))

        def body(state: InnerState, t: Array):
            # the predicate does not depend on the task, so under vmap this stays a real branch and steps
            # past num_active cost nothing: one compiled size serves every shorter truncation
            return jax.lax.cond(t < num_active, step, skip, state)

        if self.remat:
            body = jax.checkpoint(body)
        return jax.lax.scan(body, inner, ts)

    def next_loss(self, ctx: StepContext, inner: InnerState) -> Array:
        """The outer-loss of ``inner`` on the next training minibatch (objective "train")."""
        batch = ctx.task.batch(jax.random.fold_in(ctx.k_train, inner.step), "train")
        return ctx.task.outer_loss(ctx.task.loss(inner.params, batch))

    def unroll_one(
        self, theta: Theta, inner: InnerState, run_key: Array, length: int, num_active: Array | int | None = None
    ) -> Truncation:
        """One truncation of one task: ``length`` steps from ``inner`` (reset first if the task
        reached its horizon). ``Truncation.state`` is ``(inner, run_key)`` to carry on with."""
        opt = self.learned_opt.opt_fn(theta)
        inner, run_key, reset = self.restart(opt, inner, run_key)
        ctx = self.context(opt, run_key)
        n_active = length if num_active is None else num_active
        final, (losses, active) = self.steps(ctx, inner, jnp.arange(length), n_active)
        if self.objective == "train":
            # l(w_{t+1}) on batch t+1 is the loss the next step computes before its update; after the
            # last active step, the loss of the final state on the next batch
            last = self.next_loss(ctx, final)
            after = jnp.concatenate([active[1:], jnp.zeros((1,), bool)])
            losses = jnp.where(after, jnp.concatenate([losses[1:], last[None]]), last)
        weight = active.astype(losses.dtype)
        mean = jnp.sum(jnp.where(active, losses, 0.0)) / jnp.maximum(jnp.sum(weight), 1.0)
        return Truncation(mean, losses, active, reset, (final, run_key))

    def remaining(self, state: TruncatedState) -> Array:
        """Steps until every task of ``state`` reaches its horizon (tasks at the horizon restart at 0):
        a truncation longer than this only idles, so the estimators stop there, min(L, T - t)."""
        step = state.inner.step
        return jnp.max(self.horizon - jnp.where(step >= self.horizon, 0, step))

    # -- batches of tasks -------------------------------------------------------------------

    def init(self, theta: Theta, key: Array, num_tasks: int) -> TruncatedState:
        """``num_tasks`` fresh inner runs (one key each)."""
        opt = self.learned_opt.opt_fn(theta)
        keys = jax.random.split(key, num_tasks)
        return TruncatedState(jax.vmap(lambda k: self.fresh(opt, k))(keys), keys)

    def unroll(
        self,
        theta: Theta,
        state: TruncatedState,
        length: int,
        num_active: Array | int | None = None,
        batched_theta: bool = False,
    ) -> Truncation:
        """One truncation of every task in ``state`` (vmapped); ``theta`` is shared, or one per
        task with ``batched_theta``. ``Truncation.state`` is the new :class:`TruncatedState`."""

        def one(th, inner, key):
            return self.unroll_one(th, inner, key, length, num_active)

        res = jax.vmap(one, in_axes=(0 if batched_theta else None, 0, 0))(theta, state.inner, state.run_key)
        inner, run_key = res.state
        return res._replace(state=TruncatedState(inner, run_key))

    def particles(
        self, thetas: Theta, state: TruncatedState, length: int, num_active: Array | int | None = None,
        grad: bool = False,
    ) -> tuple[Truncation, Theta | None]:
        """One truncation per particle, each with its own theta (leading axis of ``thetas``) and
        inner run (``state``): the :class:`Truncation` and, with ``grad``, each particle's
        d loss / d theta (leading axis). The traced counterpart of :mod:`lopt.chunked`."""
        if not grad:
            return self.unroll(thetas, state, length, num_active, batched_theta=True), None

        def one(th, inner, key):
            res = self.unroll_one(th, inner, key, length, num_active)
            return res.loss, res

        (_, res), grads = jax.vmap(jax.value_and_grad(one, has_aux=True))(thetas, state.inner, state.run_key)
        inner, run_key = res.state
        return res._replace(state=TruncatedState(inner, run_key)), grads
