"""Truncations of any length from one compiled chunk of steps (Metz et al. 2019 sec. 2.2, 4.3).

The sec. 4.3 curriculum draws a new truncation length at every outer step (linear growth, jittered
by +-20 %), so compiling one program per length (or per :func:`lopt.truncation.bucket`) compiles
dozens of programs. Here a truncation of ``length`` steps is a host loop over one compiled chunk of
``chunk`` steps, steps past ``length`` masked as ``num_active`` does in
:meth:`lopt.truncation.TruncatedTraining.unroll_one`, and the loop stops at the episode end: it
runs ceil(min(length, max over particles of (T - t)) / chunk) chunks, so no chunk runs once every
particle has reached its horizon. Two programs per (estimator, chunk) whatever the lengths:

- ``forward``: one chunk for every particle (vmapped), accumulating each particle's outer-loss;
- ``backward``: the vector-Jacobian product of one chunk, recomputed from the inner state stored
  at its start (a checkpointed VJP: the forward loop stores the state at each chunk boundary, the
  backward loop runs over the chunks in reverse, carrying the cotangent of the inner state and
  accumulating each particle's d loss / d theta). Integer leaves of the inner state (step counters)
  carry no cotangent.

A particle is a theta (leading axis) with its own inner run (:class:`TruncatedState`). Its loss is
the function of :meth:`~lopt.truncation.TruncatedTraining.unroll_one`: the mean over its active
steps of l(w_{t+1}). With objective "train" the step body computes the pre-update loss l(w_t), so
a chunk counts the pre-update loss of every active step but the truncation's first, and the last
chunk adds the loss of the final state on the next minibatch. The number of active steps does not
depend on theta, so the mean's denominator is a constant of the VJP. A finished task is reset at
the start of the truncation (chunk 0), as in the traced path.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .truncation import TruncatedState, TruncatedTraining

Array = jax.Array
Theta = Any


class ChunkedRun(NamedTuple):
    """The result of :meth:`ChunkedTraining.run`, per particle."""

    loss: Array  # mean outer-loss over the particle's active steps, (P,)
    grads: Theta | None  # d loss / d theta per particle (leading axis P), when asked for
    state: TruncatedState  # the inner runs after the truncation
    num_chunks: int  # chunks run


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _floats(tree: Any) -> list[Array]:
    return [x for x in jax.tree.leaves(tree) if _is_float(x)]


@dataclasses.dataclass(eq=False)
class ChunkedTraining:
    """Truncations of ``training`` as host loops over one compiled chunk of ``chunk`` steps.

    ``forward`` and ``backward`` are the two jitted kernels (inspect ``_cache_size()`` to count
    compilations); both are vmapped over particles."""

    training: TruncatedTraining
    chunk: int

    def __post_init__(self) -> None:
        if int(self.chunk) < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk}")
        self.chunk = int(self.chunk)
        self.forward = jax.jit(jax.vmap(self._forward, in_axes=(0, 0, None, None, None)))
        self.backward = jax.jit(jax.vmap(self._backward, in_axes=(0, 0, 0, None, None, None, 0, 0, 0)))

    # -- one particle -------------------------------------------------------------------------

    def _chunk(self, theta, inner, run_key, c, num_active, last):
        """Steps c * chunk, ..., (c + 1) * chunk - 1 of the truncation (chunk 0 resets finished tasks
        first): the new inner state and run key, the chunk's sum of weighted outer-losses and its
        number of active steps."""
        tt = self.training
        opt = tt.learned_opt.opt_fn(theta)
        # c does not depend on the particle, so under vmap this stays a branch that chunks > 0 skip
        inner, run_key = jax.lax.cond(c == 0, lambda: tt.restart(opt, inner, run_key)[:2], lambda: (inner, run_key))
        ctx = tt.context(opt, run_key)
        ts = c * self.chunk + jnp.arange(self.chunk)
        inner, (losses, active) = tt.steps(ctx, inner, ts, num_active)
        if tt.objective == "train":
            # the pre-update loss of step t is the post-update loss of step t - 1 (both active); the
            # post-update loss of the last active step is the final state's, added by the last chunk
            total = jnp.sum(jnp.where(active & (ts > 0), losses, 0.0))
            total = total + jax.lax.cond(last, lambda: tt.next_loss(ctx, inner), lambda: jnp.zeros((), total.dtype))
        else:
            total = jnp.sum(jnp.where(active, losses, 0.0))
        return inner, run_key, total, jnp.sum(active.astype(jnp.int32))

    def _forward(self, theta, carry, c, num_active, last):
        inner, run_key, total, count = carry
        inner, run_key, t, k = self._chunk(theta, inner, run_key, c, num_active, last)
        return inner, run_key, total + t, count + k

    def _backward(self, theta, inner, run_key, c, num_active, last, d_out, scale, d_theta):
        """The chunk's VJP from its stored start state: the cotangent ``d_out`` of the float leaves of
        the state after it and ``scale`` (1 / active steps) of its loss sum, back to the float leaves of
        the state before it; adds the chunk's d loss / d theta to ``d_theta``."""
        leaves, treedef = jax.tree.flatten(inner)
        where = [i for i, x in enumerate(leaves) if _is_float(x)]

        def f(th, floats):
            full = list(leaves)
            for i, x in zip(where, floats):
                full[i] = x
            new, _, total, _ = self._chunk(th, treedef.unflatten(full), run_key, c, num_active, last)
            return _floats(new), total

        _, pullback = jax.vjp(f, theta, [leaves[i] for i in where])
        g_theta, d_in = pullback((d_out, scale))
        return d_in, jax.tree.map(jnp.add, d_theta, g_theta)

    # -- particles -------------------------------------------------------------------------------

    def num_chunks(self, length: int) -> int:
        return -(-int(length) // self.chunk)

    def stop(self, state: TruncatedState, length: int) -> int:
        """The active length min(L, T - t): ``length`` cut at the step where every particle of
        ``state`` reaches its horizon (after the reset of finished ones)."""
        return max(1, min(int(length), int(self.training.remaining(state))))

    def run(self, thetas: Theta, state: TruncatedState, length: int, grad: bool = False) -> ChunkedRun:
        """One truncation of at most ``length`` steps per particle (``thetas`` and ``state`` with a
        leading particle axis), stopped at the episode end (:meth:`stop`); with ``grad``, each
        particle's d loss / d theta by the checkpointed VJP (module docstring)."""
        n = self.stop(state, length)
        num = self.num_chunks(n)
        size = state.run_key.shape[0]
        dtype = jnp.result_type(float)
        carry = (state.inner, state.run_key, jnp.zeros((size,), dtype), jnp.zeros((size,), jnp.int32))
        starts = []
        for c in range(num):
            if grad:
                starts.append(carry[:2])
            carry = self.forward(thetas, carry, c, n, c == num - 1)
        inner, run_key, total, count = carry
        denom = jnp.maximum(count, 1).astype(dtype)
        loss = total / denom
        grads = None
        if grad:
            scale = 1.0 / denom
            d_state = [jnp.zeros_like(x) for x in _floats(inner)]
            grads = jax.tree.map(jnp.zeros_like, thetas)
            for c in reversed(range(num)):
                inner_c, key_c = starts[c]
                d_state, grads = self.backward(thetas, inner_c, key_c, c, n, c == num - 1, d_state, scale, grads)
        return ChunkedRun(loss, grads, TruncatedState(inner, run_key), num)
