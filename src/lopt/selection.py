"""Meta-training with selection (Maheswaranathan et al. 2021 C.2; Metz et al. 2019 sec. 4.1).

- :func:`pick_learning_rate` chooses Adam's initial meta learning rate from short pilot runs of a few rates on the
  same outer batches (the paper tunes it by search);
- :func:`train_and_select` trains with :func:`lopt.outer.train`, pausing to score theta on validation problems, and
  keeps the best-scoring theta, as the paper keeps "the best performing learned optimizer" per task. Meta-training
  through long unrolls can blow up late (Metz et al. 2019), after any pilot ends: with ``fallbacks`` a pause that
  blows up rejects the meta learning rate, and training restarts from the best theta so far at the next one.
  Killed runs resume from their checkpoints bit-identically.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import checkpoint as ckpt
from . import outer

Array = jax.Array


def pick_learning_rate(pilots: Mapping[float, Mapping[str, Sequence[float]]]) -> float:
    """The meta learning rate whose pilot run (an :func:`lopt.outer.train` history: ``loss`` and
    ``skipped`` per outer step) has the lowest mean outer-loss over its second half; a pilot with a
    skipped (non-finite) estimate or a non-finite loss there scores inf. The paper tunes Adam's initial
    meta learning rate by search (C.2); we compare short pilots of a few rates on the same outer batches."""
    def score(history):
        h = np.asarray(history["loss"], np.float64)
        skipped = np.asarray(history.get("skipped", np.zeros_like(h)), np.float64)
        h = np.where(skipped > 0, np.inf, h)[len(h) // 2:]
        return float(np.mean(np.where(np.isfinite(h), h, np.inf))) if h.size else np.inf

    scores = {float(lr): score(h) for lr, h in pilots.items()}
    if not np.any(np.isfinite(list(scores.values()))):
        raise ValueError("every pilot meta learning rate diverged: add smaller rates to pilot_lrs")
    return min(scores, key=scores.get)


class Selection(NamedTuple):
    """Meta-training paused to score theta (:func:`train_and_select`)."""

    result: Any  # the full run's lopt.outer.OuterResult (histories of its restarts concatenated)
    scores: np.ndarray  # one score per pause (inf where not finite)
    steps: np.ndarray  # the outer step of each pause
    thetas: list  # the theta at each pause
    restarts: tuple = ()  # (outer step of a blown-up pause, outer step of the pause restarted from), in order

    @property
    def best(self) -> Any:
        """The theta with the lowest score."""
        return self.thetas[int(np.argmin(self.scores))]

    @property
    def best_step(self) -> int:
        return int(self.steps[int(np.argmin(self.scores))])

    def first_at_most(self, target: float) -> int | None:
        """Index of the first pause whose score is <= ``target`` (None if none is): e.g. the first
        learned optimizer that performs as well as tuned momentum (Maheswaranathan et al. 2021 App. B)."""
        hits = np.flatnonzero(self.scores <= target)
        return int(hits[0]) if hits.size else None


def train_and_select(
    estimator: Any, theta: Any, outer_opt: Any, num_steps: int, key: Array, *, every: int,
    score: Callable[[Any], float], desc: str = "outer-training", progress: bool = True,
    checkpoint: str | Path | None = None, settings: Mapping[str, Any] | None = None,
    fallbacks: Sequence[Any] = (), blowup: float = 1.5, max_skipped: float = 0.5,
) -> Selection:
    """:func:`lopt.outer.train` for ``num_steps`` outer steps, paused every ``every`` steps (it resumes
    bit-identically from its checkpoint) to score theta with ``score`` (say, the mean meta-objective on
    validation problems); a non-finite score counts as inf. Returns the full run, the theta with the
    lowest score, and the score, outer step and theta of every pause. The paper keeps the best performing
    learned optimizer per task (C.2); meta-training through long unrolls can blow up late (Metz et al.
    2019), and the selection keeps the optimizer from before.

    ``fallbacks`` (outer optimizers, say the same Adam at smaller meta learning rates) reject a meta learning rate
    that blows up after the pilots: a pause *blows up* when its score is not finite, exceeds the best score before it
    by more than ``blowup - 1`` times that score's magnitude, or when more than ``max_skipped`` of the outer steps
    since the previous pause were skipped (non-finite estimates). Training then restarts from the best-scoring theta
    so far (fresh optimizer state and fresh problems) with the next fallback, and counts on from the blown-up pause,
    so the run stays ``num_steps`` outer steps long; ``Selection.restarts`` records each restart. Without
    ``fallbacks`` nothing changes.

    With ``checkpoint`` (a path), the run and its pauses are kept there while it runs, so a killed run resumes
    where it stopped with the same result; a checkpoint of another run (``settings`` enters its fingerprint, as in
    :func:`lopt.outer.train`) is discarded and the run starts over; the files are removed once the run completes.
    Without it, a temporary folder is used."""
    if int(every) < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if not float(blowup) > 1.0 or not 0.0 <= float(max_skipped) <= 1.0:
        raise ValueError(f"need blowup > 1 and 0 <= max_skipped <= 1, got blowup {blowup}, max_skipped {max_skipped}")
    run = dict(estimator=estimator, theta=theta, opts=[outer_opt, *fallbacks], num_steps=int(num_steps), key=key,
               every=int(every), score=score, desc=desc, progress=progress, settings=settings,
               blowup=float(blowup), max_skipped=float(max_skipped))
    if checkpoint is None:
        with tempfile.TemporaryDirectory() as tmp:
            return _train_and_select(path=Path(tmp) / "outer.npz", **run)
    path = Path(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = _train_and_select(path=path, **run)
    except ckpt.StaleCheckpoint as err:
        print(f"{err}: discarded, starting over")
        _remove(path)
        out = _train_and_select(path=path, **run)
    _remove(path)
    return out


def _pauses_path(path: Path) -> Path:
    return path.with_name(path.stem + ".pauses.npz")


def _restart_path(path: Path, restart: int) -> Path:
    return path if restart == 0 else path.with_name(f"{path.stem}.restart{restart}.npz")


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    _pauses_path(path).unlink(missing_ok=True)
    for leftover in path.parent.glob(f"{path.stem}.restart*.npz"):
        leftover.unlink(missing_ok=True)


def _blew_up(scores: Sequence[float], skipped: Sequence[float], blowup: float, max_skipped: float) -> bool:
    """Whether the last pause blew up (:func:`train_and_select`)."""
    last, before = scores[-1], [s for s in scores[:-1] if np.isfinite(s)]
    if not np.isfinite(last) or skipped[-1] > max_skipped:
        return True
    return bool(before) and last - min(before) > (blowup - 1.0) * abs(min(before))


def _train_and_select(estimator, theta, opts, num_steps, key, every, score, desc, progress, path, settings, blowup,
                      max_skipped):
    scores, steps, thetas, skipped, result = [], [], [], [], None
    pauses = _pauses_path(path)
    if pauses.is_file() and path.is_file():  # a killed run: its pauses so far (outer.train checks the run itself)
        meta = ckpt.read_meta(pauses)
        n = int(meta["pauses"])
        like = {"scores": np.zeros(n), "steps": np.zeros(n, np.int64), "skipped": np.zeros(n),
                "thetas": jax.tree.map(lambda x: np.zeros((n, *np.shape(x)), np.asarray(x).dtype), theta)}
        try:
            saved, _ = ckpt.load_pytree(pauses, like=like)
        except ValueError as err:  # thetas of another shape or structure: another run's pauses
            raise ckpt.StaleCheckpoint(f"{pauses} belongs to another run ({err})") from err
        scores, steps = [float(x) for x in saved["scores"]], [int(x) for x in saved["steps"]]
        skipped = [float(x) for x in saved["skipped"]]
        thetas = [jax.tree.map(lambda x, i=i: jnp.asarray(x[i]), saved["thetas"]) for i in range(n)]
        print(f"resuming {desc} from {path} (pauses at outer steps {steps})")

    # segment r trains from outer step starts[r] with opts[r], from theta origins[r] (restart r > 0 after a blow-up)
    starts, origins, restarts = [0], [theta], []

    def restart_after(j: int) -> None:  # pause j blew up: restart from the best pause so far (or this segment's start)
        finite = [i for i in range(j + 1) if np.isfinite(scores[i])]
        b = min(finite, key=lambda i: scores[i]) if finite else None
        restarts.append((steps[j], steps[b] if b is not None else starts[-1]))
        starts.append(steps[j])
        origins.append(thetas[b] if b is not None else origins[-1])

    def can_restart(j: int) -> bool:
        return (len(starts) < len(opts) and steps[j] < num_steps
                and _blew_up(scores[: j + 1], skipped[: j + 1], blowup, max_skipped))

    for j in range(len(steps)):  # replay the decisions of a resumed run
        if can_restart(j):
            restart_after(j)

    def train(r: int, stop: int, show: bool):
        s = None if settings is None and r == 0 else {**dict(settings or {}), **({"restart": r, "restart_step": starts[r]}
                                                                                  if r else {})}
        return outer.train(estimator, origins[r], opts[r], stop - starts[r],
                           key if r == 0 else jax.random.fold_in(key, 2**31 - r), checkpoint=_restart_path(path, r),
                           checkpoint_every=every, progress=show, desc=desc if r == 0 else f"{desc} (restart {r})",
                           settings=s)

    first = (steps[-1] + every) if steps else every
    for stop in range(first, num_steps + every, every):
        stop = min(stop, num_steps)
        r = len(starts) - 1
        result = train(r, stop, progress)
        value = float(score(result.theta))
        done = stop - (steps[-1] if steps else 0)  # outer steps since the previous pause, all in segment r
        scores.append(value if np.isfinite(value) else np.inf)
        steps.append(stop)
        thetas.append(result.theta)
        skipped.append(float(np.mean(result.history["skipped"][-done:])) if done else 0.0)
        tree = {"scores": np.asarray(scores, np.float64), "steps": np.asarray(steps, np.int64),
                "skipped": np.asarray(skipped, np.float64),
                "thetas": jax.tree.map(lambda *x: np.stack([np.asarray(y) for y in x]), *thetas)}
        ckpt.save_pytree(pauses, tree, meta={"pauses": len(steps)})
        if stop == num_steps:
            break
        if can_restart(len(steps) - 1):
            restart_after(len(steps) - 1)
            print(f"{desc}: blew up at outer step {restarts[-1][0]} (score {scores[-1]:.4g}); restarting from the "
                  f"theta of outer step {restarts[-1][1]} with fallback {len(restarts)}")
    # each segment's run up to where the next one restarted (read from its checkpoint: no training), the last one's end
    ends = [*starts[1:], num_steps]
    parts = [train(r, ends[r], False) for r in range(len(starts) - 1)]
    parts.append(result if result is not None else train(len(starts) - 1, num_steps, False))
    if len(parts) > 1:
        last = parts[-1]
        history = {k: np.concatenate([p.history[k] for p in parts]) for k in last.history}
        result = last._replace(history=history, num_skipped=sum(p.num_skipped for p in parts))
    else:
        result = parts[0]
    return Selection(result, np.asarray(scores), np.asarray(steps), thetas, tuple(restarts))
