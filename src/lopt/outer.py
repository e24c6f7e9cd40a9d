"""The outer training loop: a learned optimizer's meta-parameters trained by any estimator
(Metz et al. 2019 sec. 3-4, App. C; Maheswaranathan et al. 2021 C.2).

:func:`train` repeats ``grad = estimator.estimate(...)``, ``theta <- outer_opt(theta, grad)``:

- a non-finite estimate is skipped and counted, and inner runs whose state became non-finite are
  restarted, so theta never becomes NaN;
- outer step ``s`` uses the key ``fold_in(key, s)``, and a checkpoint (theta, the outer-optimizer
  and estimator states, history) is written every ``checkpoint_every`` steps, so a killed run
  resumes to the same, bit-identical result on CPU. The checkpoint carries a fingerprint of the run
  (the starting theta, the key, the estimator's configuration and the caller's ``settings``); a
  checkpoint of another run, or written past ``num_steps``, is refused rather than resumed;
- the history holds one entry per outer step: the outer-loss, the estimate's norm, whether it
  was skipped, every scalar the estimator reports (variances, lengths, ...) and what ``track``
  returns.

Speed: for the estimators of :mod:`lopt.estimators` (a :class:`TruncatedEstimator`), one outer
step (estimate, finiteness check, outer-optimizer update or restart, the history scalars) is one
jitted program, compiled once per (estimator, outer optimizer, truncation size) and cached on the
estimator, so repeated calls do not recompile. With a constant truncation length and no ``track``,
up to :data:`SCAN_STEPS` outer steps run in one ``lax.scan`` (steps past the chunk's end are
no-ops), with one host round trip per chunk; chunks end at checkpoints. Every step runs the same
compiled body whatever the chunking, so resuming stays bit-identical. With a length schedule or a
``track`` callback there is one round trip per step (the schedule reads the step on the host).
Other estimators, and truncated estimators with ``chunk`` set (their truncation is a host loop over
compiled chunks, :mod:`lopt.chunked`), run ``estimate`` eagerly and the rest of the step as one
cached jitted program. Either way the history's ``length`` is the active length run, min(L, T - t).

:func:`meta_optimizer` builds the outer optimizer of Maheswaranathan et al. 2021 C.2: Adam with a
staircase exponential learning-rate decay, elementwise gradient clipping and an L2 penalty.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections import defaultdict
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .estimators import GradientEstimator, TruncatedEstimator, all_finite

Array = jax.Array
Theta = Any
Track = Callable[[Theta, Theta, Mapping[str, Any]], Mapping[str, Any]]

SCAN_STEPS = 16  # outer steps per compiled lax.scan chunk (constant truncation length, no track)


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


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) or (hasattr(v, "shape") and np.shape(v) == ())


def _scalars(info: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in info.items() if _is_scalar(v)}


def _restore(tree: Any) -> Any:
    return jax.tree.map(jnp.asarray, tree)


def _update(outer_opt, theta, opt_state, grad, ok):
    """The outer-optimizer step where ``ok``, else theta and its state unchanged."""
    def step(args):
        theta, opt_state = args
        updates, opt_state = outer_opt.update(grad, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state

    return jax.lax.cond(ok, step, lambda args: args, (theta, opt_state))


def _row(grad, ok, info) -> dict[str, Array]:
    """The history entries of one step (``info`` in the estimator's order, after the fixed ones)."""
    row = {"loss": info["loss"], "grad_norm": global_norm(grad), "skipped": (~ok).astype(jnp.float32)}
    row.update({k: v for k, v in info.items() if k not in row and _is_scalar(v)})
    return row


def _fused(estimator: TruncatedEstimator, outer_opt, chunk: int, with_aux: bool) -> Callable:
    """``run(theta, opt_state, est_state, key, start, n, size, active)``: outer steps ``start``,
    ..., ``start + n - 1`` (``n <= chunk``) as one jitted ``lax.scan``; returns the new theta,
    optimizer and estimator states and the stacked rows (and, with ``with_aux``, the last step's
    grad and info for ``track``). Cached on the estimator; ``size`` (compiled length) is static."""
    cache = estimator.__dict__.setdefault("_outer_cache", {})
    cache_key = (outer_opt, chunk, with_aux)
    if cache_key in cache:
        return cache[cache_key]

    def one(carry, i, size, active, key, start):
        theta, opt_state, est_state = carry
        k = jax.random.fold_in(key, start + i)
        _, k_est = jax.random.split(k)  # as in TruncatedEstimator.estimate
        active = jnp.maximum(1, jnp.minimum(active, estimator.training.remaining(est_state.truncated)))
        grad, new_state, info = estimator._estimate(theta, est_state, k_est, size, active)
        info = {**info, "length": active}
        ok = all_finite(grad)
        new_theta, new_opt = _update(outer_opt, theta, opt_state, grad, ok)
        est_state = jax.lax.cond(ok | all_finite(new_state), lambda: new_state,
                                 lambda: estimator.init(jax.random.fold_in(k, 1), theta))
        return (new_theta, new_opt, est_state), (_row(grad, ok, info), grad, info)

    def run(theta, opt_state, est_state, key, start, n, size, active):
        def body(carry, i):  # steps past n leave everything unchanged
            # the step is traced once (tracing, not compiling, dominates small programs): its jaxpr gives the
            # output shapes for the skip branch and is replayed in the cond
            args = (carry, i, active, key, start)
            step = jax.make_jaxpr(lambda *a: one(a[0], a[1], size, *a[2:]), return_shape=True)
            closed, shapes = step(*args)
            replay = lambda: jax.tree.unflatten(jax.tree.structure(shapes), jax.core.eval_jaxpr(
                closed.jaxpr, closed.consts, *jax.tree.leaves(args)))
            zeros = lambda: (carry, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[1]))
            return jax.lax.cond(i < n, replay, zeros)

        carry, (rows, grads, infos) = jax.lax.scan(body, (theta, opt_state, est_state), jnp.arange(chunk))
        if with_aux:
            return (*carry, rows, jax.tree.map(lambda x: x[-1], (grads, infos)))
        return (*carry, rows)

    cache[cache_key] = jax.jit(run, static_argnames=("size",))
    return cache[cache_key]


def _finish(estimator: GradientEstimator, outer_opt) -> Callable:
    """For estimators whose ``estimate`` runs on the host: finiteness, update and norm, jitted once."""
    cache = estimator.__dict__.setdefault("_outer_cache", {})
    if outer_opt not in cache:
        def finish(theta, opt_state, grad, new_state):
            ok = all_finite(grad)
            theta, opt_state = _update(outer_opt, theta, opt_state, grad, ok)
            return theta, opt_state, ok, global_norm(grad), all_finite(new_state)

        cache[outer_opt] = jax.jit(finish)
    return cache[outer_opt]


def _whole(name: str, value: Any, low: int) -> int:
    """``value`` as an int, if it is an integer (or integral float, not a bool) >= ``low``."""
    if not isinstance(value, (bool, np.bool_)):
        try:
            n = operator.index(value)
        except TypeError:
            n = int(value) if isinstance(value, (float, np.floating)) and float(value).is_integer() else None
        if n is not None and n >= low:
            return n
    raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


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
    settings: Mapping[str, Any] | None = None,
) -> OuterResult:
    """Train ``theta`` for ``num_steps`` outer steps (module docstring); resumes from
    ``checkpoint`` when that file exists and was written by the same run. ``settings`` (JSON-ready)
    enters the checkpoint's fingerprint only: pass what the fingerprint cannot see, such as the
    meta learning rate closed over by ``outer_opt``."""
    num_steps = _whole("num_steps", num_steps, 0)
    every = _whole("checkpoint_every", checkpoint_every, 1)
    try:
        settings_json = json.dumps(None if settings is None else dict(settings), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"settings must be a JSON-ready mapping (finite numbers): {e}") from e
    host_theta = jax.device_get(theta)
    for keys, x in jax.tree_util.tree_flatten_with_path(host_theta)[0]:
        x = np.asarray(x)
        bad = int(np.sum(~np.isfinite(x))) if np.issubdtype(x.dtype, np.inexact) else 0
        if bad:
            raise ValueError(f"theta{jax.tree_util.keystr(keys)} has non-finite entries ({bad} of {x.size}): start "
                             "from a finite theta")
    path = Path(checkpoint) if checkpoint else None
    if path is not None:  # the run's fingerprint (module docstring)
        typed = jax.dtypes.issubdtype(jnp.result_type(key), jax.dtypes.prng_key)
        parts = ckpt.fingerprint(theta0=host_theta, key=np.asarray(jax.random.key_data(key) if typed else key),
                                 estimator=estimator if is_dataclass(estimator) else type(estimator).__qualname__,
                                 settings=settings_json)
    opt_state = outer_opt.init(theta)
    probe, _ = outer_opt.update(jax.tree.map(jnp.ones_like, theta), opt_state, theta)
    if not bool(all_finite(probe)):  # a NaN / inf meta learning rate would make theta NaN at the first step
        raise ValueError("outer_opt turns a unit gradient into a non-finite update: check its learning rate "
                         "(NaN or inf?) and other hyperparameters")
    est_state = estimator.init(jax.random.fold_in(key, -1 % 2**31), theta)
    history: dict[str, list[float]] = defaultdict(list)
    start, skipped = 0, 0
    if path is not None and path.is_file():
        meta = ckpt.read_meta(path)
        ckpt.check_fingerprint(path, meta, parts)
        if int(meta["step"]) > num_steps:
            raise ckpt.StaleCheckpoint(f"{path} was written at step {meta['step']}, more than num_steps {num_steps}; delete "
                             "it or pass another checkpoint path")
        like = {"theta": _restore(theta), "opt_state": opt_state, "estimator_state": est_state,
                "history": {k: np.zeros(int(n), np.float64) for k, n in meta["history_lengths"].items()}}
        saved, meta = ckpt.load_pytree(path, like=like)
        theta, opt_state, est_state = (_restore(saved[k]) for k in ("theta", "opt_state", "estimator_state"))
        history.update({k: list(np.asarray(v)) for k, v in saved["history"].items()})
        start, skipped = int(meta["step"]), int(meta["skipped"])

    fused = isinstance(estimator, TruncatedEstimator) and estimator.chunk is None
    constant = fused and isinstance(estimator.length, (int, np.integer))
    chunk = SCAN_STEPS if constant and track is None else 1
    run = _fused(estimator, outer_opt, chunk, track is not None) if fused else _finish(estimator, outer_opt)
    bar = tqdm(total=num_steps, desc=desc, disable=not progress, initial=start)
    step = start
    while step < num_steps:
        before = theta
        stop = min(num_steps, step + chunk, (step // every + 1) * every if path is not None else num_steps)
        k = jax.random.fold_in(key, step)
        if fused:
            if constant:
                size = active = int(estimator.length)
            else:
                size, active = estimator.truncation_length(int(est_state.step), jax.random.split(k)[0], est_state)
            out = run(theta, opt_state, est_state, key, step, stop - step, size=size, active=active)
            theta, opt_state, est_state, rows = out[:4]
            rows = jax.device_get(rows)  # keys sorted by jit: the fixed ones first, length last (as before)
            names = ["loss", "grad_norm", "skipped", *sorted(set(rows) - {"loss", "grad_norm", "skipped", "length"}), "length"]
            rows = {name: np.asarray(rows[name][: stop - step], np.float64) for name in names}
            if track is not None:
                grad, info = out[4]
                info = {**info, "length": active}
        else:
            grad, new_state, info = estimator.estimate(theta, est_state, k)
            theta, opt_state, ok, norm, state_ok = run(theta, opt_state, grad, new_state)
            scalars = {k_: v for k_, v in info.items() if _is_scalar(v)}
            ok, norm, state_ok, info_host = jax.device_get((ok, norm, state_ok, scalars))
            rows = {"loss": float(info_host["loss"]), "grad_norm": float(norm), "skipped": float(not ok)}
            rows.update({k_: v for k_, v in _scalars(info_host).items() if k_ not in rows})
            rows = {name: np.array([v], np.float64) for name, v in rows.items()}
            est_state = new_state if ok or state_ok else estimator.init(jax.random.fold_in(k, 1), before)
        if track is not None:
            rows.update({k_: np.array([float(v)]) for k_, v in track(before, grad, info).items()})
        for name, values in rows.items():
            history[name].extend(values.tolist())
        skipped += int(np.sum(rows["skipped"]))
        bar.update(stop - step)
        step = stop
        if progress:
            bar.set_postfix(loss=f"{rows['loss'][-1]:.4g}", skipped=skipped, refresh=False)
        if path is not None and (step % every == 0 or step == num_steps):
            tree = {"theta": theta, "opt_state": opt_state, "estimator_state": est_state,
                    "history": {k_: np.asarray(v, np.float64) for k_, v in history.items()}}
            meta = {"step": step, "skipped": skipped, "history_lengths": {k_: len(v) for k_, v in history.items()},
                    "fingerprint": hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(),
                    "fingerprint_parts": parts}
            ckpt.save_pytree(path, tree, meta=meta)
    bar.close()
    hist = {k_: np.asarray(v, np.float64) for k_, v in history.items()}
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
