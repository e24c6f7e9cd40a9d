"""Ablations of the learned optimizer's outer-training (Metz et al. 2019 sec. 4.5, Fig. 8, App. H).

The paper retrains its MLP optimizer with one ingredient removed at a time, several random seeds
each, at the same outer-training budget: only the reparameterization gradient ("Gradients"), only
ES, fixed truncation lengths (10, 100, 1000 steps of a 10k-step run) instead of the curriculum at
the same total number of inner steps, no momentum inputs, no iteration input. :data:`ABLATIONS`
names them (plus PES, beyond the paper); :func:`setup` turns a name into the estimator and the
optimizer it trains.

:func:`train_seeds` outer-trains several seeds of one configuration, one after the other through
:func:`lopt.outer.train` (one compiled outer step per configuration, shared by its seeds), pausing
every ``every`` outer steps to score them (the learning curves of App. H). Seeds are not vmapped: on
2 CPU cores a vmapped outer step over 3 seeds took 2.9x one seed's time at a fixed truncation (no
gain), and with the curriculum's masked variable lengths vmap turns the skipped steps' branches
into selects that compute every step (3.9x slower for a single seed).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import estimators, selection, truncation
from .learned import MLPOptimizer
from .tasks import TaskFamily

Array = jax.Array
Theta = Any

# name -> (estimator, truncation: "curriculum" or a fraction of the horizon, MLPOptimizer overrides)
ABLATIONS: dict[str, tuple[str, str | float, dict[str, bool]]] = {
    "merged (paper)": ("Merged", "curriculum", {}),
    "gradients only": ("Reparameterization", "curriculum", {}),
    "ES only": ("ES", "curriculum", {}),
    "PES": ("PES", "curriculum", {}),
    "fixed short": ("Merged", "short", {}),
    "fixed medium": ("Merged", "medium", {}),
    "fixed long": ("Merged", "long", {}),
    "no momentum": ("Merged", "curriculum", {"use_momentum": False}),
    "no time": ("Merged", "curriculum", {"use_time": False}),
}
ESTIMATORS = {"Merged": estimators.Merged, "Reparameterization": estimators.Reparameterization,
              "ES": estimators.ES, "PES": estimators.PES}


class Setup(NamedTuple):
    """One configuration: the optimizer it trains, its estimator and its number of outer steps."""

    learned_opt: MLPOptimizer
    estimator: estimators.TruncatedEstimator
    outer_steps: int
    length: int | None  # the fixed truncation length, None for the curriculum


def fixed_outer_steps(inner_steps: float, length: int) -> int:
    """Outer steps of a fixed ``length`` that run ``inner_steps`` inner steps in all (per particle): the
    curriculum's total, the sum of the active lengths of its outer steps (sec. 4.5)."""
    if int(length) < 1:
        raise ValueError(f"a fixed truncation length must be >= 1, got {length}")
    return max(1, int(round(float(inner_steps) / int(length))))


def setup(name: str, family: TaskFamily, horizon: int, schedule: truncation.Schedule, max_length: int,
          num_pairs: int, outer_steps: int, fixed_lengths: dict[str, int], inner_steps: float,
          mlp_hidden: int = 32, objective: str = "train") -> Setup:
    """The optimizer, estimator and outer steps of ablation ``name`` (:data:`ABLATIONS`). The curriculum
    configurations run ``outer_steps`` steps of ``schedule`` (compiled once at ``max_length``); a fixed
    truncation ``fixed_lengths[kind]`` runs as many outer steps as give ``inner_steps`` inner steps (the
    curriculum's total, measured on its run)."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; allowed values: {', '.join(ABLATIONS)}")
    est_name, trunc, overrides = ABLATIONS[name]
    lopt = MLPOptimizer(hidden=int(mlp_hidden), **overrides)
    kw: dict[str, Any] = dict(num_tasks=int(num_pairs), objective=objective)
    if trunc == "curriculum":
        est = ESTIMATORS[est_name](lopt, family, int(horizon), schedule, max_length=int(max_length), **kw)
        return Setup(lopt, est, int(outer_steps), None)
    if trunc not in fixed_lengths:
        raise ValueError(f"fixed_lengths needs a length for {trunc!r}; got {sorted(fixed_lengths)}")
    length = int(fixed_lengths[trunc])
    if not 1 <= length <= int(horizon):
        raise ValueError(f"fixed length {trunc} = {length} must be in [1, horizon = {horizon}]")
    est = ESTIMATORS[est_name](lopt, family, int(horizon), length, **kw)
    return Setup(lopt, est, fixed_outer_steps(inner_steps, length), length)


class SeedRuns(NamedTuple):
    """Outer-training of several seeds: ``theta`` (leading seed axis), the history per seed
    (seeds, steps), and the pause scores (seeds, pauses) at outer steps ``pause_steps``."""

    theta: Theta
    history: dict[str, np.ndarray]
    pause_steps: np.ndarray
    scores: np.ndarray
    initial: np.ndarray  # (seeds,) the score of the starting theta
    skipped: np.ndarray  # (seeds,) outer steps skipped (non-finite estimates)


def train_seeds(estimator: estimators.TruncatedEstimator, thetas: Sequence[Theta], outer_opt: Any, num_steps: int,
                keys: Array, *, every: int, score: Callable[[Theta], float], desc: str = "outer-training",
                progress: bool = True) -> SeedRuns:
    """Outer-train each seed's starting theta (``keys``: one per seed) for ``num_steps`` steps with
    :func:`lopt.selection.train_and_select`, scored by ``score(theta)`` at the start, every ``every``
    steps and at the end (module docstring). The seeds share the estimator, so its outer step
    compiles once."""
    if len(thetas) != keys.shape[0]:
        raise ValueError(f"{keys.shape[0]} keys for {len(thetas)} seeds: pass one key per seed")
    if len(thetas) < 1:
        raise ValueError("train_seeds needs at least one seed")
    initial, sels = [], []
    for i, theta in enumerate(thetas):
        initial.append(float(score(theta)))
        sels.append(selection.train_and_select(estimator, theta, outer_opt, int(num_steps), keys[i], every=int(every),
                                            score=score, desc=f"{desc}, seed {i}", progress=progress))
    stack = lambda *xs: jnp.stack(xs)
    names = sels[0].result.history.keys()
    return SeedRuns(jax.tree.map(stack, *[s.result.theta for s in sels]),
                    {k: np.stack([s.result.history[k] for s in sels]) for k in names},
                    sels[0].steps, np.stack([s.scores for s in sels]), np.asarray(initial),
                    np.asarray([s.result.num_skipped for s in sels]))


def late_score(runs: SeedRuns, fraction: float = 0.25) -> np.ndarray:
    """Per seed, the mean score over the pauses in the last ``fraction`` of outer-training (Fig. 8: the
    outer-loss averaged over a late window of training)."""
    last = runs.pause_steps[-1]
    window = runs.pause_steps >= (1 - float(fraction)) * last
    return runs.scores[:, window].mean(axis=1)
