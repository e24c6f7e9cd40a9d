"""Unrolled inner training with ``lax.scan`` (Metz et al. 2019 sec. 2.2, Fig. 1).

The inner state is ``InnerState(params, opt_state, step)``. :func:`unroll` applies an optimizer
to a task for ``num_steps`` steps and returns the loss trajectory, the final state and, on request,
the parameter trajectory. Everything is a pure function of its inputs, so

- outer-gradients are ``jax.grad`` of a function of ``theta`` that builds the optimizer with
  ``opt_fn(theta)`` and unrolls it (:func:`meta_loss`);
- batches of tasks are ``jax.vmap`` over stacked task pytrees;
- ``remat=True`` rematerialises each step in the backward pass (``jax.checkpoint``), trading
  compute for memory on long reverse-mode unrolls.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from .optimizers import Optimizer, apply_updates
from .tasks import Task

Array = jax.Array


class InnerState(NamedTuple):
    """What inner training carries from step to step (and across truncations)."""

    params: Any
    opt_state: Any
    step: Array


class Unroll(NamedTuple):
    """Result of :func:`unroll`: per-step losses (before each update), the final state, and the
    parameter trajectory (``num_steps + 1`` entries, initial included) when requested."""

    losses: Array
    state: InnerState
    params: Any = None


def init_state(task: Task, opt: Optimizer, key: Array) -> InnerState:
    """Initial inner state: ``task.init(key)`` and the optimizer's initial state."""
    params = task.init(key)
    return InnerState(params, opt.init(params), jnp.zeros((), jnp.int32))


def step(task: Task, opt: Optimizer, state: InnerState, key: Array | None) -> tuple[InnerState, Array]:
    """One inner step on a training batch; returns the new state and the loss before the step."""
    batch = task.batch(key, "train") if key is not None else None
    loss, grads = jax.value_and_grad(task.loss)(state.params, batch)
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    return InnerState(apply_updates(state.params, updates), opt_state, state.step + 1), loss


def unroll(
    task: Task,
    opt: Optimizer,
    state: InnerState,
    key: Array | None,
    num_steps: int,
    *,
    record_params: bool = False,
    remat: bool = False,
) -> Unroll:
    """Apply ``opt`` to ``task`` for ``num_steps`` steps from ``state`` with ``lax.scan``.

    ``key`` drives minibatch sampling (one subkey per step); pass ``None`` for deterministic tasks.
    """
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    keys = jax.random.split(key, num_steps) if key is not None else None

    def body(carry: InnerState, k: Array | None):
        new, loss = step(task, opt, carry, k)
        out = (loss, carry.params) if record_params else (loss, None)
        return new, out

    if remat:
        body = jax.checkpoint(body)
    final, (losses, params) = jax.lax.scan(body, state, keys, length=num_steps)
    if record_params:
        params = jax.tree.map(lambda traj, last: jnp.concatenate([traj, last[None]]), params, final.params)
    return Unroll(losses, final, params)


def run(
    opt_fn: Callable[[Any], Optimizer],
    theta: Any,
    task: Task,
    key: Array | None,
    num_steps: int,
    *,
    record_params: bool = False,
    remat: bool = False,
) -> tuple[Unroll, Any]:
    """Inner training from scratch with ``opt_fn(theta)``: the :class:`Unroll` and the batch the
    final loss is measured on. ``key`` fixes all randomness (init, minibatches, final batch);
    ``None`` for deterministic tasks. :func:`meta_loss`, :func:`final_params` and :func:`sweep`
    all unroll through here, so one key means the same inner run in each."""
    opt = opt_fn(theta)
    k_init, k_unroll, k_final = jax.random.split(key, 3) if key is not None else (None, None, None)
    res = unroll(task, opt, init_state(task, opt, k_init), k_unroll, num_steps, record_params=record_params, remat=remat)
    return res, (task.batch(k_final, "train") if key is not None else None)


def meta_loss(
    theta: Any,
    opt_fn: Callable[[Any], Optimizer],
    task: Task,
    key: Array | None,
    num_steps: int,
    objective: str = "mean",
    remat: bool = False,
) -> Array:
    """Outer-loss of ``theta``: the mean training loss over the unroll (``"mean"``, the meta-
    objective of Maheswaranathan et al. 2021 C.2 and Metz's L_train) or the loss after the last
    step (``"final"``, Metz et al. 2019 Fig. 2c). Differentiate with ``jax.grad``."""
    if objective not in ("mean", "final"):
        raise ValueError(f"unknown objective {objective!r}; allowed values: mean, final")
    res, final_batch = run(opt_fn, theta, task, key, num_steps, remat=remat)
    if objective == "mean":
        return jnp.mean(res.losses)
    return task.loss(res.state.params, final_batch)


def final_params(
    opt_fn: Callable[[Any], Optimizer], task: Task, theta: Any, num_steps: int, key: Array | None = None
) -> Any:
    """Inner parameters after ``num_steps`` steps of ``opt_fn(theta)`` (differentiable in theta)."""
    return run(opt_fn, theta, task, key, num_steps)[0].state.params


class Sweep(NamedTuple):
    """Outer-loss landscape along a grid of outer-parameters (:func:`sweep`)."""

    thetas: Array
    loss: Array  # final inner loss l(w_T) per theta
    grad: Array  # its outer-gradient d l(w_T) / d theta per theta
    params: Any  # final parameters, or whole trajectories (theta, T+1, ...) if requested


def sweep(
    opt_fn: Callable[[Any], Optimizer],
    task: Task,
    thetas: Array,
    num_steps: int,
    key: Array | None = None,
    record_params: bool = False,
) -> Sweep:
    """Final loss l(w_T), its outer-gradient (reverse mode) and the final parameters (or their
    trajectories) for every outer-parameter in ``thetas`` (vmapped; Metz et al. 2019 Fig. 2b-c).
    The same ``key`` (all randomness) is used for every theta."""
    def one(theta):
        def f(th):
            res, final_batch = run(opt_fn, th, task, key, num_steps, record_params=record_params)
            return task.loss(res.state.params, final_batch), (res.params if record_params else res.state.params)

        (loss, params), grad = jax.value_and_grad(f, has_aux=True)(theta)
        return loss, grad, params

    thetas = jnp.asarray(thetas)
    loss, grad, params = jax.jit(jax.vmap(one))(thetas)
    return Sweep(thetas, loss, grad, params)
