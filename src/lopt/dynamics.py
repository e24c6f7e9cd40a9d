"""Reading optimizers off their dynamics (Maheswaranathan et al. 2021 sec. 3).

An optimizer applied to one coordinate is a dynamical system: its state h evolves with the
gradient g it is fed, h' = F(h, g), and it emits a parameter update. The *update function* at a
state is the update as a function of the gradient with the state held fixed (sec. 3.2, Fig. 2); its
slope at g = 0 is the *effective learning rate*. These tools take any ``Optimizer`` (optax-style
``init/update``) acting on a scalar parameter, hand-designed or learned.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .optimizers import Optimizer

Array = jax.Array


def state_after(opt: Optimizer, grads: Array, param: float | Array = 0.0) -> Any:
    """The optimizer state of a scalar parameter after it has been fed the gradients ``grads``
    (in order, from ``opt.init``); the parameter itself is held fixed."""
    p = jnp.asarray(param, jnp.result_type(float))

    def body(state, g):
        _, state = opt.update(g, state, p)
        return state, None

    state, _ = jax.lax.scan(body, opt.init(p), jnp.asarray(grads, p.dtype))
    return state


def update_function(opt: Optimizer, state: Any, grads: Array, param: float | Array = 0.0) -> Array:
    """The update the optimizer makes at ``state`` for each gradient in ``grads`` (1D)."""
    p = jnp.asarray(param, jnp.result_type(float))
    return jax.vmap(lambda g: opt.update(g, state, p)[0])(jnp.asarray(grads, p.dtype))


def effective_learning_rate(opt: Optimizer, state: Any, param: float | Array = 0.0) -> Array:
    """Minus the slope of the update function at g = 0 (sec. 4.3): lr for gradient descent."""
    p = jnp.asarray(param, jnp.result_type(float))
    return -jax.grad(lambda g: opt.update(g, state, p)[0])(jnp.zeros_like(p))
