"""Schröter 2022's LSTM optimizer as a torch optimizer (``lopt.thesis.torch``): the same updates as the JAX one."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lopt.learned import LSTMOptimizer
from lopt.thesis import torch as tt

HIDDEN = (7, 5)  # two layers of different sizes, so a mixed-up layer size fails
LAYERS = ("0", "2")  # the top-level names of the model's parameters (nn.Sequential indices)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a loaded machine, intra-op threads make these tiny steps ~100x slower (spin waits)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _lstm(preprocessing="thesis", per_layer=False, readout=False, **kw):
    return LSTMOptimizer(hidden=HIDDEN, alpha=0.1, preprocessing=preprocessing, per_layer=per_layer,
                         layers=LAYERS if per_layer else (), trainable_readout=readout, **kw)


def _theta(lstm, seed=0):
    """Keras init plus noise (init's biases are zero), so that every weight matters."""
    theta = lstm.init(jax.random.PRNGKey(seed))
    leaves, treedef = jax.tree.flatten(theta)
    keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(leaves))
    return treedef.unflatten([x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _opt(model, lstm, theta):
    return tt.LSTMOptimizerTorch(tt.by_layer(model) if lstm.per_layer else model.parameters(), lstm, theta)


def _backward(model, rng, scale=None):
    """Gradients of a regression loss, times a log-uniform factor per coordinate in [1e-7, 1e3] (every branch of
    rho / log_sign: |g| below e^-10, between, above 1), or set to ``scale`` everywhere."""
    model.zero_grad()
    x = torch.tensor(rng.standard_normal((8, 3)), dtype=torch.float32)
    torch.mean((model(x) - 1.0) ** 2).backward()
    for p in model.parameters():
        if scale is None:
            p.grad.mul_(torch.tensor(10.0 ** rng.uniform(-7, 3, p.shape), dtype=torch.float32))
        else:
            p.grad.fill_(scale)


def _tree(model, what):
    """A model's parameters (or gradients) as the JAX pytree {layer: {name: array}}."""
    out = {}
    for name, p in model.named_parameters():
        layer, rest = name.split(".", 1)
        out.setdefault(layer, {})[rest] = jnp.asarray((p if what == "params" else p.grad).detach().numpy())
    return out


def _compare(lstm, theta, steps=5, scales=(None,)):
    """Torch and JAX optimizers on the same gradient sequence: updates, parameters and LSTM states agree."""
    model = _model()
    opt = _opt(model, lstm, theta)
    jopt = lstm.opt_fn(theta)
    pj = _tree(model, "params")
    state, update = jopt.init(pj), jax.jit(jopt.update)
    rng = np.random.default_rng(1)
    for step in range(steps):
        _backward(model, rng, scales[step % len(scales)])
        before = [p.detach().clone() for p in model.parameters()]
        uj, state = update(_tree(model, "grads"), state, pj)
        opt.step()
        pj = jax.tree.map(lambda p, u: p + u, pj, uj)  # optax.apply_updates
        for (name, p), b in zip(model.named_parameters(), before):
            layer, rest = name.split(".", 1)
            u, q = np.asarray(uj[layer][rest]), np.asarray(pj[layer][rest])
            assert np.all(np.isfinite(p.detach().numpy())), name
            spacing = float(np.spacing(np.float32(np.abs(q).max())))
            atol = 1e-5 * lstm.alpha + 2 * spacing  # cancellation in alpha * sum(h), rounding of (p + u) - p
            np.testing.assert_allclose((p.detach() - b).numpy(), u, rtol=1e-4, atol=atol, err_msg=name)
            np.testing.assert_allclose(p.detach().numpy(), q, rtol=1e-4, atol=max(1e-6, 4 * (step + 1) * spacing))
            np.testing.assert_allclose(opt.state[p]["s"].numpy(), np.asarray(state.s[layer][rest]),
                                       rtol=1e-4, atol=1e-5)
    return model, opt


@pytest.mark.parametrize("readout", [False, True], ids=["sum", "readout"])
@pytest.mark.parametrize("per_layer", [False, True], ids=["shared", "per_layer"])
@pytest.mark.parametrize("preprocessing", ["none", "thesis", "log_sign"])
def test_matches_jax(preprocessing, per_layer, readout):
    lstm = _lstm(preprocessing, per_layer, readout)
    _compare(lstm, _theta(lstm))


def test_per_layer_uses_each_layers_network():
    """Per-layer networks really differ (so the test above tells them apart), and param groups may name them."""
    lstm = _lstm(per_layer=True)
    theta = _theta(lstm)
    assert not np.allclose(theta["0"]["lstm"][0]["kernel"], theta["2"]["lstm"][0]["kernel"])
    model = _model()
    opt = tt.LSTMOptimizerTorch([{"params": list(m.parameters()), "group": k} for k, m in zip(LAYERS, model[::2])],
                                lstm, theta)
    assert [g["group"] for g in opt.param_groups] == list(LAYERS)
    torch.testing.assert_close(opt.param_groups[1]["theta"]["lstm.0.kernel"],
                               torch.tensor(np.asarray(theta["2"]["lstm"][0]["kernel"])))
    with pytest.raises(ValueError, match="group"):
        tt.LSTMOptimizerTorch(model.parameters(), lstm, theta)
    with pytest.raises(KeyError, match="no optimizer for layer"):
        tt.LSTMOptimizerTorch({"9": model[0].weight}, lstm, theta)
    with pytest.raises(ValueError, match="does not fit"):
        tt.LSTMOptimizerTorch(model.parameters(), _lstm(readout=True), _theta(_lstm()))


@pytest.mark.parametrize("per_layer", [False, True], ids=["shared", "per_layer"])
def test_state_dict_round_trip(per_layer):
    """Saved after 3 steps and loaded into a fresh optimizer (other theta), it continues bit-identically."""
    lstm = _lstm("log_sign", per_layer, readout=True)
    model, opt = _compare(lstm, _theta(lstm), steps=3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    model2 = _model()
    model2.load_state_dict(saved["model"])
    opt2 = _opt(model2, lstm, _theta(lstm, seed=5))
    opt2.load_state_dict(saved["opt"])
    rng1, rng2 = np.random.default_rng(2), np.random.default_rng(2)
    for _ in range(3):
        _backward(model, rng1)
        _backward(model2, rng2)
        opt.step()
        opt2.step()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["s"], opt2.state[q]["s"])
    with pytest.raises(ValueError, match="different learned optimizer"):
        _opt(model2, _lstm("log_sign", per_layer, readout=True, p=5.0), _theta(lstm)).load_state_dict(saved["opt"])


@pytest.mark.parametrize("preprocessing", ["none", "thesis", "log_sign"])
def test_zero_and_huge_gradients_stay_finite(preprocessing):
    """g = 0, +-1e30 and the float32 maximum: finite updates, states, parameters, equal to JAX's."""
    lstm = _lstm(preprocessing)
    _compare(lstm, _theta(lstm), steps=4, scales=(0.0, 1e30, -1e30, float(np.finfo(np.float32).max)))


def test_jax_forms_and_checkpoint(tmp_path):
    """from_jax / to_jax invert each other; save + load give the same optimizer."""
    lstm = _lstm(per_layer=True, readout=True)
    theta = _theta(lstm)
    flat = tt.from_jax(theta, lstm)
    back = {k: tt.to_jax(v, lstm) for k, v in flat.items()}
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, theta))
    model = _model()
    opt = tt.load(tt.save(tmp_path / "lstm.npz", lstm, theta), tt.by_layer(model))
    assert opt.lstm == lstm
    for g, name in zip(opt.param_groups, LAYERS):
        for k, v in flat[name].items():
            assert torch.equal(g["theta"][k], v)
    assert tt.load(tmp_path / "lstm.npz", tt.by_layer(model), alpha=0.5).lstm.alpha == 0.5
