"""lopt.theory: closed forms of the learning-rate outer-gradient, checked against autodiff (x64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lopt import optimizers, tasks, theory, unroll

EIGENVALUES = [0.1, 0.5, 1.0, 2.0]
THETAS = [0.5, 0.9, 1.1, 1.25]


@pytest.fixture(autouse=True)
def x64():
    """Every test here runs in float64 (the context manager restores the setting afterwards)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def quadratic() -> tasks.Quadratic:
    task = tasks.Quadratic.from_eigenvalues(jax.random.PRNGKey(0), EIGENVALUES)
    assert task.hessian.dtype == jnp.float64
    return task


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))


@pytest.mark.parametrize("num_steps", [5, 20, 60])
def test_quadratic_closed_form_matches_autodiff(quadratic, num_steps):
    thetas = jnp.array(THETAS)
    autodiff = unroll.sweep(optimizers.sgd, quadratic, thetas, num_steps).grad
    closed = jax.vmap(lambda th: theory.quadratic_lr_outer_grad(quadratic, th, num_steps))(thetas)
    products = jax.jit(
        jax.vmap(lambda th: theory.lr_outer_grad_sum_of_products(quadratic.loss, quadratic.w0, th, num_steps))
    )(thetas)
    assert autodiff.dtype == jnp.float64
    assert np.all(np.isfinite(autodiff)) and np.all(autodiff != 0)
    assert _rel_err(closed, autodiff) < 1e-6
    assert _rel_err(products, autodiff) < 1e-6
    assert _rel_err(products, closed) < 1e-6


def test_quadratic_outer_gradient_grows_like_spectral_radius(quadratic):
    """Past the stability edge the outer-gradient explodes like r^(2T) (Metz et al. 2019 App. A)."""
    theta = 1.25
    r = float(theory.quadratic_spectral_radius(quadratic, theta))
    g20 = abs(float(theory.quadratic_lr_outer_grad(quadratic, theta, 20)))
    g40 = abs(float(theory.quadratic_lr_outer_grad(quadratic, theta, 40)))
    # ratio ~ 2 r^40 (the T prefactor doubles), up to the weight of the other eigen-directions
    assert g40 / g20 == pytest.approx(2 * r**40, rel=1e-3)


def test_spectral_radius(quadratic):
    assert float(theory.quadratic_spectral_radius(quadratic, 1.25)) == pytest.approx(1.5, rel=1e-12)
    assert float(theory.quadratic_spectral_radius(quadratic, 0.5)) == pytest.approx(0.95, rel=1e-12)
    assert float(theory.quadratic_spectral_radius(quadratic, 0.0)) == pytest.approx(1.0, rel=1e-12)
    # it is the per-step contraction of the iterates along the slowest direction
    thetas = jnp.array([0.5])
    w = unroll.sweep(optimizers.sgd, quadratic, thetas, 300).params[0]
    w_next = unroll.sweep(optimizers.sgd, quadratic, thetas, 301).params[0]
    assert float(jnp.linalg.norm(w_next) / jnp.linalg.norm(w)) == pytest.approx(0.95, rel=1e-6)


def test_gd_trajectory_matches_unroll(quadratic):
    ws = theory.gd_trajectory(quadratic.loss, quadratic.w0, 0.3, 6)
    assert ws.shape == (7, 4)
    traj = unroll.sweep(optimizers.sgd, quadratic, jnp.array([0.3]), 6, record_params=True).params[0]
    np.testing.assert_allclose(ws, traj, rtol=1e-12, atol=1e-14)


def test_sum_of_products_on_two_minima():
    """App. A's formula holds on the nonconvex toy, where the Hessian changes along the trajectory."""
    toy = tasks.TwoMinima()
    theta = 0.01
    w0 = jnp.array([-1.2])

    def loss(w):
        return toy.loss(w[0])

    def final_loss(th, num_steps):
        return loss(theory.gd_trajectory(loss, w0, th, num_steps)[-1])

    for num_steps in (3, 10, 25):

        @jax.jit
        def compute(th):
            ws = theory.gd_trajectory(loss, w0, th, num_steps)
            return (
                theory.lr_outer_grad_sum_of_products(loss, w0, th, num_steps),
                jax.grad(final_loss)(th, num_steps),
                jax.vmap(jax.hessian(loss))(ws),
            )

        formula, direct, hessians = compute(theta)
        autodiff = unroll.sweep(optimizers.sgd, toy, jnp.array([theta]), num_steps).grad[0]
        assert formula.shape == ()
        assert float(autodiff) != 0.0
        assert _rel_err(formula, autodiff) < 1e-8, num_steps
        assert _rel_err(direct, autodiff) < 1e-8, num_steps
        # the Hessian really changes along this trajectory (a constant-Hessian shortcut would be wrong)
        assert float(jnp.ptp(hessians)) > 1e-3


@pytest.mark.parametrize("order", [1, 2])
def test_check_grads_of_final_params(order):
    task = tasks.Quadratic.from_eigenvalues(jax.random.PRNGKey(2), [0.5, 1.5])

    @jax.jit
    def final(lr):
        return unroll.final_params(optimizers.sgd, task, lr, 6)

    check_grads(final, (jnp.float64(0.3),), order=order, modes=("fwd", "rev"))
