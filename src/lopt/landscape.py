"""Roughness of outer-loss landscapes (Metz et al. 2019 Fig. 2c, 2e, 2f).

Measured on a loss sampled on a fine 1D grid of outer-parameters: the largest jump between
neighbouring grid points, how many jumps exceed a threshold, total variation, and the share of
energy at high spatial frequencies.
"""

from __future__ import annotations

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


def near_jumps(values: np.ndarray, threshold: float) -> np.ndarray:
    """Mask of grid points that are one end of a jump larger than ``threshold`` (1D)."""
    big = jumps(values) > threshold
    mask = np.zeros(np.shape(values)[-1], bool)
    mask[:-1] |= big
    mask[1:] |= big
    return mask


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


def sweep_summary(thetas: np.ndarray, values: np.ndarray, grads: np.ndarray, threshold: float) -> dict:
    """The numbers notebook 01 reports for one outer-loss sweep L(theta) with gradients dL/dtheta:
    largest jump, jumps above ``threshold``, gradient magnitudes next to them and elsewhere, the
    share of near-zero gradients, and :func:`gradient_explained_fraction`."""
    L, g = np.asarray(values, np.float64), np.abs(np.asarray(grads, np.float64))
    near = near_jumps(L, threshold)
    return {
        "max_jump": float(max_jump(L)),
        "n_jumps": int(count_jumps(L, threshold)),
        "median_abs_grad": float(np.median(g)),
        "max_abs_grad": float(g.max()),
        "max_abs_grad_near_jumps": float(g[near].max(initial=0.0)),  # 0 when there is no jump
        "max_abs_grad_elsewhere": float(g[~near].max(initial=0.0)),
        "frac_abs_grad_below_1e-3": float(np.mean(g < 1e-3)),
        "grad_explained_fraction": gradient_explained_fraction(thetas, L, grads, threshold),
    }
