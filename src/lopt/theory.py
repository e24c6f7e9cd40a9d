"""Closed forms the notebooks check autodiff and learned optimizers against.

Metz et al. 2019 sec. 2.3 / App. A: for gradient descent w' = w - theta grad l(w) with a learned
learning rate theta,

    d l(w_T) / d theta = < g_T, - sum_{i<T} prod_{j=i+1}^{T-1} (I - theta H_j) g_i >,

g_i, H_j the gradient and Hessian at step i, j. On a quadratic l = 1/2 (w-c)^T H (w-c) the Hessian
is constant and the sum collapses: with z = Q^T (w_0 - c) in the eigenbasis of H,

    d l(w_T) / d theta = -T sum_k lambda_k^2 (1 - theta lambda_k)^(2T-1) z_k^2,

a polynomial of degree 2T in theta whose size grows like max_k |1 - theta lambda_k|^(2T): the
iterate's sensitivity dw_T/dtheta = -T (I - theta H)^(T-1) H (w_0 - c) grows like r^T, and the
gradient g_T it is paired with grows like r^T too, r = max_k |1 - theta lambda_k|.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from .tasks import Quadratic

Array = jax.Array


def gd_trajectory(loss: Callable[[Array], Array], w0: Array, theta: Array, num_steps: int) -> Array:
    """Iterates w_0..w_T of gradient descent with learning rate ``theta`` (shape (T+1, n))."""

    def body(w, _):
        w_next = w - theta * jax.grad(loss)(w)
        return w_next, w

    last, ws = jax.lax.scan(body, w0, None, length=num_steps)
    return jnp.concatenate([ws, last[None]])


def lr_outer_grad_sum_of_products(loss: Callable[[Array], Array], w0: Array, theta: Array, num_steps: int) -> Array:
    """App. A's formula evaluated along the trajectory, with the Hessians H_j it names.

    The sum of products is accumulated by the recurrence d_{t+1} = (I - theta H_t) d_t - g_t,
    d_0 = 0, which yields d_T = -sum_i prod_{j>i} (I - theta H_j) g_i term by term.
    """
    ws = gd_trajectory(loss, w0, theta, num_steps)
    grads = jax.vmap(jax.grad(loss))(ws)
    hessians = jax.vmap(jax.hessian(loss))(ws[:-1])
    eye = jnp.eye(w0.size, dtype=w0.dtype)

    def body(d, gh):
        g, h = gh
        return (eye - theta * h) @ d - g, None

    d_T, _ = jax.lax.scan(body, jnp.zeros_like(w0), (grads[:-1], hessians))
    return grads[-1] @ d_T


def quadratic_lr_outer_grad(task: Quadratic, theta: Array, num_steps: int) -> Array:
    """The closed form of d l(w_T)/d theta on a quadratic (module docstring)."""
    lam, q = jnp.linalg.eigh(task.hessian)
    z = q.T @ (task.w0 - task.center)
    return -num_steps * jnp.sum(lam**2 * (1.0 - theta * lam) ** (2 * num_steps - 1) * z**2)


def quadratic_spectral_radius(task: Quadratic, theta: Array) -> Array:
    """r(theta) = max_k |1 - theta lambda_k|: the per-step growth factor of the iterates."""
    return jnp.max(jnp.abs(1.0 - theta * jnp.linalg.eigvalsh(task.hessian)))
