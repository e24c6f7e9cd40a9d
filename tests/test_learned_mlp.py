"""The per-parameter MLP learned optimizer (Metz et al. 2019 sec. 4.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import tasks, unroll
from lopt.learned import MLPOptimizer


def _task():
    return tasks.Quadratic.from_eigenvalues(jax.random.PRNGKey(0), [0.5, 1.0, 2.0])


def test_size_and_feature_groups():
    full = MLPOptimizer()
    theta = full.init(jax.random.PRNGKey(0))
    n_weights = sum(x.size for x in jax.tree.leaves(theta))
    assert 500 < n_weights < 1500  # "about 1k weights"
    assert full.num_inputs == 2 + 5 + 9
    assert MLPOptimizer(use_momentum=False).num_inputs == 2 + 9
    assert MLPOptimizer(use_time=False).num_inputs == 2 + 5


def test_features_are_normalised_per_tensor():
    opt = MLPOptimizer(use_time=False)
    g = jnp.arange(1.0, 7.0).reshape(2, 3) * 100.0
    x = opt.features(g, g * 0.01, jnp.zeros((2, 3, 5)) + 1e-3, jnp.array(0.0))
    rms = jnp.sqrt(jnp.mean(x**2, axis=(0, 1)))
    np.testing.assert_allclose(rms, 1.0, rtol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"use_momentum": False}, {"use_time": False}])
def test_fresh_optimizer_takes_small_finite_steps(kw):
    lopt = MLPOptimizer(**kw)
    opt = lopt.opt_fn(lopt.init(jax.random.PRNGKey(1)))
    task = _task()
    res = jax.jit(lambda: unroll.unroll(task, opt, unroll.init_state(task, opt, None), None, 10))()
    step = jnp.abs(res.state.params - task.w0)
    assert jnp.all(jnp.isfinite(res.losses))
    assert 0 < float(step.max()) < 10 * 10 * lopt.step_mult * 2  # ~step_mult per step, 10 steps
    assert int(res.state.step) == 10


def test_outer_gradient_is_finite_and_matches_finite_differences():
    lopt = MLPOptimizer(step_mult=0.1)
    theta = lopt.init(jax.random.PRNGKey(2))
    task = _task()
    f = jax.jit(lambda th: unroll.meta_loss(th, lopt.opt_fn, task, None, 20))
    g = jax.grad(f)(theta)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
    direction = jax.tree.map(lambda x: x / jnp.sqrt(sum(jnp.sum(y**2) for y in jax.tree.leaves(g))), g)
    eps = 1e-2
    plus = f(jax.tree.map(lambda t, d: t + eps * d, theta, direction))
    minus = f(jax.tree.map(lambda t, d: t - eps * d, theta, direction))
    directional = sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(direction)))
    np.testing.assert_allclose((plus - minus) / (2 * eps), directional, rtol=5e-2)


def test_state_keeps_each_moving_average_as_its_own_array():
    # per tensor a tuple of len(decays) arrays shaped like it: the update reads each contiguously
    lopt = MLPOptimizer()
    state = lopt.opt_fn(lopt.init(jax.random.PRNGKey(0))).init({"w": jnp.zeros((3, 2)), "s": jnp.zeros(())})
    for name, shape in (("w", (3, 2)), ("s", ())):
        assert isinstance(state.emas[name], tuple) and len(state.emas[name]) == len(lopt.decays)
        assert all(m.shape == shape for m in state.emas[name])


def test_update_requires_params():
    lopt = MLPOptimizer()
    opt = lopt.opt_fn(lopt.init(jax.random.PRNGKey(0)))
    p = jnp.zeros(3)
    with pytest.raises(ValueError, match="params"):
        opt.update(p, opt.init(p))


def _reference_update(lopt, theta, grads, params, emas, step):
    """The module docstring's formula, written out directly: per tensor, concatenate the inputs,
    divide each by its RMS over the tensor, append tanh(t / s - 1), apply the MLP. ``emas`` as the
    optimizer's state keeps them (per tensor a tuple of arrays); stacked here on a last axis."""
    decays = jnp.asarray(lopt.decays)
    emas = jax.tree.map(lambda m: jnp.stack(m, axis=-1), emas, is_leaf=lambda x: isinstance(x, tuple))
    new_emas = jax.tree.map(lambda m, g: decays * m + (1.0 - decays) * g[..., None], emas, grads)

    def one(g, p, m):
        cols = [g.reshape(-1, 1), p.reshape(-1, 1)] + ([m.reshape(-1, len(lopt.decays))] if lopt.use_momentum else [])
        x = jnp.concatenate(cols, axis=1)
        x = x / jnp.sqrt(jnp.mean(x**2, axis=0) + 1e-12)
        if lopt.use_time:
            t = jnp.tanh(step / jnp.asarray(lopt.time_scales) - 1.0)
            x = jnp.concatenate([x, jnp.tile(t, (x.shape[0], 1))], axis=1)
        h = jnp.maximum(x @ theta["w1"] + theta["b1"], 0.0)
        out = h @ theta["w2"] + theta["b2"]
        return (lopt.step_mult * out[:, 0] * jnp.exp(lopt.exp_mult * out[:, 1])).reshape(g.shape)

    unstack = lambda m: tuple(m[..., k] for k in range(len(lopt.decays)))  # noqa: E731
    return jax.tree.map(one, grads, params, new_emas), jax.tree.map(unstack, new_emas)


_SHAPES = {"w": (6, 5), "b": (5,), "s": (), "k": (3, 3, 2, 4)}


def _tree(key, scale=1.0):
    keys = jax.random.split(key, len(_SHAPES))
    return {n: scale * jax.random.normal(k, s) for (n, s), k in zip(_SHAPES.items(), keys)}


def _theta(lopt, key):
    # random biases too (init's are zero), and large enough weights that exp_mult matters
    theta = lopt.init(key)
    return jax.tree.map(lambda x, k: x + 0.5 * jax.random.normal(k, x.shape), theta,
                        dict(zip(theta, jax.random.split(jax.random.PRNGKey(7), len(theta)))))


@pytest.mark.parametrize("kw", [{}, {"use_momentum": False}, {"use_time": False},
                                {"use_momentum": False, "use_time": False}, {"exp_mult": 0.5}])
def test_update_matches_reference_formula(kw):
    lopt = MLPOptimizer(**kw)
    theta = _theta(lopt, jax.random.PRNGKey(3))
    opt = lopt.opt_fn(theta)
    params = _tree(jax.random.PRNGKey(4))
    state = opt.init(params)
    emas = state.emas
    reference = jax.jit(lambda *a: _reference_update(lopt, theta, *a))
    for i in range(3):
        grads = _tree(jax.random.PRNGKey(10 + i), scale=10.0 ** (i - 1))
        updates, state = jax.jit(opt.update)(grads, state, params)
        ref_updates, emas = reference(grads, params, emas, float(i))
        for n in _SHAPES:
            assert updates[n].shape == _SHAPES[n]
            scale = float(jnp.max(jnp.abs(ref_updates[n])))  # atol: cancellation in the output layer
            np.testing.assert_allclose(updates[n], ref_updates[n], rtol=1e-5, atol=1e-6 * scale)
            np.testing.assert_allclose(state.emas[n], emas[n], rtol=1e-6, atol=1e-12)
        params = jax.tree.map(lambda p, u: p + 100.0 * u, params, updates)
    assert int(state.step) == 3


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_inputs_propagate_as_through_relu(bad):
    # the fused update adds a hidden unit where z > 0 or z is NaN (a select, not relu's maximum): a NaN or an
    # infinite gradient entry must still give non-finite updates exactly where the formula as written does
    lopt = MLPOptimizer()
    theta = _theta(lopt, jax.random.PRNGKey(3))
    opt = lopt.opt_fn(theta)
    params = _tree(jax.random.PRNGKey(4))
    state = opt.init(params)
    grads = _tree(jax.random.PRNGKey(5))
    grads["w"] = grads["w"].at[2, 3].set(bad)
    updates, _ = jax.jit(opt.update)(grads, state, params)
    ref_updates, _ = _reference_update(lopt, theta, grads, params, state.emas, 0.0)
    for n in _SHAPES:
        np.testing.assert_array_equal(np.isfinite(updates[n]), np.isfinite(ref_updates[n]))
    # NaN: the tensor's RMS is NaN, so is all of it; inf: the RMS scale is 0 and only the entry itself (0 * inf)
    assert not np.isfinite(updates["w"][2, 3]) and np.isfinite(updates["b"]).all()
    assert np.isfinite(updates["w"]).sum() == (0 if np.isnan(bad) else updates["w"].size - 1)


@pytest.mark.parametrize("kw", [{}, {"use_momentum": False, "use_time": False}])
def test_theta_gradient_matches_reference_formula(kw):
    lopt = MLPOptimizer(step_mult=0.1, **kw)

    def loss(theta, update_fn):
        params, emas, total = _tree(jax.random.PRNGKey(4)), None, 0.0
        state = lopt.opt_fn(theta).init(params)
        emas = state.emas
        for i in range(3):
            grads = jax.tree.map(lambda p: 2.0 * p + 0.1 * i, params)  # a quadratic's gradient
            updates, emas = update_fn(theta, grads, params, emas, float(i))
            params = jax.tree.map(lambda p, u: p + u, params, updates)
            total = total + sum(jnp.sum(p**2) for p in jax.tree.leaves(params))
        return total

    def new(theta, grads, params, emas, step):
        updates, state = lopt.opt_fn(theta).update(grads, lopt.opt_fn(theta).init(params)._replace(
            emas=emas, step=jnp.asarray(step, jnp.int32)), params)
        return updates, state.emas

    ref = lambda theta, *a: _reference_update(lopt, theta, *a)  # noqa: E731
    theta = _theta(lopt, jax.random.PRNGKey(5))
    g_new = jax.jit(jax.grad(lambda th: loss(th, new)))(theta)
    g_ref = jax.jit(jax.grad(lambda th: loss(th, ref)))(theta)
    for n in theta:
        np.testing.assert_allclose(g_new[n], g_ref[n], rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(g_ref[n]))))


@pytest.mark.parametrize("kw", [{}, {"use_momentum": False}, {"use_time": False}])
@pytest.mark.parametrize("shape", [(7,), (6, 5), (3, 3, 2, 4)])
def test_hand_vjp_equals_the_vjp_of_the_formula_as_written(kw, shape):
    """Reverse mode of the update (``_backward``) against ``jax.vjp`` of ``direction``: every cotangent, theta's,
    the gradient's, the parameter's, each moving average's and the step's."""
    from lopt.learned.mlp import _backward

    lopt = MLPOptimizer(**kw)
    k = jax.random.split(jax.random.PRNGKey(11), 6)
    theta = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(k[5], a.shape), lopt.init(k[0]))
    g, p, ct = (jax.random.normal(kk, shape) for kk in (k[1], k[2], k[4]))
    m = tuple(0.5 * jax.random.normal(jax.random.fold_in(k[3], i), shape) for i in range(len(lopt.decays)))
    t = jnp.asarray(37.0)
    formula = lambda theta, g, p, m, t: lopt.direction(theta, g, p, jnp.stack(m, axis=-1), t)  # noqa: E731
    want = jax.jit(lambda *a: jax.vjp(formula, *a)[1](ct))(theta, g, p, m, t)  # one program, not op by op
    got = _backward(lopt, theta, g, p, m, t, ct)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6 * float(jnp.max(jnp.abs(b))) + 1e-30)
    if kw.get("use_time", True):
        assert float(jnp.abs(got[-1])) > 0  # the step reaches the update through the time features
