"""Tests of lopt.selection: pilots choosing the meta learning rate, meta-training paused to score and select theta,
checkpointed resumption, and restarts of blown-up runs at a fallback meta learning rate."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_tuning import IsotropicQuadratics

from lopt import selection


def test_pick_learning_rate_prefers_lowest_late_loss_and_skips_divergence():
    pilots = {1e-3: {"loss": [5.0, 4.0, 3.0, 2.9]}, 1e-2: {"loss": [5.0, 1.0, 2.0, 2.0]},
              1e-1: {"loss": [5.0, 0.1, np.nan, 0.1]}, 1.0: {"loss": [5.0, 0.1, 0.1, 0.1], "skipped": [0, 0, 1, 0]}}
    assert selection.pick_learning_rate(pilots) == 1e-2
    with pytest.raises(ValueError, match="smaller rates"):
        selection.pick_learning_rate({1.0: {"loss": [np.inf, np.nan]}})


def test_train_and_select_keeps_best_scored_theta_and_matches_plain_training():
    from lopt import estimators, outer

    from lopt.optimizers import Hyperparameters

    hp = Hyperparameters("sgd", {"learning_rate": 0.05}, log=("learning_rate",))
    est = estimators.FullUnroll(hp, IsotropicQuadratics(), num_steps=5, num_tasks=2)
    opt = outer.meta_optimizer(0.3)
    seen = []

    def score(theta):  # prefer learning rates near 0.2: the best pause is not the last one
        seen.append(float(np.exp(theta["learning_rate"])))
        return abs(seen[-1] - 0.2)

    sel = selection.train_and_select(est, hp.init(), opt, 7, jax.random.PRNGKey(0), every=3, score=score, progress=False)
    res, best, scores = sel.result, sel.best, sel.scores
    assert len(scores) == 3 and len(res.history["loss"]) == 7
    assert sel.steps.tolist() == [3, 6, 7] and len(sel.thetas) == 3
    assert float(np.exp(best["learning_rate"])) == pytest.approx(seen[int(np.argmin(scores))])
    assert sel.best_step == sel.steps[int(np.argmin(scores))]
    assert [float(np.exp(t["learning_rate"])) for t in sel.thetas] == pytest.approx(seen)
    assert sel.first_at_most(np.inf) == 0 and sel.first_at_most(-1.0) is None
    assert sel.first_at_most(float(np.sort(scores)[1])) == int(np.flatnonzero(scores <= np.sort(scores)[1])[0])
    plain = outer.train(est, hp.init(), opt, 7, jax.random.PRNGKey(0), progress=False)
    np.testing.assert_array_equal(np.asarray(res.theta["learning_rate"]), np.asarray(plain.theta["learning_rate"]))


def test_train_and_select_resumes_a_killed_run_to_the_same_selection(tmp_path):
    """With a checkpoint path, a run killed after its second pause resumes there (pauses kept on disk) and ends
    with the same scores, thetas and result as an uninterrupted run; the files go once it completes; a checkpoint of
    another run (another meta learning rate in ``settings``) is discarded and the run starts over."""
    from lopt import estimators, outer
    from lopt.optimizers import Hyperparameters

    hp = Hyperparameters("sgd", {"learning_rate": 0.05}, log=("learning_rate",))
    est = estimators.FullUnroll(hp, IsotropicQuadratics(), num_steps=5, num_tasks=2)
    opt, key = outer.meta_optimizer(0.3), jax.random.PRNGKey(0)
    score = lambda theta: abs(float(np.exp(theta["learning_rate"])) - 0.2)
    kw = dict(every=3, progress=False, settings={"meta_lr": 0.3})
    plain = selection.train_and_select(est, hp.init(), opt, 8, key, score=score, **kw)

    class Killed(Exception):
        pass

    calls = []

    def dies_at_second_pause(theta):
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        return score(theta)

    path = tmp_path / "ckpt" / "10_task.npz"
    with pytest.raises(Killed):
        selection.train_and_select(est, hp.init(), opt, 8, key, score=dies_at_second_pause, checkpoint=path, **kw)
    assert path.is_file() and (tmp_path / "ckpt" / "10_task.pauses.npz").is_file()
    resumed = selection.train_and_select(est, hp.init(), opt, 8, key, score=score, checkpoint=path, **kw)
    assert resumed.steps.tolist() == plain.steps.tolist() == [3, 6, 8]
    np.testing.assert_array_equal(resumed.scores, plain.scores)
    for a, b in zip(resumed.thetas, plain.thetas):
        np.testing.assert_array_equal(np.asarray(a["learning_rate"]), np.asarray(b["learning_rate"]))
    np.testing.assert_array_equal(np.asarray(resumed.result.theta["learning_rate"]),
                                  np.asarray(plain.result.theta["learning_rate"]))
    assert not path.exists() and not list((tmp_path / "ckpt").iterdir())
    # another run's leftovers: discarded, the run starts over and gives its own result
    calls.clear()
    with pytest.raises(Killed):
        selection.train_and_select(est, hp.init(), opt, 8, key, score=dies_at_second_pause, checkpoint=path, **kw)
    other = selection.train_and_select(est, hp.init(), outer.meta_optimizer(0.1), 8, key, score=score, checkpoint=path,
                                    every=3, progress=False, settings={"meta_lr": 0.1})
    fresh = selection.train_and_select(est, hp.init(), outer.meta_optimizer(0.1), 8, key, score=score, every=3,
                                    progress=False, settings={"meta_lr": 0.1})
    np.testing.assert_array_equal(other.scores, fresh.scores)
    # leftovers of a run whose theta has another shape (its pauses cannot be read as this run's): discarded too
    calls.clear()
    with pytest.raises(Killed):
        selection.train_and_select(est, hp.init(), opt, 8, key, score=dies_at_second_pause, checkpoint=path, **kw)
    hp2 = Hyperparameters("momentum", {"learning_rate": 0.05, "beta": 0.5}, log=("learning_rate",))
    est2 = estimators.FullUnroll(hp2, IsotropicQuadratics(), num_steps=5, num_tasks=2)
    other = selection.train_and_select(est2, hp2.init(), opt, 8, key, score=score, checkpoint=path, **kw)
    fresh = selection.train_and_select(est2, hp2.init(), opt, 8, key, score=score, **kw)
    np.testing.assert_array_equal(other.scores, fresh.scores)
    assert not path.exists()

def _restart_setup():
    from lopt import estimators, outer
    from lopt.optimizers import Hyperparameters

    hp = Hyperparameters("sgd", {"learning_rate": 0.05}, log=("learning_rate",))
    est = estimators.FullUnroll(hp, IsotropicQuadratics(), num_steps=5, num_tasks=2)
    return outer, hp, est, outer.meta_optimizer(0.3), outer.meta_optimizer(0.03), jax.random.PRNGKey(0)


def test_train_and_select_restarts_a_blown_up_run_from_the_best_pause_with_the_fallback(tmp_path):
    """A pause scoring more than ``blowup`` times the best before it rejects the meta learning rate: training
    restarts from the best pause's theta with the fallback optimizer (fresh state, fresh problems) and counts on from
    the blown-up pause; the histories of both parts make the run's; a killed restarted run resumes to the same end."""
    outer, hp, est, opt, slow, key = _restart_setup()
    values = [1.0, 1.6, 0.5, 0.4]  # the second pause is 1.6x the first: a blow-up at blowup 1.5

    def scorer(start=0):
        it = iter(values[start:])
        return lambda theta: next(it)

    kw = dict(every=3, progress=False, fallbacks=[slow], blowup=1.5)
    sel = selection.train_and_select(est, hp.init(), opt, 10, key, score=scorer(), **kw)
    assert sel.restarts == ((6, 3),) and sel.steps.tolist() == [3, 6, 9, 10] and sel.best_step == 10
    assert len(sel.result.history["loss"]) == 10 and len(sel.result.history["skipped"]) == 10
    first = outer.train(est, hp.init(), opt, 6, key, progress=False)
    again = outer.train(est, sel.thetas[0], slow, 4, jax.random.fold_in(key, 2**31 - 1), progress=False)
    np.testing.assert_array_equal(np.asarray(sel.result.theta["learning_rate"]), np.asarray(again.theta["learning_rate"]))
    np.testing.assert_array_equal(sel.result.history["loss"], np.concatenate([first.history["loss"], again.history["loss"]]))
    np.testing.assert_array_equal(np.asarray(sel.thetas[0]["learning_rate"]),
                                  np.asarray(outer.train(est, hp.init(), opt, 3, key, progress=False).theta["learning_rate"]))
    # the same scores without a fallback: no restart, one run of 10 steps
    plain = selection.train_and_select(est, hp.init(), opt, 10, key, score=scorer(), every=3, progress=False)
    assert plain.restarts == () and not np.array_equal(np.asarray(plain.result.theta["learning_rate"]),
                                                       np.asarray(sel.result.theta["learning_rate"]))
    # killed at the first pause after the restart: resumes from the files to the same selection, then removes them
    path = tmp_path / "ckpt" / "10_task.npz"
    first_three = scorer()
    calls = []

    def dies_after_restart(theta):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return first_three(theta)

    with pytest.raises(RuntimeError, match="killed"):
        selection.train_and_select(est, hp.init(), opt, 10, key, score=dies_after_restart, checkpoint=path, **kw)
    assert (tmp_path / "ckpt" / "10_task.restart1.npz").is_file()
    resumed = selection.train_and_select(est, hp.init(), opt, 10, key, score=scorer(2), checkpoint=path, **kw)
    assert resumed.restarts == sel.restarts
    np.testing.assert_array_equal(resumed.scores, sel.scores)
    np.testing.assert_array_equal(resumed.result.history["loss"], sel.result.history["loss"])
    np.testing.assert_array_equal(np.asarray(resumed.result.theta["learning_rate"]),
                                  np.asarray(sel.result.theta["learning_rate"]))
    assert not list((tmp_path / "ckpt").iterdir())


def test_blow_up_criterion_and_its_errors():
    outer, hp, est, opt, slow, key = _restart_setup()
    assert not selection._blew_up([1.0], [0.0], 1.5, 0.5)  # a first pause has nothing to compare with
    assert selection._blew_up([1.0, np.inf], [0.0, 0.0], 1.5, 0.5)  # a non-finite score
    assert not selection._blew_up([1.0, 1.4], [0.0, 0.0], 1.5, 0.5) and selection._blew_up([1.0, 1.6], [0.0, 0.0], 1.5, 0.5)
    assert selection._blew_up([-1.0, -0.4], [0.0, 0.0], 1.5, 0.5)  # relative to the best's magnitude
    assert selection._blew_up([1.0, 0.9], [0.0, 0.6], 1.5, 0.5)  # most outer steps since the last pause skipped
    with pytest.raises(ValueError, match="blowup > 1"):
        selection.train_and_select(est, hp.init(), opt, 4, key, every=2, score=lambda t: 0.0, blowup=1.0)
