"""lopt.outer and lopt.checkpoint: resuming is bit-identical, non-finite estimates are skipped,
the meta-optimizer of Maheswaranathan et al. 2021 C.2 clips, decays and penalises as stated."""

from __future__ import annotations

import dataclasses
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import checkpoint, estimators, optimizers, outer, tasks, truncation


def _problem():
    quad = jax.jit(tasks.Quadratic.from_eigenvalues)(jax.random.PRNGKey(0), jnp.array([0.5, 2.0]))
    lopt = optimizers.Hyperparameters("momentum", {"learning_rate": 0.05, "beta": 0.5}, log=("learning_rate",))
    return lopt, tasks.SingleTask(quad)


@pytest.mark.parametrize("name,chunk", [("Merged", None), ("PES", None), ("Merged", 2)])
def test_resume_from_checkpoint_is_bit_identical(tmp_path, name, chunk):
    """A run killed after 4 of 7 outer steps and resumed from its checkpoint ends with exactly the
    theta, history and estimator state of an uninterrupted run (curriculum lengths included; fused
    path, and with ``chunk`` the chunked truncations of lopt.chunked)."""
    lopt, family = _problem()
    est = getattr(estimators, name)(lopt, family, horizon=12, length=truncation.curriculum(2, 6, 5), num_tasks=3,
                                    chunk=chunk)
    theta0 = lopt.init(None)
    opt = outer.meta_optimizer(0.05, clip_value=5.0, l2=1e-5)
    key = jax.random.PRNGKey(7)
    full = outer.train(est, theta0, opt, 7, key, progress=False)
    path = tmp_path / "run.npz"
    outer.train(est, theta0, opt, 4, key, checkpoint=path, checkpoint_every=2, progress=False)
    resumed = outer.train(est, theta0, opt, 7, key, checkpoint=path, checkpoint_every=2, progress=False)
    for a, b in zip(jax.tree.leaves(full.theta), jax.tree.leaves(resumed.theta)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(full.estimator_state), jax.tree.leaves(resumed.estimator_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert full.history.keys() == resumed.history.keys()
    for k in full.history:
        np.testing.assert_array_equal(full.history[k], resumed.history[k])
    assert len(resumed.history["loss"]) == 7


@dataclasses.dataclass(eq=False)
class Flaky(estimators.GradientEstimator):
    """Returns NaN on every third call, else the gradient of 1/2 ||theta - 1||^2."""

    calls: int = 0

    def init(self, key, theta):
        return estimators.EstimatorState(jnp.zeros((), jnp.int32), None)

    def estimate(self, theta, state, key):
        self.calls += 1
        grad = theta - 1.0
        if self.calls % 3 == 0:
            grad = grad * jnp.nan
        return grad, state._replace(step=state.step + 1), {"loss": 0.5 * jnp.sum((theta - 1.0) ** 2), "length": 1}


def test_non_finite_estimates_are_skipped_and_counted():
    res = outer.train(Flaky(), jnp.zeros(2), optax.sgd(0.5), 9, jax.random.PRNGKey(0), progress=False)
    assert res.num_skipped == 3
    np.testing.assert_array_equal(res.history["skipped"], [0, 0, 1] * 3)
    assert np.all(np.isfinite(np.asarray(res.theta)))
    # six good steps of gradient descent with lr 0.5 halve the distance to 1 six times
    np.testing.assert_allclose(res.theta, 1.0 - 0.5**6, rtol=1e-6)


def test_track_and_history():
    res = outer.train(Flaky(), jnp.zeros(2), optax.sgd(0.5), 2, jax.random.PRNGKey(0), progress=False,
                      track=lambda th, g, info: {"theta0": th[0]})
    np.testing.assert_allclose(res.history["theta0"], [0.0, 0.5])
    assert set(res.history) >= {"loss", "grad_norm", "skipped", "length", "theta0"}
    with pytest.raises(ValueError, match="num_steps"):
        outer.train(Flaky(), jnp.zeros(2), optax.sgd(0.5), -1, jax.random.PRNGKey(0))


def test_meta_optimizer_clip_decay_l2():
    opt = outer.meta_optimizer(1.0, clip_value=5.0, l2=0.0, decay_every=2, decay_factor=0.5)
    theta = jnp.array([0.0])
    state = opt.init(theta)
    steps = []
    for _ in range(4):
        upd, state = opt.update(jnp.array([100.0]), state, theta)
        steps.append(float(upd[0]))
    # Adam's first steps have magnitude lr (sign of the clipped gradient), then the decay halves lr
    np.testing.assert_allclose(steps, [-1.0, -1.0, -0.5, -0.5], rtol=1e-3)
    # the L2 term is added to the gradient before clipping: with zero gradient theta still shrinks
    opt = outer.meta_optimizer(0.1, l2=1.0)
    theta = jnp.array([3.0])
    upd, _ = opt.update(jnp.zeros(1), opt.init(theta), theta)
    assert float(upd[0]) < 0


def test_checkpoint_round_trip(tmp_path):
    tree = {"a": jnp.arange(3.0), "b": (jnp.ones((2, 2), jnp.int32), {"c": jnp.float32(1.5)})}
    path = tmp_path / "sub" / "w.npz"
    checkpoint.save_pytree(path, tree, meta={"hidden": 4, "task": "x"})
    back, meta = checkpoint.load_pytree(path)
    assert meta == {"hidden": 4, "task": "x"}
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), b)
        assert np.asarray(a).dtype == b.dtype
    with pytest.raises(FileNotFoundError):
        checkpoint.load_pytree(tmp_path / "missing.npz")


def test_probe_and_evaluate():
    """probe: estimates along carried inner runs at a fixed theta; evaluate: the untruncated
    outer-loss, equal to one truncation as long as the horizon."""
    lopt, family = _problem()
    theta = lopt.init(None)
    est = estimators.TruncatedBPTT(lopt, family, horizon=6, length=2, num_tasks=2)
    grads, info = outer.probe(est, theta, 3, jax.random.PRNGKey(0))
    assert grads["learning_rate"].shape == (3,) and info["loss"].shape == (3,)
    # carried runs: the second truncation starts where the first ended, so losses keep falling
    assert info["loss"][0] > info["loss"][1] > info["loss"][2]
    whole = outer.evaluate(lopt, family, theta, 6, 2, jax.random.PRNGKey(1))
    np.testing.assert_allclose(np.mean(whole), np.mean(info["loss"]), rtol=1e-5)
    batched = jax.tree.map(lambda x: jnp.stack([x, x + 0.1]), theta)
    per = outer.evaluate(lopt, family, batched, 6, 2, jax.random.PRNGKey(1), batched_theta=True)
    assert per.shape == (2, 2)
    np.testing.assert_allclose(per[0], whole, rtol=1e-6)


def _plain_loop(est, theta, opt, num_steps, key):
    """The outer loop written out: estimate, skip non-finite estimates, restart non-finite runs."""
    opt_state = opt.init(theta)
    state = est.init(jax.random.fold_in(key, -1 % 2**31), theta)
    losses, lengths, skipped = [], [], 0
    for step in range(num_steps):
        k = jax.random.fold_in(key, step)
        grad, new, info = est.estimate(theta, state, k)
        if bool(estimators.all_finite(grad)):
            updates, opt_state = opt.update(grad, opt_state, theta)
            theta, state = optax.apply_updates(theta, updates), new
        else:
            skipped += 1
            state = new if bool(estimators.all_finite(new)) else est.init(jax.random.fold_in(k, 1), theta)
        losses.append(float(info["loss"]))
        lengths.append(float(info["length"]))
    return theta, np.array(losses), np.array(lengths), skipped


@pytest.mark.parametrize("name,length", [("ES", 3), ("PES", truncation.curriculum(2, 6, 5)), ("TruncatedBPTT", 4)])
def test_train_matches_plain_loop(name, length):
    """The fused, scanned loop of outer.train takes the same steps as estimate + optax update in a
    Python loop (constant lengths: lax.scan chunks; schedules: one step per call), and a second
    call with the same estimator and optimizer compiles nothing new."""
    lopt, family = _problem()
    est = getattr(estimators, name)(lopt, family, horizon=10, length=length, num_tasks=3)
    theta0 = lopt.init(None)
    opt = outer.meta_optimizer(0.05, clip_value=5.0)
    key = jax.random.PRNGKey(3)
    n = outer.SCAN_STEPS + 3  # a full chunk and a partial one
    theta, losses, lengths, skipped = _plain_loop(est, theta0, opt, n, key)
    res = outer.train(est, theta0, opt, n, key, progress=False)
    for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(res.theta)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res.history["loss"], losses, rtol=1e-6)
    np.testing.assert_array_equal(res.history["length"], lengths)
    assert res.num_skipped == skipped == 0
    sizes = {k: f._cache_size() for k, f in est._outer_cache.items()}
    again = outer.train(est, theta0, opt, n, key, progress=False)
    assert {k: f._cache_size() for k, f in est._outer_cache.items()} == sizes
    for a, b in zip(jax.tree.leaves(again.theta), jax.tree.leaves(res.theta)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("length", [3, truncation.curriculum(2, 6, 5)])
def test_fused_step_traces_the_estimator_once(length):
    """Tracing, not XLA compilation, dominates small programs once the compilation cache is warm: the
    fused outer step traces the estimator once per compiled program (its jaxpr is replayed in the
    skip-past-the-end cond instead of tracing it a second time for the output shapes)."""
    lopt, family = _problem()
    est = estimators.PES(lopt, family, horizon=10, length=length, num_tasks=2)
    calls = []
    inner = est._estimate
    object.__setattr__(est, "_estimate", lambda *a: (calls.append(1), inner(*a))[1])
    res = outer.train(est, lopt.init(None), outer.meta_optimizer(0.05), 4, jax.random.PRNGKey(0), progress=False)
    programs = sum(f._cache_size() for f in est._outer_cache.values())
    assert programs >= 1 and len(calls) == programs
    assert np.all(np.isfinite(res.history["loss"]))


def test_fused_loop_skips_and_restarts_diverging_runs():
    """A learning rate so large that inner runs overflow: every estimate is non-finite, so theta
    never moves, every step is counted as skipped and the inner runs are restarted (finite state)."""
    quad = jax.jit(tasks.Quadratic.from_eigenvalues)(jax.random.PRNGKey(0), jnp.array([0.5, 2.0]))
    lopt = optimizers.Hyperparameters("sgd", {"learning_rate": 1e30})
    est = estimators.TruncatedBPTT(lopt, tasks.SingleTask(quad), horizon=8, length=4, num_tasks=2)
    theta0 = lopt.init(None)
    theta, losses, _, skipped = _plain_loop(est, theta0, optax.adam(0.1), 5, jax.random.PRNGKey(0))
    res = outer.train(est, theta0, optax.adam(0.1), 5, jax.random.PRNGKey(0), progress=False)
    assert res.num_skipped == skipped == 5
    np.testing.assert_array_equal(res.history["skipped"], np.ones(5))
    np.testing.assert_array_equal(np.asarray(res.theta["learning_rate"]), np.asarray(theta0["learning_rate"]))
    assert bool(estimators.all_finite(res.estimator_state))
    np.testing.assert_array_equal(res.history["loss"], losses)


def test_train_rejects_bad_arguments_before_computing():
    """checkpoint_every and num_steps must be integers (>= 1, >= 0), theta finite and settings
    JSON-ready; nothing is estimated before these checks."""
    est, theta0, opt, key = Flaky(), jnp.zeros(2), optax.sgd(0.5), jax.random.PRNGKey(0)
    for bad in (0, -1, 1.5, True, "2", None):
        with pytest.raises(ValueError, match=rf"checkpoint_every must be an integer >= 1, got {re.escape(repr(bad))}"):
            outer.train(est, theta0, opt, 2, key, checkpoint_every=bad, progress=False)
    for bad in (-1, 2.5, True, "3", float("nan")):
        with pytest.raises(ValueError, match=r"num_steps must be an integer >= 0"):
            outer.train(est, theta0, opt, bad, key, progress=False)
    with pytest.raises(ValueError, match=r"theta has non-finite entries \(1 of 2\)"):
        outer.train(est, jnp.array([0.0, jnp.nan]), opt, 2, key, progress=False)
    with pytest.raises(ValueError, match=r"theta\['b'\] has non-finite entries \(1 of 1\)"):
        outer.train(est, {"a": jnp.zeros(2), "b": jnp.array(jnp.inf)}, opt, 2, key, progress=False)
    with pytest.raises(ValueError, match="settings must be a JSON-ready mapping"):
        outer.train(est, theta0, opt, 2, key, progress=False, settings={"lr": object()})
    assert est.calls == 0
    res = outer.train(est, theta0, opt, 2.0, key, checkpoint_every=np.int64(1), progress=False)
    assert len(res.history["loss"]) == 2 and est.calls == 2


def test_checkpoint_of_another_run_is_refused(tmp_path):
    """A checkpoint resumes only the run that wrote it: the starting theta, key, estimator and
    settings are fingerprinted, and the parts that differ are named."""
    lopt, family = _problem()
    est = estimators.ES(lopt, family, horizon=6, length=2, num_tasks=2)
    theta0, opt, key, lr = lopt.init(None), outer.meta_optimizer(0.05), jax.random.PRNGKey(1), {"meta_lr": 0.05}
    path = tmp_path / "run.npz"
    same = dict(checkpoint=path, checkpoint_every=1, progress=False)
    first = outer.train(est, theta0, opt, 2, key, settings=lr, **same)
    meta = checkpoint.read_meta(path)
    assert meta["step"] == 2 and len(meta["fingerprint"]) == 64
    assert set(meta["fingerprint_parts"]) == {"theta0", "key", "estimator", "settings"}
    differs = re.escape(str(path)) + r" was written by a different run \(fingerprint differs: {}\); delete it"
    moved, wider = jax.tree.map(lambda x: x + 1e-3, theta0), dataclasses.replace(est, sigma=0.2)
    cases = {"theta0": lambda: outer.train(est, moved, opt, 3, key, settings=lr, **same),
             "key": lambda: outer.train(est, theta0, opt, 3, jax.random.PRNGKey(2), settings=lr, **same),
             "estimator": lambda: outer.train(wider, theta0, opt, 3, key, settings=lr, **same),
             "settings": lambda: outer.train(est, theta0, opt, 3, key, settings={"meta_lr": 0.1}, **same),
             "key / settings": lambda: outer.train(est, theta0, opt, 3, jax.random.PRNGKey(2), **same)}
    for parts, call in cases.items():
        with pytest.raises(ValueError, match=differs.format(parts)):
            call()
    with pytest.raises(ValueError, match=re.escape(str(path)) + " was written at step 2, more than num_steps 1"):
        outer.train(est, theta0, opt, 1, key, settings=lr, **same)
    again = outer.train(est, theta0, opt, 2, key, settings=lr, **same)  # the same run: loaded, nothing to do
    for a, b in zip(jax.tree.leaves((first.theta, first.opt_state, first.estimator_state)),
                    jax.tree.leaves((again.theta, again.opt_state, again.estimator_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert all(np.array_equal(first.history[k], again.history[k]) for k in first.history)
    checkpoint.save_pytree(path, {"theta": theta0}, meta={"step": 1, "skipped": 0})  # no fingerprint
    with pytest.raises(ValueError, match=re.escape(str(path)) + " has no run fingerprint.*delete it"):
        outer.train(est, theta0, opt, 3, key, settings=lr, **same)
    np.savez(path, __treedef__=np.frombuffer(pickle.dumps(jax.tree.structure(theta0)), np.uint8))  # old format
    with pytest.raises(ValueError, match=re.escape(str(path)) + " stores its tree structure pickled"):
        outer.train(est, theta0, opt, 3, key, settings=lr, **same)


@pytest.mark.parametrize("lr", [float("nan"), float("inf")])
def test_non_finite_meta_learning_rate_rejected_before_compute(lr):
    """Issue: outer.train with a NaN / inf meta learning rate returned a NaN theta."""
    theta = {"w": jnp.ones(3)}

    class Never:
        def init(self, key, theta):
            return None

        def estimate(self, *a):
            raise AssertionError("no estimate may run")

    with pytest.raises(ValueError, match="learning rate"):
        outer.train(Never(), theta, optax.adam(lr), 3, jax.random.PRNGKey(0), progress=False)
