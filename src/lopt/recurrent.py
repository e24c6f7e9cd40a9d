"""Reverse-engineering recurrent optimizers (Maheswaranathan et al. 2021 sec. 3-4, App. B, C).

A component-wise recurrent optimizer is given by its state update and readout (eqs. 1-2)::

    h' = F(h, g),        x' = x + r(h')

``cell`` is F (h (hidden,), g scalar -> (hidden,)) and ``readout`` is r (h -> scalar update, output
scale included), for any such optimizer: the GRU of :mod:`lopt.learned.gru` (``gru_parts``), or a
hand-built linear system. The tools:

- :func:`optimize` runs the optimizer on a loss and records every coordinate's state (Fig. 3a, 4);
- :func:`trajectory` / :func:`autonomous`: states driven by a given gradient sequence / by g = 0 (Fig. 5);
- :func:`fixed_points`: minimise q(h) = 1/2 ||F(h, g*) - h||^2 from many seeds (Adam, then Levenberg-
  Marquardt polishing), keep points with q below a tolerance, de-duplicated; :func:`slow_points` keeps
  every minimum with its speed q (sec. 3.3); :func:`s_curve` does it for a range of constant gradients
  (Fig. 6);
- :func:`jacobians` and :func:`modes`: linearisation at a point (App. C, eq. 3) and its eigenmodes, each
  a momentum timescale (the eigenvalue beta_j) and a learning rate, the input weight projected on the
  left eigenvector times the readout projected on the right one (eq. 5, aggregated momentum);
- :func:`update_function` / :func:`effective_learning_rate`: the update versus the gradient at a state,
  and minus its slope at g = 0 (sec. 3.2, 4.3); :func:`linear_range`: where the update function stops
  being linear (soft clipping, App. A);
- :func:`pca` and :func:`total_variance` of state trajectories (Fig. 3a).

The modes read as momentum (reduced optimizers, the slow mode against tuned and optimal momentum, App. B) are
:mod:`lopt.momentum`'s.

Sign convention: a mode's learning rate is positive when it descends, so heavy-ball momentum
v' = beta v + g, x' = x - lr v' has one mode with timescale beta and learning rate lr.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .optimizers import Optimizer

Array = jax.Array
Cell = Callable[[Array, Array], Array]
Readout = Callable[[Array], Array]


def gru_parts(gru: Any, theta: Any) -> tuple[Cell, Readout, Array]:
    """(F, r, h0) of a :class:`lopt.learned.GRUOptimizer` with weights ``theta``."""
    theta = jax.tree.map(jnp.asarray, theta)
    return (lambda h, g: gru.cell(theta, h, g)), (lambda h: gru.readout(theta, h)), gru.initial_state(theta)


# --------------------------------------------------------------------------------------------- running


class Run(NamedTuple):
    """States (T+1, k, hidden) and parameters (T, k) of the k recorded coordinates, gradients (T, n) of all
    n coordinates, losses (T,)."""

    states: Array
    grads: Array
    params: Array
    losses: Array


def optimize(cell: Cell, readout: Readout, h0: Array, loss: Callable[[Array], Array], x0: Array, num_steps: int,
             coords: Any = None) -> Run:
    """Apply the recurrent optimizer to ``loss`` from the flat parameter vector ``x0``, recording the states
    of the coordinates ``coords`` (indices; all when None)."""
    f = jax.vmap(cell)
    idx = np.arange(x0.shape[0]) if coords is None else np.asarray(coords)

    def body(carry, _):
        x, h = carry
        value, g = jax.value_and_grad(loss)(x)
        h = f(h, g)
        return (x + jax.vmap(readout)(h), h), (h[idx], g, x[idx], value)

    h_init = jnp.broadcast_to(h0, (*x0.shape, h0.shape[-1]))
    _, (hs, gs, xs, losses) = jax.lax.scan(body, (x0, h_init), None, length=num_steps)
    return Run(jnp.concatenate([h_init[idx][None], hs]), gs, xs, losses)


def trajectory(cell: Cell, h0: Array, grads: Array) -> Array:
    """States h_0..h_T when the optimizer is fed the gradient sequence ``grads`` (T,): shape (T+1, hidden)."""
    _, hs = jax.lax.scan(lambda h, g: (cell(h, g), cell(h, g)), h0, jnp.asarray(grads, h0.dtype))
    return jnp.concatenate([h0[None], hs])


def autonomous(cell: Cell, h0: Array, num_steps: int) -> Array:
    """Zero-gradient (autonomous) dynamics from ``h0`` (sec. 4.3): shape (num_steps+1, hidden)."""
    return trajectory(cell, h0, jnp.zeros((num_steps,), h0.dtype))


def as_optimizer(cell: Cell, readout: Readout, h0: Array) -> Optimizer:
    """The recurrent optimizer as an optax ``GradientTransformation`` on any parameter pytree."""
    f, r = jax.vmap(cell), jax.vmap(readout)

    def init(params):
        return jax.tree.map(lambda p: jnp.broadcast_to(h0, (*jnp.shape(p), h0.shape[-1])), params)

    def update(grads, state, params=None):
        h = jax.tree.map(lambda s, g: f(s.reshape(-1, s.shape[-1]), g.ravel()).reshape(s.shape), state, grads)
        return jax.tree.map(lambda s, g: r(s.reshape(-1, s.shape[-1])).reshape(g.shape), h, grads), h

    return optax.GradientTransformation(init, update)


# --------------------------------------------------------------------------------------------- update functions


def update_function(cell: Cell, readout: Readout, h: Array, grads: Array) -> Array:
    """Update r(F(h, g)) for each gradient in ``grads`` at the fixed state h (sec. 3.2)."""
    return jax.vmap(lambda g: readout(cell(h, g)))(jnp.asarray(grads, h.dtype))


def effective_learning_rate(cell: Cell, readout: Readout, h: Array) -> Array:
    """Minus the slope of the update function at g = 0 (sec. 4.3); vectorised over leading axes of h."""
    slope = jax.grad(lambda hh, g: readout(cell(hh, g)), argnums=1)
    flat = h.reshape(-1, h.shape[-1])
    return -jax.vmap(slope)(flat, jnp.zeros(flat.shape[0], h.dtype)).reshape(h.shape[:-1])


def linear_range(cell: Cell, readout: Readout, h: Array, gmax: float, num: int = 400, tol: float = 0.1) -> float:
    """The gradient magnitude up to which the update function at state h stays linear (App. A, Fig. 4): the
    smallest |g| on a grid of ``num`` magnitudes in (0, gmax], either sign, where the update departs from its
    tangent at g = 0 by more than ``tol`` relative, |u(g) - u(0) + lr_eff g| > tol |lr_eff g|; ``gmax`` if none
    does. g = 0 itself is never tested (there the relative test is 0/0)."""
    if not (gmax > 0 and int(num) >= 1 and tol > 0):
        raise ValueError(f"need gmax > 0, num >= 1, tol > 0; got gmax={gmax}, num={num}, tol={tol}")
    mags = float(gmax) * np.arange(1, int(num) + 1) / int(num)
    grads = np.concatenate([-mags, mags])
    u = np.asarray(update_function(cell, readout, h, jnp.asarray(grads)), np.float64)
    u0 = float(update_function(cell, readout, h, jnp.zeros((1,)))[0])
    lr0 = float(effective_learning_rate(cell, readout, h))
    off = np.abs(u - u0 + lr0 * grads) > tol * np.abs(lr0 * grads)
    bad = mags[off[: len(mags)] | off[len(mags):]]
    return float(bad.min()) if bad.size else float(gmax)


# --------------------------------------------------------------------------------------------- fixed points


class FixedPoints(NamedTuple):
    """Points (K, hidden) sorted by speed, their speeds q = 1/2 ||F(h, g*) - h||^2 (K,), the input g*."""

    points: np.ndarray
    speeds: np.ndarray
    g: float


def speed(cell: Cell, h: Array, g: float | Array) -> Array:
    """q(h) = 1/2 ||F(h, g) - h||^2."""
    d = cell(h, jnp.asarray(g, h.dtype)) - h
    return 0.5 * jnp.sum(d * d)


def _minimise(cell: Cell, gs: Array, seeds: Array, num_steps: int, learning_rate: float, polish: int) -> Array:
    """Minimise q for every input in ``gs`` (G,) from every seed in ``seeds`` (G, S, hidden)."""
    adam = optax.adam(learning_rate)

    def one(g, h):
        q = lambda x: speed(cell, x, g)

        def adam_step(carry, _):
            x, s = carry
            upd, s = adam.update(jax.grad(q)(x), s, x)
            return (x + upd, s), None

        def lm_step(x, _):  # Levenberg-Marquardt on the residual F(x) - x
            res = cell(x, g) - x
            j = jax.jacfwd(lambda y: cell(y, g) - y)(x)
            new = x - jnp.linalg.solve(j.T @ j + 1e-6 * jnp.eye(x.shape[0], dtype=x.dtype), j.T @ res)
            return jnp.where(q(new) < q(x), new, x), None

        (h, _), _ = jax.lax.scan(adam_step, (h, adam.init(h)), None, length=num_steps)
        return jax.lax.scan(lm_step, h, None, length=polish)[0]

    over_seeds = jax.vmap(one, in_axes=(None, 0))
    return jax.jit(jax.vmap(over_seeds))(jnp.asarray(gs, seeds.dtype), seeds)


def _dedup(pts: np.ndarray, qs: np.ndarray, g: float, dedup: float) -> FixedPoints:
    keep: list[int] = []
    for i in np.argsort(qs, kind="stable"):
        if np.isfinite(qs[i]) and all(np.linalg.norm(pts[i] - pts[k]) > dedup for k in keep):
            keep.append(int(i))
    return FixedPoints(pts[keep], qs[keep], float(g))


def slow_points_many(cell: Cell, gs: Any, seeds: Array, num_steps: int = 2000, learning_rate: float = 1e-2,
                     polish: int = 20, dedup: float = 1e-3) -> list[FixedPoints]:
    """:func:`slow_points` for each input in ``gs``, in one compiled call; ``seeds`` is (S, hidden), the same
    for every g, or (G, S, hidden)."""
    gs = np.atleast_1d(np.asarray(gs, jnp.result_type(float)))  # float32, or float64 with jax_enable_x64
    seeds = jnp.asarray(seeds)
    seeds = jnp.broadcast_to(seeds, (len(gs), *seeds.shape)) if seeds.ndim == 2 else seeds
    pts = _minimise(cell, jnp.asarray(gs), seeds, num_steps, learning_rate, polish)
    qs = jax.vmap(jax.vmap(lambda g, h: speed(cell, h, g), in_axes=(None, 0)))(jnp.asarray(gs), pts)
    pts, qs = np.asarray(pts), np.asarray(qs)
    return [_dedup(pts[i], qs[i], gs[i], dedup) for i in range(len(gs))]


def slow_points(cell: Cell, g: float, seeds: Array, **kw: Any) -> FixedPoints:
    """Local minima of q(h) = 1/2 ||F(h, g) - h||^2 from every seed (rows of ``seeds``; Adam for
    ``num_steps``, then ``polish`` Levenberg-Marquardt steps), with their speeds, de-duplicated (points
    closer than ``dedup`` merge, the slower kept) and sorted slowest first."""
    return slow_points_many(cell, [g], seeds, **kw)[0]


def fixed_points(cell: Cell, g: float, seeds: Array, tol: float = 1e-10, **kw: Any) -> FixedPoints:
    """The slow points with speed q <= ``tol``: the fixed points of h -> F(h, g) found from ``seeds``."""
    sp = slow_points(cell, g, seeds, **kw)
    ok = sp.speeds <= tol
    return FixedPoints(sp.points[ok], sp.speeds[ok], sp.g)


# --------------------------------------------------------------------------------------------- linearisation


def jacobians(cell: Cell, h: Array, g: float | Array = 0.0) -> tuple[Array, Array]:
    """dF/dh (hidden, hidden) and dF/dg (hidden,) at (h, g) (App. C, eq. 3)."""
    g = jnp.asarray(g, h.dtype)
    return jax.jacfwd(cell, argnums=0)(h, g), jax.jacfwd(cell, argnums=1)(h, g)


class Modes(NamedTuple):
    """Eigenmodes of the linearised optimizer at ``point`` (App. C). Column j of ``right`` and row j of
    ``left`` are the right and left eigenvectors of dF/dh (left @ right = I); ``inputs`` = left @ dF/dg
    (alpha_j), ``outputs`` = dr/dh @ right; ``learning_rates`` = -inputs * outputs; ``eigenvalues`` are
    the momentum timescales beta_j. Sorted by |eigenvalue|, slowest first."""

    eigenvalues: np.ndarray
    learning_rates: np.ndarray
    right: np.ndarray
    left: np.ndarray
    inputs: np.ndarray
    outputs: np.ndarray
    point: np.ndarray
    g: float


def modes(cell: Cell, readout: Readout, h: Array, g: float = 0.0) -> Modes:
    """Linearise F at (h, g) and translate its eigenmodes into (timescale, learning rate) pairs (App. C)."""
    h = jnp.asarray(h)
    jac, b = (np.asarray(x, np.float64) for x in jacobians(cell, h, g))
    w = np.asarray(jax.grad(readout)(h), np.float64)  # linear readout: dr/dh = output_scale * w
    lam, right = np.linalg.eig(jac)
    order = np.argsort(-np.abs(lam), kind="stable")
    lam, right = lam[order], right[:, order]
    left = np.linalg.inv(right)
    inputs, outputs = left @ b, w @ right
    return Modes(lam, -inputs * outputs, right, left, inputs, outputs, np.asarray(h, np.float64), float(g))


# --------------------------------------------------------------------------------------------- state-space geometry


def total_variance(states: Array) -> np.ndarray:
    """Total variance across runs at each time: states (runs, T, hidden) -> (T,) (Fig. 3a inset)."""
    s = np.asarray(states, np.float64)
    return np.sum(np.var(s, axis=0), axis=-1)


class PCA(NamedTuple):
    mean: np.ndarray  # (hidden,)
    components: np.ndarray  # (k, hidden), rows
    explained: np.ndarray  # (k,) fraction of variance

    def project(self, h: Any) -> np.ndarray:
        return (np.asarray(h, np.float64) - self.mean) @ self.components.T


def pca(states: Any, k: int = 2) -> PCA:
    """Principal components of states (..., hidden), pooled over leading axes."""
    x = np.asarray(states, np.float64).reshape(-1, np.shape(states)[-1])
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    return PCA(mean, vt[:k], (s**2 / max(float(np.sum(s**2)), 1e-300))[:k])


# --------------------------------------------------------------------------------------------- the trained GRUs


TRAINED_GRUS = ("linear_regression", "rosenbrock", "two_moons", "linear_regression_momentum")  # notebook 10's


def load_trained_gru(task: str) -> tuple[Any, Any, dict]:
    """(GRUOptimizer, theta, meta) meta-trained by notebook 10 on ``task`` (linear_regression, rosenbrock,
    two_moons, or linear_regression_momentum: the one that performs as well as momentum, App. B), read from
    ``config.learned_path("gru_{task}.npz")``; ``meta["task"]`` and ``meta["family"]`` name the
    task family it was trained on (:func:`family`)."""
    from . import checkpoint, config
    from .learned import GRUOptimizer

    if task not in TRAINED_GRUS:
        raise ValueError(f"unknown trained GRU {task!r}; notebook 10 trains: {', '.join(TRAINED_GRUS)}")
    path = config.learned_path(f"gru_{task}.npz")
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the GRU weights are written by notebook 10; run "
            f"`dvc repro nb10_learned_optimizers` (or run notebooks/10_*.ipynb with LOPT_OUTPUT_DIR = "
            f"${config.INPUT_ENV}) first"
        )
    theta, meta = checkpoint.load_pytree(path)
    return GRUOptimizer(**meta["optimizer"]), jax.tree.map(jnp.asarray, theta), meta


def flat_problem(task: Any, key: Array) -> tuple[Callable[[Array], Array], Array]:
    """(loss on a flat parameter vector, flat x0) of a deterministic task (no minibatches)."""
    from jax.flatten_util import ravel_pytree

    x0, unravel = ravel_pytree(task.init(key))
    return (lambda x: task.loss(unravel(x), None)), x0


def run_family(cell: Cell, readout: Readout, h0: Array, family: Any, key: Array, num_tasks: int,
               num_steps: int, coords: Any = None) -> Run:
    """:func:`optimize` on ``num_tasks`` problems sampled from ``family`` (leading axis: problem)."""

    def one(k):
        k_task, k_init = jax.random.split(k)
        loss, x0 = flat_problem(family.sample(k_task), k_init)
        return optimize(cell, readout, h0, loss, x0, num_steps, coords)

    return jax.jit(jax.vmap(one))(jax.random.split(key, num_tasks))


def family(task: str, **settings: Any) -> Any:
    """The task family a GRU of notebook 10 was trained on (App. D.1), by name, with the fields notebook 10
    saved in the weights' meta data (``family(name, **meta["family"])``: e.g. the two-moons MLP's width)."""
    from . import tasks

    known = {"linear_regression": tasks.LinearRegressionFamily, "rosenbrock": tasks.RosenbrockFamily,
             "two_moons": tasks.TwoMoonsFamily}
    if task not in known:
        raise ValueError(f"unknown task {task!r}; allowed values: {', '.join(known)}")
    return known[task](**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})


class Convergence(NamedTuple):
    """Fig. 3 for one task: the runs, total variance over time, the convergence fixed point and its modes."""

    run: Run
    total_variance: np.ndarray
    fixed_point: FixedPoints
    modes: Modes
    pca: PCA


def convergence(cell: Cell, readout: Readout, h0: Array, fam: Any, key: Array, num_tasks: int, num_steps: int,
                coords: Any = None, num_seeds: int = 32, tol: float = 1e-8, fp_steps: int = 2000) -> Convergence:
    """Run the optimizer on ``num_tasks`` problems, then find the fixed point (g* = 0) the final states
    converge to (seeded from them; the nearest with speed <= tol, else the slowest point found) and
    linearise there (sec. 4.1, Fig. 3)."""
    run = run_family(cell, readout, h0, fam, key, num_tasks, num_steps, coords)
    states = np.asarray(run.states).transpose(0, 2, 1, 3).reshape(-1, run.states.shape[1], run.states.shape[-1])
    final = states[:, -1]
    seeds = final[np.linspace(0, len(final) - 1, min(num_seeds, len(final))).astype(int)]
    sp = slow_points(cell, 0.0, jnp.asarray(seeds, jnp.float32), num_steps=fp_steps)
    ok = np.flatnonzero(sp.speeds <= tol)  # fixed points; else fall back on the slowest point (speed reported)
    cand = ok if len(ok) else np.array([0])
    nearest = int(cand[np.argmin(np.linalg.norm(sp.points[cand] - final.mean(0), axis=1))])
    fp = FixedPoints(sp.points[nearest:nearest + 1], sp.speeds[nearest:nearest + 1], 0.0)
    m = modes(cell, readout, jnp.asarray(fp.points[0], jnp.float32))
    return Convergence(run, total_variance(states), fp, m, pca(states, 2))


def loss_curves(opt: Optimizer, fam: Any, key: Array, num_tasks: int, num_steps: int) -> Array:
    """Training loss per step, before each update, (num_tasks, num_steps) of an optax optimizer on problems of
    ``fam`` (:func:`lopt.unroll.unroll` from each problem's initialisation)."""
    from .unroll import init_state, unroll

    def one(k):
        k_task, k_init = jax.random.split(k)
        task = fam.sample(k_task)
        return unroll(task, opt, init_state(task, opt, k_init), None, num_steps).losses

    return jax.jit(jax.vmap(one))(jax.random.split(key, num_tasks))


class SCurve(NamedTuple):
    """Approximate fixed points for a range of constant gradients (Fig. 6): inputs g* (G,), the slowest point
    found for each (G, hidden), its speed (G,) and the effective learning rate there (G,)."""

    gs: np.ndarray
    points: np.ndarray
    speeds: np.ndarray
    eff_lr: np.ndarray


def s_curve(cell: Cell, readout: Readout, h0: Array, gs: Any, visited: Any, num_seeds: int, num_steps: int,
            fp_steps: int = 1000) -> SCurve:
    """Fixed points of h -> F(h, g*) for every constant gradient g* in ``gs`` (sec. 4.2, Fig. 6), seeded from
    the state reached by feeding g* for ``num_steps`` steps from ``h0`` and from ``num_seeds`` states evenly
    picked from ``visited`` (..., hidden; e.g. the states of a run); the slowest point per g* is kept, with its
    speed and effective learning rate."""
    gs = np.asarray(gs, np.float64)
    reached = jax.jit(jax.vmap(lambda g: trajectory(cell, h0, jnp.full((int(num_steps),), g, h0.dtype))[-1]))(
        jnp.asarray(gs, h0.dtype))
    flat = np.asarray(visited).reshape(-1, h0.shape[-1])
    picked = flat[:: max(1, flat.shape[0] // int(num_seeds))][: int(num_seeds)]
    seeds = np.concatenate([np.asarray(reached)[:, None], np.broadcast_to(picked, (len(gs), *picked.shape))], axis=1)
    sps = slow_points_many(cell, gs, jnp.asarray(seeds, h0.dtype), num_steps=fp_steps)
    points = np.stack([sp.points[0] for sp in sps])
    speeds = np.array([sp.speeds[0] for sp in sps])
    eff = np.asarray(effective_learning_rate(cell, readout, jnp.asarray(points, h0.dtype)))
    return SCurve(gs, points, speeds, eff)


def s_curve_shape(gs: Any, points: Any, end_fraction: float = 0.1) -> dict:
    """Shape of the fixed points along constant gradients ``gs`` (sorted; Fig. 6 top): ``pc1_explained`` (a
    one-dimensional curve: near 1), ``monotone`` (the first principal coordinate is monotone in g*) and
    ``saturation``: its slope d(PC 1)/dg* at g* = 0 over the mean slope on the outer ``end_fraction`` of each end
    (an S that flattens toward its ends: >> 1; a straight line: ~1)."""
    gs = np.asarray(gs, np.float64)
    pc = pca(np.asarray(points, np.float64), 2)
    p1 = pc.project(np.asarray(points, np.float64))[:, 0]
    slope = np.abs(np.gradient(p1, gs))
    k = max(2, int(round(end_fraction * len(gs))))
    center = slope[np.argsort(np.abs(gs))[:3]].mean()
    ends = 0.5 * (slope[:k].mean() + slope[-k:].mean())
    d = np.diff(p1)
    return {"pc1_explained": float(pc.explained[0]), "monotone": bool(np.all(d > 0) or np.all(d < 0)),
            "saturation": float(center / max(ends, 1e-30))}
