"""Roughness of outer-loss landscapes (Metz et al. 2019 Fig. 2c, 2e, 2f).

Measured on a loss sampled on a fine 1D grid of outer-parameters: the largest jump between
neighbouring grid points, how many jumps exceed a threshold, total variation, and the share of
energy at high spatial frequencies. For Fig. 2d-f: trajectories of inner training across nearby
outer-parameters (random 2D projection, spread per step), and 1D/2D slices of an outer-loss along
directions in outer-parameter space.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def jumps(values: np.ndarray) -> np.ndarray:
    """|L(theta_{k+1}) - L(theta_k)| along the last axis."""
    return np.abs(np.diff(np.asarray(values, dtype=np.float64), axis=-1))


def max_jump(values: np.ndarray) -> np.ndarray:
    return jumps(values).max(axis=-1)


def count_jumps(values: np.ndarray, threshold: float) -> np.ndarray:
    """Number of neighbouring pairs whose values differ by more than ``threshold``."""
    return (jumps(values) > threshold).sum(axis=-1)


def total_variation(values: np.ndarray) -> np.ndarray:
    return jumps(values).sum(axis=-1)


def high_frequency_energy(values: np.ndarray, cutoff: float = 0.25) -> np.ndarray:
    """Share of the (mean-removed) spectrum's energy above ``cutoff`` x the Nyquist frequency."""
    v = np.asarray(values, dtype=np.float64)
    v = v - v.mean(axis=-1, keepdims=True)
    power = np.abs(np.fft.rfft(v, axis=-1)) ** 2
    k0 = int(np.ceil(cutoff * (power.shape[-1] - 1)))
    return power[..., k0:].sum(axis=-1) / np.maximum(power.sum(axis=-1), 1e-300)


def near_jumps(values: np.ndarray, threshold: float, window: int = 0) -> np.ndarray:
    """Mask of grid points within ``window`` points of either end of a jump larger than ``threshold`` (1D)."""
    big = np.flatnonzero(jumps(values) > threshold)
    n = np.shape(values)[-1]
    mask = np.zeros(n, bool)
    for k in big:
        mask[max(0, k - window): min(n, k + 2 + window)] = True
    return mask


def refine_jump(
    f: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], lo: float, hi: float, levels: int = 3, points: int = 201
) -> dict[str, float]:
    """Zoom into a jump of L between ``lo`` and ``hi``: ``levels`` times, evaluate ``f(thetas) -> (L, dL/dtheta)``
    on ``points`` points and keep the neighbouring pair with the largest jump.  A jump that keeps its size at an
    interval of width ~(hi - lo) / points**levels is a near-discontinuity; one that shrinks was a steep but
    resolved slope.  Returns the last interval's width and jump and the largest |dL/dtheta| met on the way."""
    peak = 0.0
    for _ in range(levels):
        grid = np.linspace(lo, hi, points)
        loss, grad = (np.asarray(a, np.float64) for a in f(grid))
        peak = max(peak, float(np.abs(grad).max()))
        i = int(np.argmax(jumps(loss)))
        lo, hi, jump = float(grid[i]), float(grid[i + 1]), float(jumps(loss)[i])
    return {"width": hi - lo, "jump": jump, "max_abs_grad": peak}


def gradient_explained_fraction(
    thetas: np.ndarray, values: np.ndarray, grads: np.ndarray, threshold: float
) -> float | None:
    """How much of the loss change across jumps larger than ``threshold`` the outer-gradient
    accounts for: sum |trapezoid integral of grad| / sum |jump| over those neighbouring pairs.

    Near 1 when the gradient sees the jumps (a smooth landscape); near 0 when the loss jumps
    between grid points while the gradient at the grid points is flat (Metz et al. 2019 Fig. 2c).
    ``None`` when there is no such jump.
    """
    t, v, g = (np.asarray(a, np.float64) for a in (thetas, values, grads))
    big = jumps(v) > threshold
    if not big.any():
        return None
    integral = 0.5 * (g[1:] + g[:-1]) * np.diff(t)
    return float(np.abs(integral[big]).sum() / jumps(v)[big].sum())


def sweep_summary(
    thetas: np.ndarray, values: np.ndarray, grads: np.ndarray, threshold: float, window: int = 0
) -> dict:
    """The numbers notebook 01 reports for one outer-loss sweep L(theta) with gradients dL/dtheta:
    largest jump, jumps above ``threshold``, gradient magnitudes within ``window`` grid points of them
    and elsewhere, the share of near-zero gradients, and :func:`gradient_explained_fraction`."""
    L, g = np.asarray(values, np.float64), np.abs(np.asarray(grads, np.float64))
    near = near_jumps(L, threshold, window)
    return {
        "max_jump": float(max_jump(L)),
        "n_jumps": int(count_jumps(L, threshold)),
        "median_abs_grad": float(np.median(g)),
        "max_abs_grad": float(g.max()),
        "max_abs_grad_near_jumps": float(g[near].max(initial=0.0)),  # 0 when there is no jump
        "max_abs_grad_elsewhere": float(g[~near].max(initial=0.0)),
        "median_abs_grad_elsewhere": float(np.median(g[~near])) if (~near).any() else None,
        "frac_abs_grad_below_1e-3": float(np.mean(g < 1e-3)),
        "grad_explained_fraction": gradient_explained_fraction(thetas, L, grads, threshold),
    }


# ---------------------------------------------------------------------------------------------
# Trajectories across nearby outer-parameters and slices of L(theta) (Metz et al. 2019 Fig. 2d-f)

def trajectories(opt_fn, task, thetas, num_steps: int, key) -> tuple[jax.Array, object]:
    """Forward-only inner training for every outer-parameter in ``thetas`` with the same ``key``
    (all randomness fixed, Metz et al. 2019 Fig. 2d): losses (n, num_steps) and parameter
    trajectories (a pytree with leaves (n, num_steps + 1, ...), initial point included)."""
    from . import unroll

    def one(theta):
        res, _ = unroll.run(opt_fn, theta, task, key, num_steps, record_params=True)
        return res.losses, res.params

    return jax.jit(jax.vmap(one))(jnp.asarray(thetas))


def flatten_trajectories(params, batch_dims: int = 2) -> np.ndarray:
    """Concatenate every leaf's trailing axes: a pytree of (n, T+1, ...) leaves -> (n, T+1, D)."""
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]
    return np.concatenate([x.reshape(*x.shape[:batch_dims], -1) for x in leaves], axis=-1)


def random_projection(x: np.ndarray, dim: int = 2, seed: int = 0) -> np.ndarray:
    """Project the last axis of ``x`` (D) onto ``dim`` random Gaussian directions scaled by
    1/sqrt(dim), so that squared distances are preserved on average (Johnson-Lindenstrauss;
    Metz et al. 2019 Fig. 2d)."""
    x = np.asarray(x, np.float64)
    proj = np.random.default_rng(seed).normal(size=(x.shape[-1], dim)) / np.sqrt(dim)
    return x @ proj


def spread_per_step(x: np.ndarray) -> np.ndarray:
    """Spread across runs at every step: RMS distance to the across-run mean. ``x``: (n, T+1, D)
    -> (T+1,). Zero at step 0 when all runs share their initialisation."""
    x = np.asarray(x, np.float64)
    return np.sqrt(((x - x.mean(axis=0, keepdims=True)) ** 2).sum(-1).mean(0))


def relative_spread_per_step(x: np.ndarray) -> np.ndarray:
    """:func:`spread_per_step` divided by the RMS distance travelled from step 0 (NaN at step 0).
    Stays about the relative spread of the outer-parameters while runs respond linearly to them,
    and grows when nearby runs diverge."""
    x = np.asarray(x, np.float64)
    travelled = np.sqrt(((x - x[:, :1]) ** 2).sum(-1).mean(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(travelled > 0, spread_per_step(x) / np.where(travelled > 0, travelled, 1.0), np.nan)


def tree_norm(tree) -> jax.Array:
    """Euclidean norm of all leaves of a pytree together."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def unit_direction(tree):
    """``tree`` scaled to unit Euclidean norm (a slice direction); fails on a zero direction."""
    norm = float(tree_norm(tree))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError(f"cannot normalise a direction of norm {norm}; use a nonzero, finite direction")
    return jax.tree.map(lambda x: x / norm, tree)


def random_direction(key, like, orthogonal_to=None):
    """A Gaussian unit direction shaped like the pytree ``like``, made orthogonal to the unit
    direction ``orthogonal_to`` when given (the second axis of a 2D slice)."""
    leaves, treedef = jax.tree.flatten(like)
    keys = jax.random.split(key, len(leaves))
    d = jax.tree.unflatten(treedef, [jax.random.normal(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)])
    if orthogonal_to is not None:
        u = unit_direction(orthogonal_to)
        dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(d), jax.tree.leaves(u)))
        d = jax.tree.map(lambda a, b: a - dot * b, d, u)
    return unit_direction(d)


def slice_values(f, theta, directions, coords, batch_size: int | None = None) -> jax.Array:
    """f(theta + sum_i c_i d_i) for every row c of ``coords`` (shape (n, len(directions))),
    evaluated in batches of ``batch_size`` points (``lax.map``; None: all at once, vmapped).
    Compiled once per ``f`` (a static argument) and shape: reuse one ``f`` across thetas."""
    coords = jnp.atleast_2d(jnp.asarray(coords))
    if coords.shape[-1] != len(directions):
        raise ValueError(f"coords have {coords.shape[-1]} columns for {len(directions)} directions")
    return _slice_values(f, theta, list(directions), coords, int(batch_size or coords.shape[0]))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _slice_values(f, theta, directions, coords, batch_size):
    def at(c):
        return f(jax.tree.map(lambda t, *ds: t + sum(ci * di for ci, di in zip(c, ds)), theta, *directions))

    return jax.lax.map(at, coords, batch_size=batch_size)


def slice_1d(f, theta, direction, alphas, batch_size: int | None = None) -> np.ndarray:
    """1D slice: f(theta + alpha d) for every alpha (Metz et al. 2019 Fig. 2e)."""
    return np.asarray(slice_values(f, theta, [direction], jnp.asarray(alphas)[:, None], batch_size))


def slice_2d(f, theta, d1, d2, alphas, betas, batch_size: int | None = None) -> np.ndarray:
    """2D slice: f(theta + alpha d1 + beta d2), shape (len(alphas), len(betas)) (Fig. 2f)."""
    a, b = np.meshgrid(np.asarray(alphas), np.asarray(betas), indexing="ij")
    vals = slice_values(f, theta, [d1, d2], np.stack([a.ravel(), b.ravel()], -1), batch_size)
    return np.asarray(vals).reshape(a.shape)


def normalized_total_variation(values: np.ndarray) -> np.ndarray:
    """Total variation over the range (max - min) along the last axis: 1 for a monotone slice,
    about 2k+1 for a slice with k interior extrema; independent of the loss scale."""
    v = np.asarray(values, np.float64)
    rng = np.ptp(v, axis=-1)
    return total_variation(v) / np.where(rng > 0, rng, 1.0)


def roughness_2d(values: np.ndarray, cutoff: float = 0.25) -> dict[str, float]:
    """Roughness of a 2D slice: :func:`normalized_total_variation` and
    :func:`high_frequency_energy` of every row and every column, averaged."""
    v = np.asarray(values, np.float64)
    lines = lambda fn: float(np.mean(np.concatenate([fn(v), fn(v.T)])))
    return {
        "normalized_total_variation": lines(normalized_total_variation),
        "high_frequency_energy": lines(lambda x: high_frequency_energy(x, cutoff)),
    }


def outer_loss_fn(learned_opt, task, num_steps: int, key, objective: str = "valid"):
    """theta -> L(theta): the mean inner loss over an unroll of ``num_steps`` steps from scratch
    with all randomness fixed by ``key`` (Metz et al. 2019 sec. 2.2: L_train on the next training
    batch, or L_valid on validation batches), through :class:`lopt.truncation.TruncatedTraining`."""
    from .tasks import SingleTask
    from .truncation import TruncatedTraining

    tt = TruncatedTraining(learned_opt, SingleTask(task), horizon=num_steps, objective=objective)
    return lambda theta: tt.unroll_one(theta, tt.fresh(learned_opt.opt_fn(theta), key), key, num_steps).loss


def mlp_normalized_sgd_theta(learned_opt, learning_rate: float, noise: float = 0.0, key=None) -> dict:
    """Weights of :class:`lopt.learned.MLPOptimizer` that implement normalised gradient descent,
    update = -learning_rate * g / rms(g) (two hidden ReLU units read +g and -g), plus ``noise``
    times a random initialisation (``learned_opt.init(key)``; the readout noise is scaled like the
    signal). A learned optimizer near a sensible one, whose outer-loss slices are informative."""
    theta = learned_opt.init(key if key is not None else jax.random.PRNGKey(0))
    if learned_opt.hidden < 2:
        raise ValueError(f"needs hidden >= 2 units, got hidden={learned_opt.hidden}")
    a = learning_rate / learned_opt.step_mult
    w1 = jnp.zeros_like(theta["w1"]).at[0, 0].set(1.0).at[0, 1].set(-1.0)
    w2 = jnp.zeros_like(theta["w2"]).at[0, 0].set(-a).at[1, 0].set(a)
    return {"w1": w1 + noise * theta["w1"], "b1": noise * theta["b1"],
            "w2": w2 + noise * a * theta["w2"], "b2": noise * theta["b2"]}
