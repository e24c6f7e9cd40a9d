"""The coordinatewise LSTM optimizer (Andrychowicz et al. 2016 as Schröter 2022 trains it)."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import recurrent
from lopt.learned import LSTMOptimizer
from lopt.learned.lstm import log_sign, lstm_parts, rho

H = (5, 4)
P = 10.0


def _params():
    return {"hidden": {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.array([0.5, -0.5])},
            "output": {"w": jnp.array([[0.3], [-0.2]]), "b": jnp.array([0.1])}}


def _grads(params, scale=1.0):
    return jax.tree.map(lambda p: scale * (jnp.sin(3.0 * p) + 0.2), params)


def _reference_lstm(phi, s, x, hidden):
    """Keras's LSTM equations for one coordinate, in numpy (gates i, f, c, o)."""
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))
    out, off, x = [], 0, np.atleast_1d(np.asarray(x, np.float64))
    for layer, n in zip(phi["lstm"], hidden):
        k, r, b = (np.asarray(layer[name], np.float64) for name in ("kernel", "recurrent", "bias"))
        h, c = s[off:off + n], s[off + n:off + 2 * n]
        z = x @ k + h @ r + b
        i, f, u, o = z[:n], z[n:2 * n], z[2 * n:3 * n], z[3 * n:]
        c = sig(f) * c + sig(i) * np.tanh(u)
        x = sig(o) * np.tanh(c)
        out += [x, c]
        off += 2 * n
    return np.concatenate(out)


def test_theta_init_is_keras_and_state_starts_at_zero():
    lstm = LSTMOptimizer(hidden=H)
    phi = lstm.init(jax.random.PRNGKey(0))
    assert [sorted(layer) for layer in phi["lstm"]] == [["bias", "kernel", "recurrent"]] * 2 and "readout" not in phi
    (l1, l2) = phi["lstm"]
    assert l1["kernel"].shape == (1, 20) and l1["recurrent"].shape == (5, 20) and l2["kernel"].shape == (5, 16)
    np.testing.assert_array_equal(l1["bias"], np.r_[np.zeros(5), np.ones(5), np.zeros(10)])  # forget gate at 1
    np.testing.assert_allclose(l2["recurrent"] @ l2["recurrent"].T, np.eye(4), atol=1e-5)  # orthogonal rows
    assert np.abs(l1["kernel"]).max() <= np.sqrt(6.0 / 21.0)  # Glorot-uniform (fan 1 + 20)
    state = lstm.opt_fn(phi).init(_params())
    assert state.s["hidden"]["w"].shape == (2, 3, lstm.state_size) and lstm.state_size == 18
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(state))
    assert LSTMOptimizer(preprocessing="log_sign").init(jax.random.PRNGKey(0))["lstm"][0]["kernel"].shape == (2, 80)



def _qr_operand_ranks(jaxpr) -> list[int]:
    """Rank of the operand of every QR factorisation (``qr``, ``geqrf``) in a jaxpr, sub-jaxprs (scan, jit) included."""
    ranks = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("qr", "geqrf"):
            ranks.append(eqn.invars[0].aval.ndim)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            ranks += _qr_operand_ranks(sub)
    return ranks


@pytest.mark.parametrize("per_layer", [False, True])
def test_vmapped_init_factors_one_matrix_at_a_time_with_the_same_bits(per_layer):
    """Many trainings init under vmap: a batched CPU QR deadlocked jaxlib 0.10's 2-thread pool (notebook 17), so
    each recurrent kernel is factored alone (rank-2 operands only), bit for bit the unbatched initialiser."""
    lstm = LSTMOptimizer(hidden=H, per_layer=per_layer, layers=("hidden", "output") if per_layer else ())
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    ranks = _qr_operand_ranks(jax.make_jaxpr(jax.vmap(jax.vmap(lstm.init)))(keys[None]).jaxpr)
    assert ranks and set(ranks) == {2}
    batched = jax.jit(jax.vmap(lstm.init))(keys)
    for i, k in enumerate(keys):
        one = jax.tree.map(lambda x: x[i], batched)
        reference = lstm.init(k)
        jax.tree.map(np.testing.assert_array_equal, one, reference)
        for layer in jax.tree.leaves(one, is_leaf=lambda x: isinstance(x, dict) and "recurrent" in x):
            r = np.asarray(layer["recurrent"])
            np.testing.assert_allclose(r @ r.T, np.eye(r.shape[0]), atol=1e-5)

def test_update_is_keras_lstm_per_coordinate_and_alpha_times_sum_of_h():
    lstm = LSTMOptimizer(hidden=H, alpha=0.01)
    phi = lstm.init(jax.random.PRNGKey(1))
    opt, params = lstm.opt_fn(phi), _params()
    state = opt.init(params)
    for k in range(3):
        grads = _grads(params, 1.0 + k)
        updates, new = opt.update(grads, state, params)
        assert jax.tree.structure(updates) == jax.tree.structure(params)
        for name in ("hidden", "output"):
            for leaf in ("w", "b"):
                g = np.asarray(grads[name][leaf]).ravel()
                s = np.asarray(state.s[name][leaf]).reshape(g.size, -1)
                for i in range(g.size):
                    ref = _reference_lstm(phi, s[i], g[i], H)
                    np.testing.assert_allclose(new.s[name][leaf].reshape(g.size, -1)[i], ref, rtol=1e-5, atol=1e-6)
                    np.testing.assert_allclose(updates[name][leaf].ravel()[i], 0.01 * ref[-8:-4].sum(), rtol=1e-5, atol=1e-8)
        state = new


def test_trainable_readout_has_no_bias():
    lstm = LSTMOptimizer(hidden=H, trainable_readout=True)
    phi = lstm.init(jax.random.PRNGKey(2))
    assert phi["readout"].shape == (4,)
    s = jax.random.normal(jax.random.PRNGKey(3), (lstm.state_size,))
    np.testing.assert_allclose(lstm.readout(phi, s), 0.001 * s[-8:-4] @ phi["readout"], rtol=1e-6)
    assert float(lstm.readout(phi, jnp.zeros(lstm.state_size))) == 0.0


def test_permuting_coordinates_permutes_updates():
    lstm = LSTMOptimizer(hidden=H)
    opt = lstm.opt_fn(lstm.init(jax.random.PRNGKey(4)))
    perm = np.random.default_rng(0).permutation(12)
    x = jnp.zeros(12)
    s, sp = opt.init(x), opt.init(x)
    for k in range(4):
        g = jax.random.normal(jax.random.PRNGKey(10 + k), (12,)) * 0.5
        u, s = opt.update(g, s)
        up, sp = opt.update(g[perm], sp)
        np.testing.assert_allclose(up, u[perm], rtol=1e-6, atol=1e-9)
    # and every tensor has its own states: a tensor's updates do not depend on the other tensors
    two = {"a": jnp.zeros(5), "b": jnp.zeros(7)}
    s2, sa = opt.init(two), opt.init(two["a"])
    for k in range(3):
        g = {"a": jnp.linspace(-1, 1, 5) * (k + 1), "b": jnp.linspace(2, 3, 7) * (k - 1)}
        u2, s2 = opt.update(g, s2)
        ua, sa = opt.update(g["a"], sa)
        np.testing.assert_allclose(u2["a"], ua, rtol=1e-6, atol=1e-9)


def test_per_layer_gives_each_layer_its_own_network():
    lstm = LSTMOptimizer(hidden=H, per_layer=True, layers=("hidden", "output"))
    theta = lstm.init(jax.random.PRNGKey(5))
    assert set(theta) == {"hidden", "output"}
    assert not np.allclose(theta["hidden"]["lstm"][0]["kernel"], theta["output"]["lstm"][0]["kernel"])
    params, shared = _params(), LSTMOptimizer(hidden=H)
    grads = _grads(params)
    u, _ = lstm.opt_fn(theta).update(grads, lstm.opt_fn(theta).init(params))
    for name in ("hidden", "output"):
        opt = shared.opt_fn(theta[name])
        ref, _ = opt.update(grads[name], opt.init(params[name]))
        for leaf in ("w", "b"):
            np.testing.assert_allclose(u[name][leaf], ref[leaf], rtol=1e-6, atol=1e-9)
    phi = shared.init(jax.random.PRNGKey(6))
    copied = lstm.from_phi(phi)
    assert copied["hidden"] is phi and copied["output"] is phi
    with pytest.raises(ValueError, match="layers"):
        LSTMOptimizer(per_layer=True)


def test_rho_is_eq_5_2():
    e = np.exp(-P)
    for x in (e, -e):  # continuous at +-e^-p, value -+1
        np.testing.assert_allclose(rho(jnp.asarray(x * (1 + 1e-4)), P), rho(jnp.asarray(x * (1 - 1e-4)), P), atol=1e-3)
        np.testing.assert_allclose(rho(jnp.asarray(x), P), -np.sign(x), rtol=1e-5)
    g = jnp.asarray(np.geomspace(e, 0.999, 200))  # bijective (strictly monotone) on [e^-p, 1), onto [-1, 0)
    r = np.asarray(rho(g, P))
    assert np.all(np.diff(r) > 0) and r[0] == pytest.approx(-1.0, abs=1e-5) and r[-1] < 0
    np.testing.assert_allclose(rho(-g, P), -r, rtol=1e-6)
    big = jnp.asarray(np.geomspace(1.01, np.exp(P) * 0.99, 50))  # rho(x) = rho(-1/x): 5 looks like -0.2
    np.testing.assert_allclose(rho(big, P), rho(-1.0 / big, P), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rho(jnp.asarray(1e-6), P), -np.exp(P) * 1e-6, rtol=1e-5)  # linear below e^-p
    for f in (rho, lambda x, p: log_sign(x, p).sum()):
        d = jax.grad(lambda x: f(x, P))(0.0)
        assert np.isfinite(d)
    np.testing.assert_allclose(log_sign(jnp.array([0.5, -1e-6]), P),
                               [[np.log(0.5) / P, 1.0], [-1.0, -np.exp(P) * 1e-6]], rtol=1e-5)


@pytest.mark.parametrize("pre", ["thesis", "log_sign"])
def test_preprocessed_updates_have_finite_meta_gradients_at_zero_gradient(pre):
    lstm = LSTMOptimizer(hidden=H, preprocessing=pre)
    phi = lstm.init(jax.random.PRNGKey(7))
    g = jnp.array([0.0, 1e-9, -3.0, 0.2])

    def f(phi):
        opt = lstm.opt_fn(phi)
        u, _ = opt.update(g, opt.init(g))
        return jnp.sum(u)

    grads = jax.grad(f)(phi)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(grads))
    np.testing.assert_allclose(lstm.preprocess(g)[..., 0], rho(g) if pre == "thesis" else log_sign(g)[..., 0])


def test_gradients_read_are_stop_gradiented():
    """Eq. 3.8: the update does not depend on the optimizee's parameters through the gradient it reads."""
    lstm = LSTMOptimizer(hidden=H, alpha=0.1)
    phi = lstm.init(jax.random.PRNGKey(8))
    loss = lambda x: jnp.sum(x**4) + x[0] * x[1]
    x0 = jnp.array([0.3, -0.7, 1.1])

    def update_of(x, phi):
        opt = lstm.opt_fn(phi)
        return opt.update(jax.grad(loss)(x), opt.init(x))[0]

    np.testing.assert_array_equal(jax.jacobian(update_of)(x0, phi), np.zeros((3, 3)))

    def meta(phi, stop):  # loss after two steps; the reference feeds the gradient as a constant by hand
        opt = lstm.opt_fn(phi)
        s, x = opt.init(x0), x0
        for _ in range(2):
            g = jax.grad(loss)(x)
            u, s = opt.update(jax.lax.stop_gradient(g) if stop else g, s)
            x = x + u
        return loss(x)

    a, b = jax.grad(meta)(phi, False), jax.grad(meta)(phi, True)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-12)
    assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(a))


@pytest.mark.parametrize("detach", [True, False])
def test_detach_state_stops_meta_gradient_through_the_lstm_state(detach):
    lstm = LSTMOptimizer(hidden=H, detach_state=detach)
    phi = lstm.init(jax.random.PRNGKey(9))
    g1, g2 = jnp.array([0.5, -0.3]), jnp.array([0.2, 0.4])

    def second_update(phi, s1=None):
        opt = lstm.opt_fn(phi)
        s = opt.init(g1)
        _, s = opt.update(g1, s)
        return jnp.sum(opt.update(g2, s if s1 is None else s1)[0])

    opt0 = lstm.opt_fn(phi)
    s1 = opt0.update(g1, opt0.init(g1))[1]  # the state as constant data
    full = jax.grad(second_update)(phi)
    const = jax.grad(lambda p: second_update(p, s1))(phi)
    same = all(np.allclose(x, y, rtol=1e-6, atol=1e-10) for x, y in zip(jax.tree.leaves(full), jax.tree.leaves(const)))
    assert same == detach


def test_lstm_parts_drive_the_recurrent_toolkit():
    lstm = LSTMOptimizer(hidden=H, alpha=0.05, preprocessing="thesis")
    phi = lstm.init(jax.random.PRNGKey(11))
    cell, readout, h0 = lstm_parts(lstm, phi)
    loss = lambda x: jnp.sum((x - 1.0) ** 2)
    x0 = jnp.array([0.1, -0.4, 0.9])
    run = recurrent.optimize(cell, readout, h0, loss, x0, 5)
    opt, x = lstm.opt_fn(phi), x0
    s = opt.init(x)
    for t in range(5):
        np.testing.assert_allclose(run.params[t], x, rtol=1e-5, atol=1e-7)
        u, s = opt.update(jax.grad(loss)(x), s)
        x = x + u
    np.testing.assert_allclose(run.states[-1], s.s, rtol=1e-5, atol=1e-7)
    assert recurrent.jacobians(cell, s.s[0], 0.0)[0].shape == (lstm.state_size, lstm.state_size)
