"""Per-sample outer-gradient estimates and how they are combined (Metz et al. 2019 sec. 3, eq. 1).

The perturbation estimators of :mod:`lopt.estimators` draw antithetic noise (:func:`tree_normal`),
compute one estimate per pair (:func:`per_sample`; :func:`stack2` and :func:`half` build and split
the pairs' runs) and average them; :func:`mean_and_variance` gives the mean and the
variance of that mean (pooled over the coordinates of theta, or per coordinate), and
:func:`inverse_variance_merge` is eq. (1), the inverse-variance weighting of two estimates.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Theta = Any


def tree_normal(key: Array, tree: Theta, n: int) -> Theta:
    """``n`` standard normal samples shaped like ``tree`` (leading axis ``n``)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten(
        [jax.random.normal(k, (n, *jnp.shape(x)), jnp.result_type(x)) for k, x in zip(keys, leaves)]
    )


def stack2(tree: Any) -> Any:
    """Each leaf twice along its leading axis ([x; x]): the runs of both particles of each pair."""
    return jax.tree.map(lambda x: jnp.concatenate([x, x]), tree)


def half(tree: Any, first: bool) -> Any:
    """The first or the second half of each leaf along its leading axis."""
    return jax.tree.map(lambda x: x[: x.shape[0] // 2] if first else x[x.shape[0] // 2 :], tree)


def rows(v: Array, x: Array) -> Array:
    """``v`` (one value per sample) shaped to broadcast against ``x`` (samples on the leading axis)."""
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


def per_sample(weights: Array, tree: Theta) -> Theta:
    """``weights[i] * tree[i]`` for every sample i."""
    return jax.tree.map(lambda x: rows(weights, x) * x, tree)


def mean_and_variance(samples: Theta, per_coordinate: bool = False) -> tuple[Theta, Any]:
    """The mean of per-sample estimates (leading axis) and the variance of that mean: the
    per-coordinate sample variance / n, averaged over all coordinates of theta (a scalar), or with
    ``per_coordinate`` not averaged (a pytree like the mean; :func:`pooled` averages it)."""
    n = jax.tree.leaves(samples)[0].shape[0]
    mean = jax.tree.map(lambda x: jnp.mean(x, axis=0), samples)
    var = jax.tree.map(lambda x: jnp.var(x, axis=0, ddof=1) / n, samples)
    return mean, (var if per_coordinate else pooled(var))


def pooled(tree: Any) -> Array:
    """The mean over every coordinate of a pytree."""
    leaves = jax.tree.leaves(tree)
    return sum(jnp.sum(x) for x in leaves) / sum(jnp.size(x) for x in leaves)


def all_finite(tree: Any) -> Array:
    """Whether every floating-point leaf of ``tree`` is finite."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def _weight(var_a: Array, var_b: Array, ok_a: Array, ok_b: Array) -> Array:
    """(1 / var_a) / (1 / var_a + 1 / var_b), elementwise; a side that is not ok gets weight 0."""
    ok_a, ok_b = ok_a & jnp.isfinite(var_a), ok_b & jnp.isfinite(var_b)
    tiny = jnp.finfo(jnp.result_type(var_a, var_b)).tiny
    w_a = jnp.where(ok_a, 1.0 / jnp.maximum(jnp.where(ok_a, var_a, 1.0), tiny), 0.0)
    w_b = jnp.where(ok_b, 1.0 / jnp.maximum(jnp.where(ok_b, var_b, 1.0), tiny), 0.0)
    total = w_a + w_b
    return jnp.where(total > 0, w_a / jnp.where(total > 0, total, 1.0), jnp.nan)


def inverse_variance_merge(g_a: Theta, var_a: Any, g_b: Theta, var_b: Any) -> tuple[Theta, Any]:
    """Eq. (1): (g_a / var_a + g_b / var_b) / (1 / var_a + 1 / var_b), and the weight of ``g_a``.

    ``var_a``, ``var_b`` are scalars (one weight for every coordinate) or pytrees shaped like the
    estimates (per-coordinate variances: the weight is then such a pytree too). An estimate that is
    not finite gets weight 0; so does a non-finite variance (at its coordinates)."""
    ok_a, ok_b = all_finite(g_a), all_finite(g_b)
    if not jax.tree_util.treedef_is_leaf(jax.tree.structure(var_a)):  # a pytree of per-coordinate variances
        weight = jax.tree.map(lambda va, vb: _weight(va, vb, ok_a, ok_b), var_a, var_b)
        weights = weight
    else:
        weight = _weight(var_a, var_b, ok_a, ok_b)
        weights = jax.tree.map(lambda _: weight, g_a)
    merged = jax.tree.map(lambda w, a, b: w * jnp.where(ok_a, a, 0.0) + (1.0 - w) * jnp.where(ok_b, b, 0.0),
                          weights, g_a, g_b)
    return merged, weight
