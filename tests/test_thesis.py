"""Schröter 2022: objectives, meta-training, evaluation, baselines and pretraining (lopt.thesis)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.learned import LSTMOptimizer
from lopt.thesis import tasks as T
from lopt.thesis import training as tr

SMALL = LSTMOptimizer(hidden=(8, 8), alpha=0.01)
QUAD = T.QuadraticFamily(dim=8)
# 3 super epochs of 72 steps: slices of 16, 16, 16, 16 and 8 (the last one gives no meta-update); linear weights
CFG = tr.MetaConfig(num_super_epochs=3, super_epoch=72, slice_len=16, beta=1.0, learning_rate=1e-2)
KEYS = jax.random.split(jax.random.PRNGKey(0), 4)


@pytest.fixture(scope="module")
def trained():
    return tr.train_many(SMALL, QUAD, CFG, KEYS)


def _mlp(act="sigmoid", output="sigmoid", n=64):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    return T.make_mlp(images, labels, act=act, output=output, hidden=4, batch_size=16, pool=2)


def _leaves_close(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, **kw)


# ---------------------------------------------------------------------------------------------- objectives


def test_quadratic_is_the_unsquared_norm_with_a_squared_option():
    W, y, th = jnp.array([[1.0, 2.0], [0.0, 1.0]]), jnp.array([1.0, 1.0]), jnp.array([1.0, 2.0])
    task = T.NormQuadratic(W, y, th)
    assert float(task.loss(task.init(None))) == pytest.approx(np.sqrt(4.0**2 + 1.0**2))
    assert float(dataclasses.replace(task, squared=True).loss(th)) == pytest.approx(17.0)
    tasks = T.QuadraticFamily().sample_many(jax.random.PRNGKey(0), 200)
    assert tasks.W.shape == (200, 16, 16) and tasks.theta0.shape == (200, 16)
    assert np.std(tasks.theta0) == pytest.approx(0.05, rel=0.05) and np.std(tasks.W) == pytest.approx(1.0, rel=0.05)
    assert np.std(T.QuadraticFamily(init_std=1.0).sample(jax.random.PRNGKey(1)).theta0) > 0.5


def test_activation_switch_gives_the_four_activations():
    z = jnp.linspace(-3.0, 3.0, 13)
    refs = [jax.nn.sigmoid(z), jnp.tanh(z), jnp.maximum(z, 0.0), jnp.where(z > 0, z, 0.1 * z)]
    for name, ref in zip(T.ACTIVATIONS, refs):
        np.testing.assert_allclose(T.hidden_activation(T.activation_index(name), z), ref, rtol=1e-6)
    traced = jax.jit(jax.vmap(T.hidden_activation, in_axes=(0, None)))(jnp.arange(4), z)
    np.testing.assert_allclose(traced, np.stack(refs), rtol=1e-6)
    with pytest.raises(ValueError):
        T.activation_index("gelu")


def test_keras_cross_entropy_renormalises_and_clips():
    p = jnp.array([[0.9, 0.5, 0.1], [0.2, 0.2, 0.2]])
    labels = jnp.array([0, 2])
    expected = -np.log(np.asarray(p)[[0, 1], [0, 2]] / np.asarray(p).sum(1))
    np.testing.assert_allclose(T.keras_xent(p, labels), expected, rtol=1e-6)
    logits = jnp.array([[2.0, -1.0, 0.5]])
    np.testing.assert_allclose(T.keras_xent(jax.nn.softmax(logits), jnp.array([1])),
                               -jax.nn.log_softmax(logits)[:, 1], rtol=1e-5)
    assert np.isfinite(float(T.keras_xent(jnp.array([[0.0, 1.0]]), jnp.array([0]))[0]))  # clipped at 1e-7


def test_mlp_task_shapes_init_losses():
    fam = _mlp()
    task = fam.sample(jax.random.PRNGKey(0))
    params = task.init(jax.random.PRNGKey(1))
    assert task.num_inputs == 16 and task.steps_per_epoch == 4
    assert params["hidden"]["w"].shape == (16, 4) and params["output"]["w"].shape == (4, 10)
    assert float(jnp.abs(params["hidden"]["w"]).max()) <= np.sqrt(6.0 / 20.0)  # Glorot-uniform
    assert float(jnp.abs(params["output"]["b"]).max()) == 0.0
    x = task.inputs(task.images["train"][:1])
    np.testing.assert_allclose(x[0, 0], task.images["train"][0, :2, :2].mean() / 255.0, rtol=1e-6)  # 2x2 pooling
    images, labels = task.batch(jax.random.PRNGKey(2))
    assert images.shape == (16, 8, 8) and labels.shape == (16,)
    full = task.full_loss(params, chunk=24)  # chunks with a remainder
    np.testing.assert_allclose(full, task.loss(params, (task.images["train"], task.labels["train"])), rtol=1e-5)
    assert 0.0 <= float(task.accuracy(params)) <= 1.0
    for out in T.OUTPUTS:  # the four activations (one traced index) and both outputs: four finite losses
        t = _mlp("sigmoid", out).task
        losses = jax.jit(jax.vmap(lambda a: t.with_activation(a).loss(params, (images, labels))))(jnp.arange(4))
        assert np.all(np.isfinite(losses)) and len(np.unique(np.asarray(losses).round(6))) == 4
    assert int(fam.with_activation("relu").task.act) == 2


# ---------------------------------------------------------------------------------------------- meta-training


def test_loss_weights_and_normalisation():
    np.testing.assert_allclose(tr.loss_weights(4), [1, 1, 1, 1])
    np.testing.assert_allclose(tr.loss_weights(4, 1.0), [1, 2, 3, 4])  # w_t = 1 + beta (t - 1)
    g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[1e-3]]), "z": jnp.zeros(3)}
    per = tr.normalize(g, "tensor")
    np.testing.assert_allclose([float(jnp.linalg.norm(per["a"])), float(jnp.linalg.norm(per["b"]))], [1.0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(per["z"], np.zeros(3))  # sqrt(max(sum g^2, 1e-12)): no NaN
    glob = tr.normalize(g, "global")
    total = np.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(glob)))
    assert total == pytest.approx(1.0, rel=1e-6) and float(glob["a"][1] / glob["a"][0]) == pytest.approx(4 / 3)
    assert tr.normalize(g, "off") is g
    with pytest.raises(ValueError):
        tr.MetaConfig(normalize="clip")


def test_meta_training_trains_phi_and_beats_the_untrained_optimizer(trained):
    """The classic bug: optimizer weights that are never trained. Every tensor moves, and the loss drops."""
    untrained = jax.vmap(lambda k: SMALL.init(jax.random.split(k)[0]))(KEYS)  # train's initial phi
    for a, b in zip(jax.tree.leaves(untrained), jax.tree.leaves(trained.theta)):
        assert np.all(np.abs(np.asarray(a) - np.asarray(b)).reshape(4, -1).max(1) > 1e-3)
    task = QUAD.sample(jax.random.PRNGKey(42))
    before = tr.evaluate(SMALL, untrained, task, 64, jax.random.PRNGKey(1)).losses
    after = tr.evaluate(SMALL, trained.theta, task, 64, jax.random.PRNGKey(1)).losses
    np.testing.assert_allclose(before[:, 0], after[:, 0])  # the same fixed init for every optimizer
    assert np.all(after.mean(1) < before.mean(1)) and np.median(after[:, -1]) < np.median(before[:, -1])


def test_train_many_equals_single_trainings_weighted_meta_loss_and_untrained_partial_slice(trained):
    single = jax.jit(lambda k, se: tr.train(SMALL, QUAD, dataclasses.replace(CFG, super_epoch=se), k),
                     static_argnums=1)
    one = single(KEYS[1], 72)
    _leaves_close(jax.tree.map(lambda x: x[1], trained.theta), one.theta, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(trained.losses[1], one.losses, rtol=1e-4, atol=1e-6)
    # the meta-loss of a slice: sum of w_t l(theta_t) over its pre-update losses, w_t = 1 + beta (t - 1)
    assert one.losses.shape == (3, 72) and one.meta_losses.shape == (3, 5)
    lo = np.asarray(one.losses)
    w = np.r_[np.tile(np.arange(1, 17), 4), np.arange(1, 9)]
    np.testing.assert_allclose(one.meta_losses, np.add.reduceat(lo * w, [0, 16, 32, 48, 64], axis=1), rtol=1e-5)
    run_key = jax.random.fold_in(jax.random.split(KEYS[1])[1], 0)  # super epoch 0
    task = QUAD.sample(jax.random.fold_in(run_key, 0))
    assert float(lo[0, 0]) == pytest.approx(float(task.loss(task.theta0)), rel=1e-5)  # l(theta_0) first
    # the last slice, shorter than T, runs but gives no meta-update (as the code): phi as with 64-step SEs
    short = single(KEYS[1], 64)
    _leaves_close(one.theta, short.theta, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(one.losses[:, :64], short.losses, rtol=1e-4, atol=1e-6)


def test_train_many_over_activations_per_layer_and_pretrained_start():
    fam = _mlp()
    lopt = LSTMOptimizer(hidden=(4,), alpha=0.01, preprocessing="thesis", per_layer=True, layers=("hidden", "output"))
    cfg = tr.MetaConfig(num_super_epochs=2, super_epoch=8, slice_len=4)
    keys = jnp.stack([jax.random.PRNGKey(4)] * 4)  # one seed: runs differ by their activation only
    theta0, pre_losses = tr.pretrain_many(lopt, keys, num_samples=64 * 20, batch_size=64)
    assert pre_losses.shape == (4, 20)
    np.testing.assert_array_equal(theta0["hidden"]["lstm"][0]["kernel"], theta0["output"]["lstm"][0]["kernel"])
    res = tr.train_many(lopt, fam, cfg, keys, jnp.arange(4), theta0)
    assert np.all(np.isfinite(res.losses)) and res.losses.shape == (4, 2, 8)
    assert not np.allclose(res.theta["hidden"]["lstm"][0]["kernel"], res.theta["output"]["lstm"][0]["kernel"])
    first = np.asarray(res.losses[:, 0, 0])  # same init and batch, four activations: four losses
    assert len(np.unique(first.round(6))) == 4
    run_key = jax.random.fold_in(jax.random.split(keys[0])[1], 0)  # super epoch 0 (TruncatedTraining's keys)
    params = fam.task.init(jax.random.fold_in(run_key, 1))
    batch = fam.task.batch(jax.random.fold_in(jax.random.fold_in(run_key, 2), 0))
    np.testing.assert_allclose(first[2], fam.task.with_activation("relu").loss(params, batch), rtol=1e-5)
    c = tr.evaluate(lopt, res.theta, fam.task, 8, jax.random.PRNGKey(5), acts=jnp.arange(4), eval_every=4)
    assert c.losses.shape == (4, 8) and c.full.shape == (4, 3) and list(c.full_steps) == [0, 4, 8]
    p0 = fam.task.with_activation(1).init(jax.random.split(jax.random.PRNGKey(5))[0])
    np.testing.assert_allclose(c.full[1, 0], fam.task.with_activation(1).full_loss(p0), rtol=1e-5)


def test_pretraining_learns_the_sign_of_minus_the_gradient():
    lopt = LSTMOptimizer(alpha=0.01, preprocessing="thesis")
    theta, losses = tr.pretrain(lopt, jax.random.PRNGKey(6), num_samples=128 * 300)
    assert float(losses[-20:].mean()) < 0.5 * float(losses[:20].mean())
    g = 1e-3 * jax.random.normal(jax.random.PRNGKey(7), (512,))
    opt = lopt.opt_fn(theta)
    u, _ = opt.update(g, opt.init(g))
    assert float(jnp.mean(jnp.sign(u) == -jnp.sign(g))) > 0.9
    assert float(tr.sign_weighted_loss(jnp.array([1.0]), jnp.array([-1.0]))) == pytest.approx(2 * np.exp(2.0))


def test_tuned_baselines_on_the_fixed_problem():
    task = QUAD.sample(jax.random.PRNGKey(8))
    for name in ("adam", "sgd"):
        b = tr.tune_baseline(name, task, 50, jax.random.PRNGKey(9), np.logspace(-3, 0, 4))
        assert b.curves.losses.shape == (4, 50) and np.isfinite(b.scores[b.best])
        assert b.scores[b.best] < float(task.loss(task.theta0))


def test_share_of_gradients_above_a_threshold():
    task = QUAD.sample(jax.random.PRNGKey(8))
    g = np.abs(np.asarray(jax.grad(task.loss)(task.theta0)))
    # learning rate 0: the run stays at theta0, so the share is that of theta0's gradient, at every step
    thetas = {"learning_rate": jnp.asarray([0.0, 0.0])}
    for thr in (0.0, float(np.median(g)), 1e9):
        got = tr.share_above(tr.LearningRate("sgd"), thetas, task, 5, jax.random.PRNGKey(1), thr)
        np.testing.assert_allclose(got, [np.mean(g > thr)] * 2, rtol=1e-6)
