"""Tuned hand-designed baselines and honest wall-clock (Metz et al. 2019 sec. 4.4, Fig. 6, App. G).

- :func:`tune_learning_rate`: Adam, RMSProp and SGD+momentum "tuned over 11 learning rates log-spaced
  from 1e-4 to 10", per task (pass ``SingleTask(task)``) or per task family, all rates in one ``vmap``.
- :func:`adam_reg_decay` / :class:`AdamRegDecay`: "Adam+Reg+Decay", the paper's 8-hyperparameter
  baseline: Adam's learning rate, beta1, beta2 and epsilon; exponential and linear learning-rate decay;
  l1 and l2 penalties added to the inner loss. :func:`sample_adam8p` draws configurations log-uniformly
  from the wide grid of the authors' TaskSet (``ADAM8P_RANGES``) and :func:`random_search_adam8p` scores
  them on the same problems, vectorised over configurations.
- :func:`curves_with_eval`: per-step training-minibatch losses and whole-split losses every few steps,
  for any optimizer (learned or not), several thetas and problems at once (the curves of Fig. 6a-b).
- :func:`step_times`: seconds per inner step of each optimizer, measured in one process, interleaved,
  median of repetitions after compilation; wall-clock curves are step x that time (App. G).
"""

from __future__ import annotations

import time
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .optimizers import Hyperparameters, LearnedOptimizer, Optimizer
from .tasks import TaskFamily
from .truncation import TruncatedTraining

Array = jax.Array

LR_GRID = tuple(np.geomspace(1e-4, 10.0, 11))  # sec. 4.4: 11 values, log-spaced, 1e-4 to 10
FIXED = {"momentum": {"beta": 0.9}}  # SGD+momentum: momentum 0.9, learning rate tuned

# The wide grid of the authors' TaskSet ("adam8p"): (low, high, sampled in log of 1 - value?)
ADAM8P_RANGES: dict[str, tuple[float, float, bool]] = {
    "learning_rate": (1e-8, 10.0, False),
    "b1": (1e-4, 1.0, True),  # 1 - beta1 log-uniform
    "b2": (1e-6, 1.0, True),  # 1 - beta2 log-uniform
    "eps": (1e-10, 1e3, False),
    "l1": (1e-8, 10.0, False),
    "l2": (1e-8, 10.0, False),
    "linear_decay": (1e-7, 1e-4, False),
    "exp_decay": (1e-6, 1e-3, False),
}


class Adam8PState(NamedTuple):
    m: Any
    v: Any
    count: Array


def adam_reg_decay(learning_rate, b1, b2, eps, linear_decay, exp_decay, l1, l2, training_steps: int = 10_000
                   ) -> Optimizer:
    """Adam+Reg+Decay. With s = step * 10000 / ``training_steps`` (the decay rates are meant for 10k-step
    runs, as in TaskSet), g' = g + l1 sign(w) + 2 l2 w (the gradient of l1 |w|_1 + l2 |w|^2 added to the
    loss), Adam's bias-corrected moments of g', and
    ``update = -lr exp(-exp_decay s) max(1 - linear_decay s, 0) m_hat / (sqrt(v_hat + 1e-10) + eps)``.
    Every hyperparameter may be a traced scalar."""

    def init(params: Any) -> Adam8PState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return Adam8PState(zeros, jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.int32))

    def update(grads: Any, state: Adam8PState, params: Any = None):
        if params is None:
            raise ValueError("Adam+Reg+Decay's l1/l2 penalties read the parameters: pass params to update()")
        g = jax.tree.map(lambda g_, w: g_ + l1 * jnp.sign(w) + 2.0 * l2 * w, grads, params)
        m = jax.tree.map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, state.m, g)
        v = jax.tree.map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, state.v, g)
        t = (state.count + 1).astype(jnp.float32)
        s = state.count.astype(jnp.float32) * (10_000.0 / training_steps)
        lr = learning_rate * jnp.exp(-exp_decay * s) * jnp.maximum(1.0 - linear_decay * s, 0.0)
        c1, c2 = 1 - b1**t, 1 - b2**t
        updates = jax.tree.map(lambda m_, v_: -lr * (m_ / c1) / (jnp.sqrt(v_ / c2 + 1e-10) + eps), m, v)
        return updates, Adam8PState(m, v, state.count + 1)

    return optax.GradientTransformation(init, update)


class AdamRegDecay(LearnedOptimizer):
    """Adam+Reg+Decay as a learned optimizer whose theta is its 8 hyperparameters (plain values)."""

    def __init__(self, training_steps: int = 10_000):
        self.training_steps = int(training_steps)

    def __hash__(self) -> int:
        return hash(("AdamRegDecay", self.training_steps))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AdamRegDecay) and other.training_steps == self.training_steps

    def init(self, key: Array | None = None) -> dict[str, Array]:
        return {"learning_rate": jnp.float32(1e-3), "b1": jnp.float32(0.9), "b2": jnp.float32(0.999),
                "eps": jnp.float32(1e-8), "l1": jnp.float32(0.0), "l2": jnp.float32(0.0),
                "linear_decay": jnp.float32(0.0), "exp_decay": jnp.float32(0.0)}

    def opt_fn(self, theta: Mapping[str, Array]) -> Optimizer:
        return adam_reg_decay(**theta, training_steps=self.training_steps)


def sample_adam8p(key: Array, n: int, ranges: Mapping[str, tuple[float, float, bool]] = ADAM8P_RANGES
                  ) -> dict[str, np.ndarray]:
    """``n`` configurations, each hyperparameter log-uniform in its range (for b1, b2: 1 - value)."""
    keys = jax.random.split(key, len(ranges))
    out = {}
    for k, (name, (lo, hi, one_minus)) in zip(keys, ranges.items()):
        x = np.exp(np.asarray(jax.random.uniform(k, (int(n),), minval=np.log(lo), maxval=np.log(hi)), np.float64))
        out[name] = (1.0 - x) if one_minus else x
    return out


class Search(NamedTuple):
    """A search over configurations: each one's score (mean outer-loss; inf if any run diverged)."""

    configs: dict[str, np.ndarray]
    scores: np.ndarray
    best: dict[str, float]
    best_score: float

    @property
    def best_lr(self) -> float:
        return float(self.best["learning_rate"])


def _search(learned_opt: LearnedOptimizer, thetas: Mapping[str, np.ndarray], family: TaskFamily, num_steps: int,
            num_tasks: int, key: Array, objective: str, batch: int) -> Search:
    """Score every configuration (stacked in ``thetas``) on the same problems, ``batch`` at a time."""
    n = len(next(iter(thetas.values())))
    batch = max(1, min(int(batch), n))
    pad = -n % batch
    padded = {k: np.concatenate([np.asarray(v, np.float32), np.repeat(np.asarray(v, np.float32)[-1:], pad)])
              for k, v in thetas.items()}
    training = TruncatedTraining(learned_opt, family, int(num_steps), objective)

    @jax.jit
    def score(theta):  # (batch,) configs -> (batch, num_tasks)
        def one(th):
            return training.unroll(th, training.init(th, key, int(num_tasks)), int(num_steps)).loss
        return jax.vmap(one)(theta)

    per_run = np.concatenate([np.asarray(score({k: v[i:i + batch] for k, v in padded.items()}))
                              for i in range(0, n + pad, batch)])[:n]
    scores = np.where(np.all(np.isfinite(per_run), axis=1), per_run.mean(axis=1), np.inf)
    if not np.any(np.isfinite(scores)):
        raise ValueError("every configuration diverged: move the search toward smaller learning rates")
    b = int(np.argmin(scores))
    return Search({k: np.asarray(v) for k, v in thetas.items()}, scores,
                  {k: float(np.asarray(v)[b]) for k, v in thetas.items()}, float(scores[b]))


def tune_learning_rate(name: str, family: TaskFamily, num_steps: int, num_tasks: int, key: Array,
                       learning_rates: Sequence[float] = LR_GRID, objective: str = "train",
                       fixed: Mapping[str, float] | None = None, batch: int = 11) -> Search:
    """The paper's per-task baseline: ``name`` ("adam", "rmsprop", "momentum", ...) at each learning rate,
    scored by the mean outer-loss over ``num_tasks`` runs of ``num_steps`` steps (``objective`` "train"
    or "valid"); the same runs for every rate."""
    hp = Hyperparameters(name, {"learning_rate": 0.0}, dict(FIXED.get(name, {})) | dict(fixed or {}))
    return _search(hp, {"learning_rate": np.asarray(learning_rates, np.float64)}, family, num_steps, num_tasks, key,
                   objective, batch)


def random_search_adam8p(family: TaskFamily, num_configs: int, num_steps: int, num_tasks: int, key: Array,
                         objective: str = "train", batch: int = 16) -> Search:
    """Adam+Reg+Decay tuned by uniform random search over :data:`ADAM8P_RANGES` (sec. 4.4), every
    configuration on the same ``num_tasks`` problems of ``family``."""
    k_cfg, k_eval = jax.random.split(key)
    configs = sample_adam8p(k_cfg, num_configs)
    return _search(AdamRegDecay(num_steps), configs, family, num_steps, num_tasks, k_eval, objective, batch)


class Curves(NamedTuple):
    """Training curves, shape (thetas, problems, inits, ...): ``train_batch`` the training-minibatch loss
    at each step (before its update); ``split[s]`` the loss on the whole split ``s`` at ``steps`` (0 included)."""

    train_batch: np.ndarray
    split: dict[str, np.ndarray]
    steps: np.ndarray


params_plus = optax.apply_updates


def curves_with_eval(learned_opt: LearnedOptimizer, thetas: Any, family: TaskFamily, num_steps: int, key: Array,
                     num_problems: int, num_inits: int, eval_every: int,
                     splits: Sequence[str] = ("train", "valid", "test")) -> Curves:
    """Curves of every theta in ``thetas`` (leading axis) on ``num_problems`` problems of ``family``, each
    from ``num_inits`` initialisations (Fig. 6: five CNN initialisations per problem); problems,
    initialisations and minibatches are fixed by ``key``, the same for every theta and optimizer."""
    if int(num_steps) % int(eval_every):
        raise ValueError(f"eval_every ({eval_every}) must divide num_steps ({num_steps})")
    blocks, every = int(num_steps) // int(eval_every), int(eval_every)
    k_prob, k_init, k_batch = jax.random.split(key, 3)

    def one_run(theta, problem_key, init_key, batch_key):
        task = family.sample(problem_key)
        opt = learned_opt.opt_fn(theta)
        params = task.init(init_key)
        evals = lambda p: jnp.stack([task.split_loss(p, s) for s in splits])

        def step(carry, t):
            params, state = carry
            loss, grads = jax.value_and_grad(task.loss)(params, task.batch(jax.random.fold_in(batch_key, t), "train"))
            updates, state = opt.update(grads, state, params)
            return (params_plus(params, updates), state), loss

        def block(carry, b):
            carry, losses = jax.lax.scan(step, carry, b * every + jnp.arange(every))
            return carry, (losses, evals(carry[0]))

        _, (losses, ev) = jax.lax.scan(block, (params, opt.init(params)), jnp.arange(blocks))
        return losses.reshape(-1), jnp.concatenate([evals(params)[None], ev]).T

    problems = jax.random.split(k_prob, int(num_problems))
    inits = jax.random.split(k_init, int(num_inits))
    batches = jax.random.split(k_batch, int(num_inits))
    per_init = jax.vmap(one_run, in_axes=(None, None, 0, 0))
    per_problem = jax.vmap(per_init, in_axes=(None, 0, None, None))
    fn = jax.jit(jax.vmap(per_problem, in_axes=(0, None, None, None)))
    losses, evals = jax.device_get(fn(thetas, problems, inits, batches))
    return Curves(np.asarray(losses, np.float64),
                  {s: np.asarray(evals[..., i, :], np.float64) for i, s in enumerate(splits)},
                  np.arange(blocks + 1) * every)


def step_times(optimizers: Mapping[str, tuple[LearnedOptimizer, Any]], family: TaskFamily, key: Array,
               num_steps: int = 50, repeats: int = 7) -> dict[str, dict[str, float]]:
    """Seconds per inner step (minibatch, gradient, optimizer update) of each optimizer on one problem of
    ``family``: each a jitted ``lax.scan`` of ``num_steps`` steps, compiled first, then ``repeats`` rounds
    in which every optimizer runs once (order rotated per round); median and quartiles per optimizer."""
    runs = {}
    for name, (lopt, theta) in optimizers.items():
        training = TruncatedTraining(lopt, family, int(num_steps) * (int(repeats) + 2), "train")
        fn = jax.jit(lambda th, inner, k, tt=training: tt.unroll_one(th, inner, k, int(num_steps)).state[0].params)
        inner = training.fresh(lopt.opt_fn(theta), key)
        jax.block_until_ready(fn(theta, inner, key))  # compile
        runs[name] = (fn, theta, inner)
    names, times = list(runs), {n: [] for n in runs}
    for r in range(int(repeats)):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn, theta, inner = runs[name]
            t0 = time.perf_counter()
            jax.block_until_ready(fn(theta, inner, key))
            times[name].append((time.perf_counter() - t0) / int(num_steps))
    return {n: {"median": float(np.median(t)), "q25": float(np.percentile(t, 25)), "q75": float(np.percentile(t, 75))}
            for n, t in times.items()}


class Tuned(NamedTuple):
    """A baseline tuned per problem (:func:`tuned_curves`): for each objective, the learning rate chosen
    for each problem and that rate's curves, shape (problems, inits, ...)."""

    lrs: dict[str, np.ndarray]
    curves: dict[str, Curves]
    scores: dict[str, np.ndarray]  # (learning rates, problems): the tuning scores


def _pick(c: Curves, index: np.ndarray) -> Curves:
    """Per problem p, the curves of theta ``index[p]``: (thetas, problems, ...) -> (problems, ...)."""
    rows = np.arange(len(index))
    return Curves(c.train_batch[index, rows], {s: v[index, rows] for s, v in c.split.items()}, c.steps)


def tuned_curves(name: str, family: TaskFamily, num_steps: int, key: Array, num_problems: int, num_inits: int,
                 eval_every: int, learning_rates: Sequence[float] = LR_GRID, tune_inits: int = 1) -> Tuned:
    """Sec. 4.4's per-task baseline: ``name``'s learning rate tuned over the grid on each problem (scored on
    ``tune_inits`` initialisations: the mean training-minibatch loss for objective "train", the mean
    whole-validation-split loss for "valid"; a diverged run scores inf), then curves at the chosen rates from
    ``num_inits`` initialisations (only the rates some problem chose are run)."""
    hp = Hyperparameters(name, {"learning_rate": 0.0}, dict(FIXED.get(name, {})))
    grid = np.asarray(learning_rates, np.float32)
    # the same key: the same problems (and, with fewer inits, other initialisations of them)
    tune = curves_with_eval(hp, {"learning_rate": grid}, family, num_steps, key, num_problems, tune_inits, eval_every)
    finite = lambda x: np.where(np.isfinite(x), x, np.inf)
    scores = {"train": finite(tune.train_batch.mean(axis=(2, 3))), "valid": finite(tune.split["valid"].mean(axis=(2, 3)))}
    chosen = {obj: np.argmin(s, axis=0) for obj, s in scores.items()}
    used = np.unique(np.concatenate(list(chosen.values())))
    runs = curves_with_eval(hp, {"learning_rate": grid[used]}, family, num_steps, key, num_problems, num_inits,
                            eval_every)
    where = {int(u): i for i, u in enumerate(used)}
    return Tuned({obj: grid[c].astype(np.float64) for obj, c in chosen.items()},
                 {obj: _pick(runs, np.array([where[int(i)] for i in c])) for obj, c in chosen.items()}, scores)

