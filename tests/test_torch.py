"""Trained learned optimizers as torch optimizers (``lopt.torch``): the same updates as the JAX ones."""

import io
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lopt import checkpoint, landscape
from lopt import torch as lt
from lopt.learned import GRUOptimizer, MLPOptimizer

GRU_FILE = Path(__file__).resolve().parents[1] / "data" / "learned" / "gru_rosenbrock.npz"
SHAPES = [(4, 1, 3, 3), (7, 6), (5,), ()]  # a conv kernel, a matrix, a bias, a scalar


def _theta(lopt, key):
    """Random weights and biases (init's biases are zero), large enough that exp_mult matters."""
    theta = lopt.init(key)
    keys = dict(zip(theta, jax.random.split(jax.random.PRNGKey(7), len(theta))))
    return {k: x + 0.5 * jax.random.normal(keys[k], x.shape) for k, x in theta.items()}


def _grads(rng, scale):
    return [(scale * rng.standard_normal(s)).astype(np.float32) for s in SHAPES]


def _compare(opt_t, opt_j, params0, grad_scale, steps):
    """Run the torch and JAX optimizers on one fixed gradient sequence; returns (max abs, max rel) error."""
    pt = [torch.tensor(p) for p in params0]
    torch_opt = opt_t(pt)
    pj = [jnp.asarray(p) for p in params0]
    state = opt_j.init(pj)
    update = jax.jit(opt_j.update)
    rng = np.random.default_rng(1)
    worst = (0.0, 0.0)
    for _ in range(steps):
        gs = _grads(rng, grad_scale)
        before = [p.detach().clone() for p in pt]
        for p, g in zip(pt, gs):
            p.grad = torch.tensor(g)
        torch_opt.step()
        uj, state = update(gs, state, pj)
        pj = [p + u for p, u in zip(pj, uj)]  # optax.apply_updates
        for p, b, u, q in zip(pt, before, uj, pj):
            ut, u = (p - b).numpy(), np.asarray(u)
            scale = float(np.abs(u).max())
            # atol: cancellation in the output layer, and the rounding of p + u in ut = (p + u) - p
            atol = 1e-4 * scale + 2 * float(np.spacing(np.float32(np.abs(q).max())))
            np.testing.assert_allclose(ut, u, rtol=1e-4, atol=atol)
            # the parameters accumulate one rounding of p + u per step on each side (JAX may run on a GPU)
            atol_p = max(1e-6, 4 * float(np.spacing(np.float32(np.abs(q).max()))))
            np.testing.assert_allclose(p.numpy(), np.asarray(q), rtol=1e-4, atol=atol_p)
            err = float(np.abs(ut - u).max())
            worst = (max(worst[0], err), max(worst[1], err / scale))
    return worst


@pytest.mark.parametrize("kw", [{"exp_mult": 0.3}, {"decays": (0.5, 0.95), "use_time": False, "step_mult": 3e-3},
                                {"use_momentum": False}])
def test_mlp_matches_jax(kw):
    lopt = MLPOptimizer(**kw)
    theta = _theta(lopt, jax.random.PRNGKey(3))
    params0 = _grads(np.random.default_rng(0), 0.1)
    _compare(lambda ps: lt.MLPOptimizerTorch(ps, lopt, theta), lopt.opt_fn(theta), params0, 1.0, 100)


def test_gru_matches_jax():
    theta, meta = checkpoint.load_pytree(GRU_FILE)
    lopt = GRUOptimizer(**meta["optimizer"])
    params0 = _grads(np.random.default_rng(0), 1.0)
    opt_t = lambda ps: lt.load(GRU_FILE, ps)  # noqa: E731
    assert isinstance(opt_t([torch.zeros(1, requires_grad=True)]), lt.GRUOptimizerTorch)
    _compare(opt_t, lopt.opt_fn(jax.tree.map(jnp.asarray, theta)), params0, 50.0, 100)


def _mlp(params):
    lopt = MLPOptimizer(exp_mult=0.3)
    return lt.MLPOptimizerTorch(params, lopt, _theta(lopt, jax.random.PRNGKey(3)))


@pytest.mark.parametrize("make", [_mlp, lambda ps: lt.load(GRU_FILE, ps)], ids=["mlp", "gru"])
def test_state_dict_round_trip(make):
    rng = np.random.default_rng(0)
    params = [torch.tensor(p, requires_grad=True) for p in _grads(rng, 1.0)]
    grads = [_grads(rng, 1.0) for _ in range(6)]

    def step(opt, ps, gs):
        for p, g in zip(ps, gs):
            p.grad = torch.tensor(g)
        opt.step()

    opt = make(params)
    for gs in grads[:3]:
        step(opt, params, gs)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    fresh = [p.detach().clone().requires_grad_() for p in params]
    opt2 = make(fresh)
    for g in opt2.param_groups:  # the theta must come from the state_dict
        g["theta"] = {k: torch.zeros_like(v) for k, v in g["theta"].items()}
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf))
    for gs in grads[3:]:
        step(opt, params, gs)
        step(opt2, fresh, gs)
        for a, b in zip(params, fresh):
            assert torch.equal(a, b)
    other = MLPOptimizer(exp_mult=0.5)  # a different configuration (or kind) than both make()s
    with pytest.raises(ValueError, match="different learned optimizer"):
        lt.MLPOptimizerTorch(fresh, other, other.init(jax.random.PRNGKey(0))).load_state_dict(opt.state_dict())


def test_mlp_normalized_sgd_trains_a_small_cnn():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    y = (x.flatten(1) @ torch.randn(64, 3)).argmax(1)  # labels of a random linear teacher
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 3 * 3, 3))
    lopt = MLPOptimizer()
    theta = landscape.mlp_normalized_sgd_theta(lopt, 0.02, 0.01, jax.random.PRNGKey(0))
    opt = lt.MLPOptimizerTorch(net.parameters(), lopt, theta)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(50)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_save_mlp_and_load(tmp_path):
    lopt = MLPOptimizer(decays=(0.5, 0.9), step_mult=1e-2)
    theta = _theta(lopt, jax.random.PRNGKey(1))
    path = lt.save_mlp(tmp_path / "mlp.npz", lopt, theta, meta={"task": "quadratic"})
    p = torch.zeros(3, requires_grad=True)
    opt = lt.load(path, [p])
    assert isinstance(opt, lt.MLPOptimizerTorch) and opt.lopt == lopt
    for k, v in theta.items():
        np.testing.assert_array_equal(opt.param_groups[0]["theta"][k].numpy(), np.asarray(v))
    assert lt.load(path, [p], step_mult=0.1).lopt.step_mult == 0.1


def test_load_errors(tmp_path):
    p = [torch.zeros(2, requires_grad=True)]
    missing = tmp_path / "gru_nothing.npz"
    with pytest.raises(FileNotFoundError, match="gru_nothing.npz.*notebook 10"):
        lt.load(missing, p)
    checkpoint.save_pytree(tmp_path / "lstm.npz", {"w": np.zeros(2)}, meta={"kind": "lstm", "optimizer": {}})
    with pytest.raises(ValueError, match="unknown learned-optimizer kind 'lstm'"):
        lt.load(tmp_path / "lstm.npz", p)
    theta, meta = checkpoint.load_pytree(GRU_FILE)
    with pytest.raises(ValueError, match="theta does not fit"):
        lt.GRUOptimizerTorch(p, GRUOptimizer(hidden=8), theta)


def test_import_lopt_does_not_import_torch():
    code = "import sys, lopt, lopt.learned, lopt.checkpoint; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cnn_and_fit_train_with_a_saved_mlp_optimizer(tmp_path):
    """The notebook 06 panel in small: a torch CNN like lopt.tasks' CNN, trained by a learned optimizer
    loaded from its checkpoint in the usual loop, lowers its loss; per-step times are measured."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 96)
    images = (rng.integers(0, 80, (96, 8, 8)) + 80 * labels[:, None, None]).astype(np.uint8)
    net = lt.cnn(1, [4, 4], 3, [1, 2])
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    lopt = MLPOptimizer()
    path = lt.save_mlp(tmp_path / "m.npz", lopt, lopt.init_linear(jax.random.PRNGKey(0), 0.003))
    losses, secs = lt.fit(net, lt.load(path, net.parameters()), images, labels, 100, 16, seed=0)
    assert losses.shape == secs.shape == (100,) and np.all(secs > 0)
    assert losses[-10:].mean() < 0.7 * losses[:10].mean(), losses
