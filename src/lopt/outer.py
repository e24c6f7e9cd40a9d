"""The outer training loop: a learned optimizer's meta-parameters trained by any estimator
(Metz et al. 2019 sec. 3-4, App. C; Maheswaranathan et al. 2021 C.2).

:func:`train` repeats ``grad = estimator.estimate(...)``, ``theta <- outer_opt(theta, grad)``:

- a non-finite estimate is skipped and counted, and inner runs whose state became non-finite are
  restarted, so theta never becomes NaN;
- outer step ``s`` uses the key ``fold_in(key, s)``, and a checkpoint (theta, the outer-optimizer
  and estimator states, history) is written every ``checkpoint_every`` steps, so a killed run
  resumes to the same, bit-identical result on CPU;
- the history holds one entry per outer step: the outer-loss, the estimate's norm, whether it
  was skipped, every scalar the estimator reports (variances, lengths, ...) and what ``track``
  returns.

:func:`meta_optimizer` builds the outer optimizer of Maheswaranathan et al. 2021 C.2: Adam with a
staircase exponential learning-rate decay, elementwise gradient clipping and an L2 penalty.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .estimators import GradientEstimator, all_finite

Array = jax.Array
Theta = Any
Track = Callable[[Theta, Theta, Mapping[str, Any]], Mapping[str, Any]]


class OuterResult(NamedTuple):
    theta: Theta
    history: dict[str, np.ndarray]
    num_skipped: int
    opt_state: Any = None
    estimator_state: Any = None


def meta_optimizer(
    learning_rate: float,
    *,
    clip_value: float | None = None,
    clip_norm: float | None = None,
    l2: float = 0.0,
    decay_every: int | None = None,
    decay_factor: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
) -> optax.GradientTransformation:
    """Adam on theta with optional L2 penalty (``l2 / 2 ||theta||^2``, added to the gradient
    first), elementwise clipping at ``clip_value`` or global-norm clipping at ``clip_norm``, and
    the learning rate ``learning_rate * decay_factor ** (step // decay_every)``."""
    parts = []
    if l2:
        parts.append(optax.add_decayed_weights(l2))
    if clip_value is not None:
        parts.append(optax.clip(clip_value))
    if clip_norm is not None:
        parts.append(optax.clip_by_global_norm(clip_norm))
    lr = learning_rate
    if decay_every:
        lr = optax.exponential_decay(learning_rate, int(decay_every), decay_factor, staircase=True)
    parts.append(optax.adam(lr, b1=b1, b2=b2))
    return optax.chain(*parts)


def global_norm(tree: Theta) -> Array:
    return optax.global_norm(tree)


def _scalars(info: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in info.items():
        if isinstance(v, (int, float, np.integer, np.floating)) or (hasattr(v, "shape") and np.shape(v) == ()):
            out[k] = float(v)
    return out


def _restore(tree: Any) -> Any:
    return jax.tree.map(jnp.asarray, tree)


def train(
    estimator: GradientEstimator,
    theta: Theta,
    outer_opt: optax.GradientTransformation,
    num_steps: int,
    key: Array,
    *,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    progress: bool = True,
    track: Track | None = None,
    desc: str = "outer-training",
) -> OuterResult:
    """Train ``theta`` for ``num_steps`` outer steps (module docstring); resumes from
    ``checkpoint`` when that file exists."""
    if int(num_steps) < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    opt_state = outer_opt.init(theta)
    est_state = estimator.init(jax.random.fold_in(key, -1 % 2**31), theta)
    history: dict[str, list[float]] = defaultdict(list)
    start, skipped = 0, 0
    path = Path(checkpoint) if checkpoint else None
    if path is not None and path.is_file():
        saved, meta = ckpt.load_pytree(path)
        theta, opt_state, est_state = (_restore(saved[k]) for k in ("theta", "opt_state", "estimator_state"))
        history.update({k: list(np.asarray(v)) for k, v in saved["history"].items()})
        start, skipped = int(meta["step"]), int(meta["skipped"])

    @jax.jit
    def apply(theta, opt_state, grad):
        updates, opt_state = outer_opt.update(grad, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state

    def save(step: int) -> None:
        tree = {"theta": theta, "opt_state": opt_state, "estimator_state": est_state,
                "history": {k: np.asarray(v, np.float64) for k, v in history.items()}}
        ckpt.save_pytree(path, tree, meta={"step": step, "skipped": skipped})

    bar = tqdm(range(start, int(num_steps)), desc=desc, disable=not progress, initial=start, total=int(num_steps))
    for step in bar:
        k = jax.random.fold_in(key, step)
        grad, new_state, info = estimator.estimate(theta, est_state, k)
        ok = bool(all_finite(grad))
        row = {"loss": float(info["loss"]), "grad_norm": float(global_norm(grad)), "skipped": float(not ok)}
        row.update({k_: v for k_, v in _scalars(info).items() if k_ not in row})
        if track is not None:
            row.update({k_: float(v) for k_, v in track(theta, grad, info).items()})
        if ok:
            theta, opt_state = apply(theta, opt_state, grad)
            est_state = new_state
        else:
            skipped += 1
            est_state = new_state if bool(all_finite(new_state)) else estimator.init(jax.random.fold_in(k, 1), theta)
        for name, value in row.items():
            history[name].append(value)
        if progress:
            bar.set_postfix(loss=f"{row['loss']:.4g}", skipped=skipped, refresh=False)
        if path is not None and ((step + 1) % int(checkpoint_every) == 0 or step + 1 == int(num_steps)):
            save(step + 1)
    hist = {k: np.asarray(v, np.float64) for k, v in history.items()}
    return OuterResult(theta, hist, skipped, opt_state, est_state)


def probe(
    estimator: GradientEstimator, theta: Theta, num_steps: int, key: Array, progress: bool = False
) -> tuple[Theta, dict[str, np.ndarray]]:
    """``num_steps`` estimates at a fixed ``theta``, the inner runs carried from one to the next:
    the per-truncation outer-gradients along inner training (Metz et al. 2019 Fig. 3c). Returns
    the estimates stacked on a leading axis and the scalar infos per step."""
    state = estimator.init(jax.random.fold_in(key, -1 % 2**31), theta)
    grads, rows = [], defaultdict(list)
    for step in tqdm(range(int(num_steps)), desc="probe", disable=not progress):
        grad, state, info = estimator.estimate(theta, state, jax.random.fold_in(key, step))
        grads.append(grad)
        for k, v in _scalars(info).items():
            rows[k].append(v)
    stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *grads)
    return stacked, {k: np.asarray(v, np.float64) for k, v in rows.items()}


def evaluate(
    learned_opt: Any, family: Any, theta: Theta, num_steps: int, num_tasks: int, key: Array,
    objective: str = "train", batched_theta: bool = False,
) -> Array:
    """The untruncated outer-loss of ``theta``: the mean over whole inner runs of ``num_steps``
    steps of l(w_{t+1}), for ``num_tasks`` fresh runs (returned per run). With ``batched_theta``,
    ``theta`` has a leading axis and is evaluated per entry (shape ``(len(theta), num_tasks)``)."""
    from .truncation import TruncatedTraining

    training = TruncatedTraining(learned_opt, family, int(num_steps), objective)

    def one(th):
        state = training.init(th, key, int(num_tasks))
        return training.unroll(th, state, int(num_steps)).loss

    fn = jax.jit(jax.vmap(one) if batched_theta else one)
    return fn(theta)
