"""lopt.ablations: the configurations of Metz et al. 2019 Fig. 8 and outer-training over seeds."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lopt import ablations, outer, tasks, truncation

FAM = tasks.LinearRegressionFamily(dim=4, num_data=6)
SCHED = truncation.curriculum(2, 6, 4, jitter=0.2)
FIXED = {"short": 1, "medium": 3, "long": 8}


def make(name: str, inner_steps: float = 24.0) -> ablations.Setup:
    return ablations.setup(name, FAM, 8, SCHED, 7, 2, 4, FIXED, inner_steps, mlp_hidden=4)


@pytest.mark.parametrize("name", list(ablations.ABLATIONS))
def test_setup_builds_each_configuration(name):
    est_name, trunc, overrides = ablations.ABLATIONS[name]
    s = make(name)
    assert type(s.estimator) is ablations.ESTIMATORS[est_name]
    assert s.estimator.num_tasks == 2 and s.estimator.horizon == 8
    assert s.learned_opt.use_momentum == overrides.get("use_momentum", True)
    assert s.learned_opt.use_time == overrides.get("use_time", True)
    if trunc == "curriculum":
        assert s.length is None and s.outer_steps == 4 and s.estimator.max_length == 7
    else:
        assert s.length == FIXED[trunc] and s.estimator.length == FIXED[trunc]
        assert s.outer_steps == round(24 / FIXED[trunc])  # the same total inner steps


def test_paper_ablations_are_all_there():
    kinds = {v[0] for v in ablations.ABLATIONS.values()}
    assert kinds == {"Merged", "Reparameterization", "ES", "PES"}
    assert {v[1] for v in ablations.ABLATIONS.values()} == {"curriculum", "short", "medium", "long"}
    assert make("no momentum").learned_opt.num_inputs == 2 + 9  # grad, param, 9 time features
    assert make("no time").learned_opt.num_inputs == 2 + 5  # grad, param, 5 momenta


def test_fixed_outer_steps_matches_inner_steps():
    assert ablations.fixed_outer_steps(3000, 1) == 3000
    assert ablations.fixed_outer_steps(3000, 10) == 300
    assert ablations.fixed_outer_steps(3000, 7) == 429
    assert ablations.fixed_outer_steps(3, 50) == 1  # at least one outer step
    with pytest.raises(ValueError, match="length must be >= 1"):
        ablations.fixed_outer_steps(100, 0)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown ablation 'no mom'; allowed values: merged"):
        make("no mom")
    with pytest.raises(ValueError, match="fixed_lengths needs a length for 'short'"):
        ablations.setup("fixed short", FAM, 8, SCHED, 7, 2, 4, {"medium": 3, "long": 8}, 24.0)
    with pytest.raises(ValueError, match=r"must be in \[1, horizon = 8\]"):
        ablations.setup("fixed long", FAM, 8, SCHED, 7, 2, 4, {**FIXED, "long": 9}, 24.0)


def test_train_seeds_equals_outer_train_per_seed_and_scores_every_pause():
    s = make("merged (paper)")
    thetas = [s.learned_opt.init_linear(jax.random.PRNGKey(i), 0.05, feature="grad") for i in range(2)]
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    calls = []

    def score(theta):
        calls.append(1)
        return float(np.mean(outer.evaluate(s.learned_opt, FAM, theta, 8, 2, jax.random.PRNGKey(9))))

    runs = ablations.train_seeds(s.estimator, thetas, outer.meta_optimizer(1e-3), 5, keys, every=2, score=score,
                                 progress=False)
    assert runs.pause_steps.tolist() == [2, 4, 5]
    assert runs.scores.shape == (2, 3) and runs.initial.shape == (2,) and len(calls) == 2 * 4
    assert runs.history["length"].shape == (2, 5) and runs.history["loss"].shape == (2, 5)
    assert np.all(runs.history["length"] >= 1) and np.all(runs.history["length"] <= 7)
    assert runs.skipped.tolist() == [0, 0]
    # seed 1 trains exactly as it would alone
    alone = outer.train(s.estimator, thetas[1], outer.meta_optimizer(1e-3), 5, keys[1], progress=False)
    for a, b in zip(jax.tree.leaves(alone.theta), jax.tree.leaves(jax.tree.map(lambda x: x[1], runs.theta))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert runs.scores[1, -1] == pytest.approx(score(alone.theta), rel=1e-5)


def test_train_seeds_needs_one_key_per_seed():
    s = make("ES only")
    theta = s.learned_opt.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="3 keys for 1 seeds"):
        ablations.train_seeds(s.estimator, [theta], outer.meta_optimizer(1e-3), 2, jax.random.split(
            jax.random.PRNGKey(0), 3), every=1, score=lambda th: 0.0, progress=False)


def test_late_score_averages_the_last_pauses():
    runs = ablations.SeedRuns(None, {}, np.array([25, 50, 75, 100]), np.array([[4.0, 3.0, 2.0, 1.0]]),
                              np.array([5.0]), np.array([0]))
    assert ablations.late_score(runs, 0.25).tolist() == [1.5]  # pauses at 75 and 100
    assert ablations.late_score(runs, 1.0).tolist() == [2.5]
