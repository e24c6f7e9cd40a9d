"""The modes of a recurrent optimizer read as momentum (Maheswaranathan et al. 2021 sec. 4.1, App. B, Fig. 3, 7).

Linearised at the fixed point its states converge to (:func:`lopt.recurrent.convergence`), a component-wise
recurrent optimizer is aggregated momentum: each eigenmode j has a timescale beta_j and a learning rate
(:func:`mode_hyperparameters`). App. B finds, early in meta-training on linear regression, an optimizer whose
slowest mode alone is momentum with the tuned (and the theoretically optimal, :func:`heavy_ball_optimum`)
hyperparameters, separated from the bulk of the spectrum (:func:`separation`), and whose single-mode reduction
(:func:`reduced_optimizer`) trains as well as the full GRU. :func:`momentum_fit` measures all of it for one optimizer;
:func:`along_direction` tells a state direction that offsets the update, as momentum's velocity does, from one that
changes its slope (Fig. 3 middle row).

Sign convention (:mod:`lopt.recurrent`): a mode's learning rate is positive when it descends.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .optimizers import Optimizer
from .recurrent import (Cell, Convergence, Modes, Readout, as_optimizer, convergence, effective_learning_rate,
                        loss_curves, update_function)

Array = jax.Array


def mode_hyperparameters(m: Modes, j: int = 0) -> tuple[float, float]:
    """(momentum timescale |beta_j|, learning rate) of mode j; a complex mode counts with its conjugate
    (learning rate 2 Re alpha_j)."""
    pair = abs(m.eigenvalues[j].imag) > 1e-12
    return float(abs(m.eigenvalues[j])), float((2.0 if pair else 1.0) * m.learning_rates[j].real)


def heavy_ball_optimum(lmin: float, lmax: float) -> tuple[float, float]:
    """Optimal heavy-ball (learning rate, momentum) for a quadratic with Hessian spectrum in [lmin, lmax]
    (Polyak 1964): alpha* = 4 / (sqrt(lmin) + sqrt(lmax))^2, beta* = ((sqrt(lmax) - sqrt(lmin)) /
    (sqrt(lmax) + sqrt(lmin)))^2."""
    a, b = np.sqrt(lmin), np.sqrt(lmax)
    return float(4.0 / (a + b) ** 2), float(((b - a) / (b + a)) ** 2)


def separation(magnitudes: Any, bulk: int = 8, tol: float = 1e-6) -> float:
    """How far the slowest mode stands out from the bulk (Fig. 7a): the gap between the largest and the next
    distinct eigenvalue magnitude (a complex pair counts once) over the largest gap among the next ``bulk``
    distinct magnitudes.  Large: one mode separated; ~1: the slowest mode is just the edge of the bulk."""
    mags = np.sort(np.asarray(magnitudes, np.float64))[::-1]
    distinct = mags[np.concatenate([[True], np.diff(mags) < -tol])]
    gaps = -np.diff(distinct[: bulk + 2])
    if len(gaps) < 2:
        return float("inf")
    return float(gaps[0] / max(gaps[1:].max(), tol))


def along_direction(cell: Cell, readout: Readout, point: Any, direction: Any, shifts: Any, grads: Any) -> dict:
    """Update functions at states ``point + s * direction`` (unit direction) for each shift s (sec. 4.1, Fig. 3
    middle row): ``updates`` (shift, gradient), ``offsets`` (update at g = 0), ``eff_lr`` per shift, and the two
    numbers that say whether the direction acts like momentum's velocity: ``offset_range`` (ptp of the offsets)
    and ``slope_rel_range`` (ptp of the effective learning rate over its mean magnitude), ``monotone`` (offsets
    strictly monotone in s) and ``momentum_likeness`` = offset_range / slope_rel_range (a pure offset: large)."""
    e = np.asarray(direction, np.float64)
    e = e / np.linalg.norm(e)
    states = jnp.asarray(np.asarray(point)[None] + np.asarray(shifts)[:, None] * e[None], jnp.float32)
    grads = jnp.asarray(grads, jnp.float32)
    updates = np.stack([np.asarray(update_function(cell, readout, h, grads)) for h in states])
    offsets = np.stack([float(update_function(cell, readout, h, jnp.zeros((1,)))[0]) for h in states])
    eff = np.asarray(effective_learning_rate(cell, readout, states))
    d = np.diff(offsets)
    out = dict(states=states, grads=np.asarray(grads), updates=updates, offsets=offsets, eff_lr=eff,
               offset_range=float(np.ptp(offsets)), slope_rel_range=float(np.ptp(eff) / np.mean(np.abs(eff))),
               monotone=bool(np.all(d > 0) or np.all(d < 0)))
    out["momentum_likeness"] = out["offset_range"] / max(out["slope_rel_range"], 1e-12)
    return out


def reduced_optimizer(m: Modes, readout: Readout, h0: Array, keep: Any = (0,)) -> Optimizer:
    """The linearised optimizer of App. B/C keeping only the modes ``keep`` (Fig. 7c): per coordinate
    v_j' = beta_j v_j + alpha_j (g - g*), update = r(h*) + sum_j outputs_j v_j', with v_j(0) the projection
    of h0 - h* on the left eigenvector. Complex modes are paired with their conjugates (2 Re)."""
    keep = np.atleast_1d(np.asarray(keep))
    lam, a, c = (jnp.asarray(x[keep]) for x in (m.eigenvalues, m.inputs, m.outputs))
    weight = jnp.where(jnp.abs(jnp.imag(lam)) > 1e-12, 2.0, 1.0)
    v0 = jnp.asarray(m.left[keep] @ (np.asarray(h0, np.float64) - m.point))
    offset = float(readout(jnp.asarray(m.point, jnp.asarray(h0).dtype)))

    def init(params):
        return jax.tree.map(lambda p: jnp.broadcast_to(v0, (*jnp.shape(p), len(keep))), params)

    def update(grads, state, params=None):
        v = jax.tree.map(lambda s, g: lam * s + a * (g[..., None] - m.g), state, grads)
        out = lambda s, g: (offset + jnp.sum(weight * jnp.real(c * s), axis=-1)).astype(jnp.result_type(g))
        return jax.tree.map(out, v, grads), v

    return optax.GradientTransformation(init, update)


class MomentumFit(NamedTuple):
    """:func:`momentum_fit` of one recurrent optimizer."""

    convergence: Convergence  # its runs, the fixed point they converge to and the modes there
    slow_beta: float  # timescale |beta| of the slowest mode
    slow_lr: float  # and its learning rate
    separation: float  # of the slowest mode from the bulk (Fig. 7a)
    curves: dict  # training-loss curves (problems, steps) of "full GRU", "slow mode only", "full linearisation"
    floor: np.ndarray  # (problems, 1): the lowest loss any of them reaches on each problem

    def excess(self, name: str) -> np.ndarray:
        """Loss above each problem's floor (at least 1e-12, for log plots), per problem and step (Fig. 7c)."""
        return np.maximum(self.curves[name] - self.floor, 1e-12)

    def excess_over_full(self, name: str) -> float:
        """Mean excess loss of ``name`` relative to the full GRU's: 1 when the reduction trains as well."""
        return float(self.excess(name).mean() / self.excess("full GRU").mean())


def momentum_fit(cell: Cell, readout: Readout, h0: Array, fam: Any, key: Array, eval_key: Array, num_runs: int,
                 num_steps: int, eval_runs: int, num_seeds: int = 32, tol: float = 1e-8,
                 fp_steps: int = 2000) -> MomentumFit:
    """App. B for one recurrent optimizer: linearise it where ``num_runs`` runs of ``num_steps`` on problems of ``fam``
    (``key``) converge (:func:`lopt.recurrent.convergence`, fixed-point search settings ``num_seeds``, ``tol``,
    ``fp_steps``); the slowest mode's (|beta|, learning rate) and separation; training curves on ``eval_runs``
    problems (``eval_key``) of the full optimizer, its single-mode reduction and its full linearisation."""
    conv = convergence(cell, readout, h0, fam, key, num_runs, num_steps, num_seeds=num_seeds, tol=tol, fp_steps=fp_steps)
    m = conv.modes
    opts = {"full GRU": as_optimizer(cell, readout, h0),
            "slow mode only": reduced_optimizer(m, readout, h0, keep=0),
            "full linearisation": reduced_optimizer(m, readout, h0, keep=np.flatnonzero(m.eigenvalues.imag >= 0))}
    curves = {n: np.asarray(loss_curves(o, fam, eval_key, eval_runs, num_steps), np.float64) for n, o in opts.items()}
    floor = np.min([c.min(1) for c in curves.values()], axis=0)[:, None]
    beta, lr = mode_hyperparameters(m, 0)
    return MomentumFit(conv, beta, lr, separation(np.abs(m.eigenvalues)), curves, floor)
