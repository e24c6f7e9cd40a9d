"""Tuning baselines and evaluating optimizers on held-out problems (Maheswaranathan et al. 2021 C.3, Fig. 9-12).

The paper tunes each baseline optimizer per task "by randomly sampling 2500 hyperparameter combinations
from a grid" and keeps the one with the lowest meta-objective (the mean training loss over the unroll,
the objective the learned optimizers are trained on); "we ensured that the best parameters did not occur
along the edge of any grid". The final comparison (Fig. 9) is the mean meta-objective over 64 test
problems with its standard error.

- :func:`axis` builds one grid axis (log, linear, or log-spaced in ``1 - value`` for decay rates);
- :func:`random_search` samples combinations from the grid without replacement and evaluates them all
  at once, ``vmap``-ed over hyperparameter values (a hand-designed optimizer is a
  :class:`~lopt.optimizers.Hyperparameters` learned optimizer whose theta is its hyperparameters), on
  the same problems for every combination;
- :func:`on_edge` says which axes the best combination sits on an edge of;
- :func:`evaluate` gives per-problem meta-objectives of any learned optimizer on held-out problems and
  :func:`mean_and_se` their mean and standard error.

Every meta-objective here is :func:`lopt.outer.evaluate`'s: the mean over a whole inner run of the loss
after each update, l(w_1), ..., l(w_T), the quantity :class:`lopt.estimators.FullUnroll` differentiates.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import outer
from .optimizers import Hyperparameters, LearnedOptimizer
from .tasks import LinearRegressionFamily, TaskFamily
from .truncation import TruncatedTraining

Array = jax.Array
SCALES = ("log", "linear", "log1m")


def axis(lo: float, hi: float, num: int, scale: str = "log") -> np.ndarray:
    """``num`` grid values from ``lo`` to ``hi``: log-spaced (``"log"``), evenly spaced (``"linear"``) or
    with ``1 - value`` log-spaced (``"log1m"``, for momentum and decay rates close to 1)."""
    if scale not in SCALES:
        raise ValueError(f"unknown grid scale {scale!r}; allowed values: {', '.join(SCALES)}")
    if int(num) < 2:
        raise ValueError(f"a grid axis needs num >= 2 values, got {num}")
    if scale == "log":
        return np.geomspace(lo, hi, int(num))
    if scale == "linear":
        return np.linspace(lo, hi, int(num))
    return 1.0 - np.geomspace(1.0 - lo, 1.0 - hi, int(num))


def axes_from_spec(spec: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Grid axes from a ``params.yaml`` spec ``{name: {lo, hi, num, scale}}``."""
    return {name: axis(s["lo"], s["hi"], s["num"], s.get("scale", "log")) for name, s in spec.items()}


class SearchResult(NamedTuple):
    """A random search over a grid (:func:`random_search`)."""

    optimizer: str
    axes: dict[str, np.ndarray]  # the grid, one axis per hyperparameter
    index: np.ndarray  # (num_samples, num_axes) grid indices of the evaluated combinations
    loss: np.ndarray  # (num_samples,) meta-objective, mean over problems; inf where any run diverged
    best_index: tuple[int, ...]  # grid indices of the best combination
    best: dict[str, float]  # its hyperparameters
    best_loss: float

    def grid_loss(self) -> np.ndarray:
        """The losses on the full grid (shape of the axes), NaN where no combination was sampled."""
        out = np.full(tuple(len(a) for a in self.axes.values()), np.nan)
        out[tuple(self.index.T)] = self.loss
        return out

    def projection(self, x: str, y: str) -> np.ndarray:
        """Best loss over the other axes for each (x, y) pair, shape (len(x axis), len(y axis));
        NaN where nothing was sampled (the heatmaps of Fig. 10-12)."""
        names = list(self.axes)
        grid = self.grid_loss()
        rest = tuple(i for i, n in enumerate(names) if n not in (x, y))
        with warnings.catch_warnings():  # an all-NaN slice (nothing sampled) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            proj = np.nanmin(grid, axis=rest) if rest else grid
        return proj if names.index(x) < names.index(y) else proj.T


def sample_grid(key: Array, shape: Sequence[int], num_samples: int) -> np.ndarray:
    """``num_samples`` distinct grid indices drawn uniformly without replacement (the whole grid when
    it has at most ``num_samples`` points), as an array (num_samples, len(shape))."""
    size = int(np.prod(shape))
    flat = np.arange(size) if num_samples >= size else np.asarray(
        jax.random.choice(key, size, (int(num_samples),), replace=False))
    return np.stack(np.unravel_index(np.sort(flat), tuple(shape)), axis=1)


def random_search(
    optimizer: str,
    axes: Mapping[str, Sequence[float]],
    family: TaskFamily,
    num_steps: int,
    num_tasks: int,
    num_samples: int,
    key: Array,
    fixed: Mapping[str, float] | None = None,
) -> SearchResult:
    """Random search over a grid of ``optimizer``'s hyperparameters (C.3): ``num_samples`` combinations,
    each scored by the mean meta-objective over the same ``num_tasks`` problems of ``num_steps`` steps,
    all combinations evaluated in one ``vmap``. A combination with any non-finite run scores inf."""
    axes = {k: np.asarray(v, np.float64) for k, v in axes.items()}
    k_grid, k_eval = jax.random.split(key)
    index = sample_grid(k_grid, [len(a) for a in axes.values()], num_samples)
    values = {k: jnp.asarray(a[index[:, i]], jnp.float32) for i, (k, a) in enumerate(axes.items())}
    hp = Hyperparameters(optimizer, {k: 0.0 for k in axes}, dict(fixed or {}))
    per_run = np.asarray(outer.evaluate(hp, family, values, num_steps, num_tasks, k_eval, batched_theta=True))
    loss = np.where(np.all(np.isfinite(per_run), axis=1), per_run.mean(axis=1), np.inf)
    if not np.any(np.isfinite(loss)):
        raise ValueError(f"every {optimizer} combination diverged: move the grid toward smaller learning rates")
    b = int(np.argmin(loss))
    best_index = tuple(int(i) for i in index[b])
    best = {k: float(a[i]) for (k, a), i in zip(axes.items(), best_index)}
    return SearchResult(optimizer, axes, index, loss, best_index, best, float(loss[b]))


def on_edge(result: SearchResult) -> dict[str, bool]:
    """For each axis, whether the best combination sits on its first or last grid value."""
    return {k: i in (0, len(a) - 1) for (k, a), i in zip(result.axes.items(), result.best_index)}


def curve_fn(learned_opt: LearnedOptimizer, family: TaskFamily, num_steps: int, num_tasks: int,
             objective: str = "train") -> Callable[[Any, Array], Array]:
    """A jitted ``(theta, key) -> (num_tasks, num_steps)`` training curves of :func:`curves` (with ``objective``
    "valid": the validation-minibatch loss after each update), compiled once (for scoring theta repeatedly
    during meta-training)."""
    training = TruncatedTraining(learned_opt, family, int(num_steps), objective)

    @jax.jit
    def run(theta: Any, key: Array) -> Array:
        return training.unroll(theta, training.init(theta, key, int(num_tasks)), int(num_steps)).losses

    return run


def curves(
    learned_opt: LearnedOptimizer, theta: Any, family: TaskFamily, num_steps: int, num_tasks: int, key: Array
) -> np.ndarray:
    """Per-problem training curves l(w_1), ..., l(w_T) of ``learned_opt`` with ``theta`` on ``num_tasks``
    problems drawn from ``family`` with ``key`` (use a key never used for training or tuning for held-out
    problems; the problems depend on ``key`` only, so every optimizer sees the same ones). Shape
    (num_tasks, num_steps); their mean over steps is the meta-objective (:func:`evaluate`)."""
    return np.asarray(curve_fn(learned_opt, family, num_steps, num_tasks)(theta, key), np.float64)


def loss_floors(family: TaskFamily, num_tasks: int, key: Array) -> np.ndarray:
    """A lower bound of the loss of each problem :func:`curves` draws with the same ``key``, that no optimizer
    defines (the floor of Fig. 1's curves): the exact minimum of a linear regression (least squares), and 0 for
    the other tasks (Rosenbrock's minimum; a classification loss is nonnegative)."""
    if not isinstance(family, LinearRegressionFamily):
        return np.zeros(int(num_tasks))

    def one(run_key: Array) -> Array:  # the problem TruncatedTraining.fresh draws for this run key
        task = family.sample(jax.random.fold_in(run_key, 0))
        return task.loss(jnp.linalg.lstsq(task.A, task.b)[0])

    return np.asarray(jax.vmap(one)(jax.random.split(key, int(num_tasks))), np.float64)


def evaluate(
    learned_opt: LearnedOptimizer, theta: Any, family: TaskFamily, num_steps: int, num_tasks: int, key: Array
) -> np.ndarray:
    """Per-problem meta-objective, the mean of :func:`curves` over the unroll (equal to
    :func:`lopt.outer.evaluate`). Shape (num_tasks,)."""
    return curves(learned_opt, theta, family, num_steps, num_tasks, key).mean(axis=1)


def baseline(optimizer: str, hyperparameters: Mapping[str, float], fixed: Mapping[str, float] | None = None
             ) -> tuple[Hyperparameters, dict[str, Array]]:
    """A hand-designed optimizer with fixed (tuned) hyperparameters as a learned optimizer and its theta,
    for :func:`curves` and :func:`evaluate`."""
    hp = Hyperparameters(optimizer, dict(hyperparameters), dict(fixed or {}))
    return hp, hp.init()


def evaluate_baseline(
    optimizer: str, hyperparameters: Mapping[str, float], family: TaskFamily, num_steps: int, num_tasks: int,
    key: Array, fixed: Mapping[str, float] | None = None,
) -> np.ndarray:
    """:func:`evaluate` for a hand-designed optimizer with the given (tuned) hyperparameters."""
    return evaluate(*baseline(optimizer, hyperparameters, fixed), family, num_steps, num_tasks, key)


def plot_search(ax: Any, result: SearchResult, x: str, y: str, span: float = 10.0) -> Any:
    """Heatmap of a search (Fig. 10-12): log10 of the best meta-objective over the other axes for each
    (x, y) grid pair, colour clipped at ``span`` times the best (purple = best); white where nothing was
    sampled or every run diverged; a star at the best combination. Returns the image."""
    proj = result.projection(x, y)
    tiny = np.finfo(np.float64).tiny  # a loss of exactly 0 stays on the colour scale
    log = np.log10(np.maximum(np.where(np.isfinite(proj), proj, np.nan), tiny))
    lo = np.log10(max(result.best_loss, tiny))
    im = ax.imshow(log.T, origin="lower", aspect="auto", cmap="viridis", vmin=lo, vmax=lo + np.log10(span))
    names = list(result.axes)
    ax.plot(result.best_index[names.index(x)], result.best_index[names.index(y)], "*", color="w", ms=12, mec="k")
    for setter, name in ((ax.set_xticks, x), (ax.set_yticks, y)):
        ticks = np.linspace(0, len(result.axes[name]) - 1, 4).round().astype(int)
        setter(ticks, [f"{result.axes[name][i]:.3g}" for i in ticks])
    ax.set(xlabel=x, ylabel=y)
    return im


def mean_and_se(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean, std(ddof=1) / sqrt(n) (the error bars of Fig. 9)."""
    v = np.asarray(values, np.float64)
    if v.size < 2:
        raise ValueError(f"a standard error needs at least 2 values, got {v.size}")
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size))
