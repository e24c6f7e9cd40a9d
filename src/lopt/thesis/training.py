"""Meta-training as Schröter 2022 does it (sec. 3.1-3.2, 5.3.2, 5.5.2, 5.6, 5.4.4), evaluation and baselines.

A training run is ``num_super_epochs`` super epochs (SE) of ``super_epoch`` inner steps (sec. 5.2). Each SE draws
a new task (fresh optimizee and initialisation) and zeroes the LSTM state; its steps are cut into slices of T
(l.384). Per slice, the meta-loss is the weighted sum of the losses *before* each update,
sum_t w_t f(theta_t) (eq. 3.5; the code sums its deque of pre-update losses), with w_t = 1 + beta (t - 1)
(the code's ``weighted_sum``; eq. 5.12 writes beta t + 1) and beta = 0 for constant weights. Its gradient with
respect to phi is normalised to unit norm per tensor (sec. 5.3.2, ``tf.math.l2_normalize``: g / sqrt(max(sum g^2,
1e-12)); or over all tensors, or not at all), then Adam (Keras defaults: lr 1e-3, eps 1e-7) steps on phi. The
inner state (parameters and LSTM state) goes on to the next slice as plain data: no backprop across slices.
As in the code, the last slice of an SE shorter than T runs but gives no meta-update (``train_partial``).

The inner steps are :meth:`lopt.truncation.TruncatedTraining.steps` (objective "train": the pre-update loss per
step). A whole training is one pure function of (key, activation index, initial phi) built from ``lax.scan`` over
SEs and slices, so :func:`train_many` vmaps it over seeds (and activation indices) in one compiled program.

Deviations from the code: each seed has its own Adam state (the code shares one Keras ``Adam`` across the runs
of a configuration, so later runs start with worn-off bias correction); an SE longer than an epoch is sliced
continuously (the code restarts its slices at every epoch and drops each epoch's last 375 mod T steps); MLP
minibatches are drawn with replacement (:mod:`lopt.thesis.tasks`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import unroll
from ..learned.lstm import LSTMOptimizer
from ..optimizers import LearnedOptimizer, Optimizer, make
from ..tasks import Task, TaskFamily
from ..truncation import TruncatedTraining, tree_where

Array = jax.Array

NORMALIZATIONS = ("tensor", "global", "off")
KERAS_ADAM_EPS = 1e-7


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Meta-training settings (defaults: the quadratic, l.384-400). The MLP uses super_epoch = 375 (an epoch)
    and 10 super epochs (l.408, l.438)."""

    num_super_epochs: int = 25
    super_epoch: int = 320
    slice_len: int = 16
    beta: float = 0.0
    normalize: str = "tensor"
    learning_rate: float = 1e-3
    train_partial: bool = False
    remat: bool = False

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown normalize {self.normalize!r}; allowed values: {', '.join(NORMALIZATIONS)}")
        if min(self.num_super_epochs, self.super_epoch, self.slice_len) < 1:
            raise ValueError(f"num_super_epochs, super_epoch and slice_len must be >= 1: {self}")

    @property
    def num_slices(self) -> int:
        return -(-self.super_epoch // self.slice_len)


def loss_weights(length: int, beta: float | Array = 0.0) -> Array:
    """w_t = 1 + beta (t - 1) for t = 1..length (the code's linear weights; beta = 0: w_t = 1)."""
    return 1.0 + beta * jnp.arange(length, dtype=jnp.float32)


def normalize(grads: Any, mode: str = "tensor") -> Any:
    """Meta-gradient normalisation (sec. 5.3.2): g / sqrt(max(sum g^2, 1e-12)) per tensor, over all tensors
    ("global"), or none ("off")."""
    if mode == "off":
        return grads
    if mode == "tensor":
        return jax.tree.map(lambda g: g * jax.lax.rsqrt(jnp.maximum(jnp.sum(g * g), 1e-12)), grads)
    if mode == "global":
        total = sum(jnp.sum(g * g) for g in jax.tree.leaves(grads))
        return jax.tree.map(lambda g: g * jax.lax.rsqrt(jnp.maximum(total, 1e-12)), grads)
    raise ValueError(f"unknown normalize {mode!r}; allowed values: {', '.join(NORMALIZATIONS)}")


class TrainResult(NamedTuple):
    """A trained phi (theta), the inner losses seen during training (num_super_epochs, super_epoch) and each
    slice's meta-loss (num_super_epochs, num_slices)."""

    theta: Any
    losses: Array
    meta_losses: Array


def train(lopt: LearnedOptimizer, family: TaskFamily, cfg: MetaConfig, key: Array, act: Array | None = None,
          theta0: Any = None) -> TrainResult:
    """One meta-training (module docstring) from ``lopt.init`` (or ``theta0``, e.g. pretrained); ``act``
    selects the hidden activation of an :class:`~lopt.thesis.tasks.MLPFamily` (traceable)."""
    k_init, k_runs = jax.random.split(key)
    theta = lopt.init(k_init) if theta0 is None else theta0
    fam = family if act is None else family.with_activation(act)
    training = TruncatedTraining(lopt, fam, cfg.super_epoch, "train", remat=cfg.remat)
    adam = optax.adam(cfg.learning_rate, eps=KERAS_ADAM_EPS)
    T, weights = cfg.slice_len, loss_weights(cfg.slice_len, cfg.beta)

    def slice_loss(th, inner, run_key, num_active):
        ctx = training.context(lopt.opt_fn(th), run_key)
        inner, (losses, active) = training.steps(ctx, inner, jnp.arange(T), num_active)
        return jnp.sum(jnp.where(active, weights * losses, 0.0)), (inner, losses)

    def one_slice(carry, j):
        th, adam_state, inner, run_key = carry
        num_active = jnp.minimum(T, cfg.super_epoch - j * T)
        (meta, (inner, losses)), g = jax.value_and_grad(slice_loss, has_aux=True)(th, inner, run_key, num_active)
        updates, new_state = adam.update(normalize(g, cfg.normalize), adam_state, th)
        do = (num_active == T) | cfg.train_partial
        th = tree_where(do, optax.apply_updates(th, updates), th)
        adam_state = tree_where(do, new_state, adam_state)
        return (th, adam_state, inner, run_key), (losses, meta)

    def super_epoch(carry, s):
        th, adam_state = carry
        run_key = jax.random.fold_in(k_runs, s)
        inner = training.fresh(lopt.opt_fn(th), run_key)  # new task, new init, zero LSTM state
        (th, adam_state, _, _), (losses, metas) = jax.lax.scan(
            one_slice, (th, adam_state, inner, run_key), jnp.arange(cfg.num_slices))
        return (th, adam_state), (losses.reshape(-1)[: cfg.super_epoch], metas)

    (theta, _), (losses, metas) = jax.lax.scan(super_epoch, (theta, adam.init(theta)), jnp.arange(cfg.num_super_epochs))
    return TrainResult(theta, losses, metas)


@functools.partial(jax.jit, static_argnames=("lopt", "cfg"))
def train_many(lopt: LearnedOptimizer, family: TaskFamily, cfg: MetaConfig, keys: Array, acts: Array | None = None,
               theta0: Any = None) -> TrainResult:
    """:func:`train` for every key (leading axis), and every activation index in ``acts`` / initial theta in
    ``theta0`` (both with the same leading axis when given): one compiled, vmapped program."""
    axes = (0, None if acts is None else 0, None if theta0 is None else 0)
    return jax.vmap(lambda k, a, t: train(lopt, family, cfg, k, a, t), in_axes=axes)(keys, acts, theta0)


# ---------------------------------------------------------------------------------------------- evaluation


class Curves(NamedTuple):
    """Per theta: the minibatch loss before each update (num_steps,), the thesis's curves (final loss = the last
    entry, Fig. 13); and, with ``eval_every``, the whole-split loss at ``full_steps`` (0 included)."""

    losses: Array
    full: Array | None
    full_steps: np.ndarray | None


@functools.partial(jax.jit, static_argnames=("lopt", "num_steps", "eval_every", "split"))
def _curves(lopt, thetas, task, num_steps, k_init, k_batch, acts, eval_every, split):
    def one(theta, act):
        t = task if act is None else task.with_activation(act)
        opt = lopt.opt_fn(theta)
        step = lambda state, i: unroll.step(t, opt, state, jax.random.fold_in(k_batch, i))
        state = unroll.init_state(t, opt, k_init)
        if not eval_every:
            return jax.lax.scan(step, state, jnp.arange(num_steps))[1], None

        def block(state, b):
            state, losses = jax.lax.scan(step, state, b * eval_every + jnp.arange(eval_every))
            return state, (losses, t.full_loss(state.params, split))

        _, (losses, full) = jax.lax.scan(block, state, jnp.arange(num_steps // eval_every))
        return losses.reshape(-1), jnp.concatenate([t.full_loss(state.params, split)[None], full])

    return jax.vmap(one, in_axes=(0, None if acts is None else 0))(thetas, acts)


def evaluate(lopt: LearnedOptimizer, thetas: Any, task: Task, num_steps: int, key: Array, acts: Array | None = None,
             eval_every: int = 0, split: str = "train") -> Curves:
    """Every theta (leading axis) on one fixed problem: the same initialisation and minibatches (from ``key``) for
    all, as the thesis tests every trained optimizer on one fixed init (l.400); ``acts`` per theta for the MLP.
    ``eval_every`` > 0 (dividing num_steps) adds the whole-split loss of an MLP every that many steps."""
    if eval_every and num_steps % eval_every:
        raise ValueError(f"eval_every ({eval_every}) must divide num_steps ({num_steps})")
    k_init, k_batch = jax.random.split(key)
    losses, full = _curves(lopt, thetas, task, int(num_steps), k_init, k_batch, acts, int(eval_every), split)
    steps = np.arange(0, num_steps + 1, eval_every) if eval_every else None
    return Curves(losses, full, steps)


@functools.partial(jax.jit, static_argnames=("lopt", "num_steps"))
def share_above(lopt: LearnedOptimizer, thetas: Any, task: Task, num_steps: int, key: Array,
                threshold: float = 1.0) -> Array:
    """Per theta (leading axis), the share of gradient coordinates with |g| > ``threshold`` over the run of
    :func:`evaluate` (same key: same init and minibatches): sec. 5.3.1's "many gradients are larger than one",
    outside the range where eq. 5.2's rho is one-to-one."""
    k_init, k_batch = jax.random.split(key)

    def one(theta):
        opt = lopt.opt_fn(theta)

        def body(state, i):
            batch = task.batch(jax.random.fold_in(k_batch, i), "train")
            leaves = jax.tree.leaves(jax.grad(task.loss)(state.params, batch))
            above = sum(jnp.sum(jnp.abs(g) > threshold) for g in leaves)
            return unroll.step(task, opt, state, jax.random.fold_in(k_batch, i))[0], above

        _, above = jax.lax.scan(body, unroll.init_state(task, opt, k_init), jnp.arange(num_steps))
        size = sum(x.size for x in jax.tree.leaves(task.init(k_init)))
        return jnp.sum(above) / (num_steps * size)

    return jax.vmap(one)(thetas)


# ---------------------------------------------------------------------------------------------- baselines


@dataclasses.dataclass(frozen=True)
class LearningRate(LearnedOptimizer):
    """A hand-designed optimizer ("adam": Keras's eps 1e-7; "sgd") whose theta is its learning rate."""

    name: str = "adam"

    def init(self, key: Array | None = None) -> dict[str, Array]:
        return {"learning_rate": jnp.asarray(1e-3)}

    def opt_fn(self, theta: dict[str, Array]) -> Optimizer:
        extra = {"eps": KERAS_ADAM_EPS} if self.name == "adam" else {}
        return make(self.name, learning_rate=theta["learning_rate"], **extra)


class Baseline(NamedTuple):
    learning_rates: np.ndarray
    curves: Curves  # one row per learning rate
    scores: np.ndarray  # mean loss over the last tenth of the steps ("final") or all steps ("mean"); inf if not finite
    best_lr: float
    best: int


def tune_baseline(name: str, task: Task, num_steps: int, key: Array, learning_rates: Any = np.logspace(-4, 0, 9),
                  score: str = "final", eval_every: int = 0) -> Baseline:
    """Adam or SGD at every learning rate of the grid on the same fixed problem as :func:`evaluate` (same key:
    same init and minibatches), the best by ``score``."""
    lrs = np.asarray(learning_rates, np.float64)
    c = evaluate(LearningRate(name), {"learning_rate": jnp.asarray(lrs, jnp.float32)}, task, num_steps, key,
                 eval_every=eval_every)
    losses = np.asarray(c.losses, np.float64)
    tail = losses[:, -max(1, num_steps // 10):] if score == "final" else losses
    scores = np.where(np.all(np.isfinite(losses), axis=1), tail.mean(axis=1), np.inf)
    best = int(np.argmin(scores))
    return Baseline(lrs, c, scores, float(lrs[best]), best)


# ---------------------------------------------------------------------------------------------- pretraining


def sign_weighted_loss(out: Array, target: Array, omega: float = 2.0) -> Array:
    """Eq. 5.11: mean |g - g*| exp(-omega sgn(g g*)): a wrong sign costs e^(2 omega) times a right one."""
    return jnp.mean(jnp.abs(out - target) * jnp.exp(-omega * jnp.sign(out * target)))


def pretrain(lopt: LSTMOptimizer, key: Array, num_samples: int = 200_000, batch_size: int = 128, std: float = 1e-3,
             omega: float = 2.0, learning_rate: float = 1e-3, target_scale: float | None = None) -> tuple[Any, Array]:
    """Sign-weighted pretraining (sec. 5.4.4): fit one fresh network so that its update alpha * sum(h) matches
    target_scale * g (default -alpha g; the code hardcodes -0.01 g, alpha of the MLP) for g ~ N(0, std^2), in
    batches of ``batch_size`` coordinates by Adam (lr 1e-3). As the code's stateful LSTM, the state runs on from
    batch to batch (each batch one step of ``batch_size`` coordinates) without a gradient through it. Returns
    theta (the network copied into every layer with ``per_layer``) and the loss per batch."""
    k_phi, k_x = jax.random.split(key)
    phi = lopt.init_phi(k_phi)
    x = std * jax.random.normal(k_x, (num_samples // batch_size, batch_size))
    y = (-lopt.alpha if target_scale is None else target_scale) * x
    adam = optax.adam(learning_rate, eps=KERAS_ADAM_EPS)

    def body(carry, xy):
        phi, adam_state, s = carry

        def loss_fn(p):
            s_new = lopt.cell(p, s, xy[0])
            return sign_weighted_loss(lopt.readout(p, s_new), xy[1], omega), s_new

        (loss, s), g = jax.value_and_grad(loss_fn, has_aux=True)(phi)
        updates, adam_state = adam.update(g, adam_state, phi)
        return (optax.apply_updates(phi, updates), adam_state, jax.lax.stop_gradient(s)), loss

    s0 = jnp.zeros((batch_size, lopt.state_size))
    (phi, _, _), losses = jax.lax.scan(body, (phi, adam.init(phi), s0), (x, y))
    return lopt.from_phi(phi), losses


@functools.partial(jax.jit, static_argnames=("lopt", "num_samples", "batch_size", "std", "omega", "learning_rate",
                                             "target_scale"))
def pretrain_many(lopt: LSTMOptimizer, keys: Array, num_samples: int = 200_000, batch_size: int = 128,
                  std: float = 1e-3, omega: float = 2.0, learning_rate: float = 1e-3,
                  target_scale: float | None = None) -> tuple[Any, Array]:
    """:func:`pretrain` for every key (leading axis): thetas to pass as ``theta0`` to :func:`train_many`."""
    return jax.vmap(lambda k: pretrain(lopt, k, num_samples, batch_size, std, omega, learning_rate, target_scale))(keys)
