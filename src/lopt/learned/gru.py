"""The per-coordinate GRU learned optimizer of Maheswaranathan et al. 2021 (sec. 2, eqs. 1-2; App. D.2).

Every coordinate x of the optimizee carries its own optimizer state h (``hidden`` numbers), and the
same GRU (Cho et al. 2014) updates it from that coordinate's gradient g alone::

    s  = input_scale * g                               (optional rescaling of the gradient)
    z  = sigmoid(W_z s + U_z h + b_z)                  (update gate)
    r  = sigmoid(W_r s + U_r h + b_r)                  (reset gate)
    n  = tanh(W_n s + U_n (r * h) + b_n)               (candidate state)
    h' = F(h, g) = z * h + (1 - z) * n                 (eq. 1)
    x' = x + output_scale * w^T h'                      (eq. 2: a linear readout, no bias)

The readout has no bias, as in eq. 2 of the paper, so the whole update is carried by the state and the
linearisation of App. C (``lopt.recurrent``) accounts for all of it. The state before the first gradient
is a learned vector ``h0`` (initialised at 0): with it the optimizer can learn autonomous dynamics (a
learning-rate schedule, Fig. 5). All coordinates are updated at once: the state of a parameter tensor of
shape S is an array (*S, hidden), and one GRU step is two matmuls over all coordinates.

Defaults: ``hidden=32``. The paper does not state its size; 32 keeps meta-training and the Jacobian
eigen-analysis (32 modes, Fig. 3 and 7) cheap and legible, and is enough for a slow mode to separate from
a bulk. ``output_scale=0.1`` with a readout initialised at N(0, 1/hidden^2) makes a fresh optimizer take
steps of at most ~0.1 / sqrt(hidden) per iteration (small against the unit-scale tasks of App. D.1); the
gradient of Rosenbrock is O(100), so train that one with ``input_scale`` ~ 0.01-0.1.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..optimizers import LearnedOptimizer, Optimizer

Array = jax.Array
Theta = dict[str, Array]


class GRUOptState(NamedTuple):
    h: Any  # per parameter tensor of shape S: the states of its coordinates, shape (*S, hidden)


@dataclasses.dataclass(frozen=True)
class GRUOptimizer(LearnedOptimizer):
    """Per-coordinate GRU optimizer with a linear readout (module docstring).

    ``theta`` holds ``w_in`` (3, hidden): input weights of the z, r, n rows; ``u`` (3, hidden, hidden):
    recurrent weights (``h @ u[i]``); ``b`` (3, hidden); ``readout`` (hidden,); ``h0`` (hidden,).
    """

    hidden: int = 32
    input_scale: float = 1.0
    output_scale: float = 0.1

    def init(self, key: Array) -> Theta:
        k_in, k_u, k_out = jax.random.split(key, 3)
        n = self.hidden
        return {
            "w_in": jax.random.normal(k_in, (3, n)),
            "u": jax.random.normal(k_u, (3, n, n)) / jnp.sqrt(n),
            "b": jnp.zeros((3, n)),
            "readout": jax.random.normal(k_out, (n,)) / n,
            "h0": jnp.zeros((n,)),
        }

    def initial_state(self, theta: Theta) -> Array:
        """State of one coordinate before any gradient: ``h0``, shape (hidden,)."""
        return theta["h0"]

    def cell(self, theta: Theta, h: Array, g: Array) -> Array:
        """F(h, g), eq. 1. Broadcasts: h (..., hidden), g (...) -> (..., hidden)."""
        s = (self.input_scale * jnp.asarray(g, h.dtype))[..., None]
        w, u, b = theta["w_in"], theta["u"], theta["b"]
        z = jax.nn.sigmoid(s * w[0] + h @ u[0] + b[0])
        r = jax.nn.sigmoid(s * w[1] + h @ u[1] + b[1])
        n = jnp.tanh(s * w[2] + (r * h) @ u[2] + b[2])
        return z * h + (1.0 - z) * n

    def readout(self, theta: Theta, h: Array) -> Array:
        """Parameter update of a coordinate in state h, eq. 2 (output_scale included): (..., hidden) -> (...)."""
        return self.output_scale * (h @ theta["readout"])

    def opt_fn(self, theta: Theta) -> Optimizer:
        def init(params: Any) -> GRUOptState:
            def one(p):
                p = jnp.asarray(p)
                return jnp.broadcast_to(theta["h0"].astype(p.dtype), (*p.shape, self.hidden))

            return GRUOptState(jax.tree.map(one, params))

        def update(grads: Any, state: GRUOptState, params: Any = None):
            # one GRU step over the coordinates of all tensors at once: a few large ops instead of a few
            # small ones per tensor (a 200-step meta-gradient on the 3x16 two-moons MLP compiles ~2x faster)
            g_leaves, treedef = jax.tree.flatten(grads)
            h_leaves = treedef.flatten_up_to(state.h)
            sizes = [int(jnp.size(g)) for g in g_leaves]
            g = jnp.concatenate([jnp.ravel(x) for x in g_leaves])
            h = jnp.concatenate([x.reshape(-1, self.hidden) for x in h_leaves])
            h = self.cell(theta, h, g)
            u = self.readout(theta, h)
            cuts = list(itertools.accumulate(sizes))[:-1]
            new_h = [x.reshape(*jnp.shape(gl), self.hidden) for x, gl in zip(jnp.split(h, cuts), g_leaves)]
            updates = [x.reshape(jnp.shape(gl)).astype(jnp.result_type(gl)) for x, gl in zip(jnp.split(u, cuts), g_leaves)]
            return treedef.unflatten(updates), GRUOptState(treedef.unflatten(new_h))

        return optax.GradientTransformation(init, update)
