"""One interface for every optimizer, hand-designed or learned.

An *optimizer* is an ``optax.GradientTransformation``: pure ``init(params) -> state`` and
``update(grads, state, params) -> (updates, state)`` over pytrees. Hand-designed optimizers are
built from optax with hyperparameters that may be traced JAX values, so an unroll can be
differentiated with respect to them (Metz et al. 2019 sec. 2.3, 2.4); concrete ones are checked when the
optimizer is built (a NaN, infinite or negative learning rate raises instead of giving NaN losses).

A *learned optimizer* is a family of optimizers indexed by meta-parameters ``theta`` (a pytree):
``init(key) -> theta`` and ``opt_fn(theta) -> Optimizer``, as in learned_optimization.
:class:`Hyperparameters` makes a hand-designed optimizer one of these, with its (log-)hyperparameters
as ``theta``; the MLP, GRU and LSTM optimizers of ``lopt.learned`` share the same interface.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

Optimizer = optax.GradientTransformation
Scalar = float | jax.Array
Theta = Any

apply_updates = optax.apply_updates


# Ranges of concrete hyperparameters (traced ones, e.g. under meta-training, are not checked): (low, high).
_RANGES = {"learning_rate": (0.0, None), "threshold": (0.0, None), "eps": (0.0, None), "eps_root": (0.0, None),
           "decay": (0.0, 1.0), "b1": (0.0, 1.0), "b2": (0.0, 1.0)}


def check_hyperparameters(name: str, hyperparameters: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for a concrete hyperparameter that is not finite or out of its range (a NaN, infinite
    or negative learning rate would otherwise give NaN losses silently); traced values pass unchecked."""
    for key, value in hyperparameters.items():
        if isinstance(value, jax.core.Tracer):
            continue
        try:
            x = np.asarray(value, np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: {key} = {value!r} is not a number") from None
        low, high = _RANGES.get(key, (None, None))
        if not np.all(np.isfinite(x)) or (low is not None and np.any(x < low)) or (high is not None and np.any(x > high)):
            bounds = "finite" + (f", >= {low:g}" if low is not None else "") + (f", <= {high:g}" if high is not None else "")
            raise ValueError(f"{name}: {key} = {value!r} must be {bounds}")


def _checked(fn: Callable[..., Optimizer]) -> Callable[..., Optimizer]:
    """Check the concrete hyperparameters of a hand-designed optimizer's constructor."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def build(*args: Any, **kwargs: Any) -> Optimizer:
        check_hyperparameters(fn.__name__, sig.bind(*args, **kwargs).arguments)
        return fn(*args, **kwargs)

    return build


@_checked
def sgd(learning_rate: Scalar) -> Optimizer:
    """Gradient descent: x' = x - lr g."""
    return optax.sgd(learning_rate)


@_checked
def momentum(learning_rate: Scalar, beta: Scalar) -> Optimizer:
    """Heavy-ball momentum: v' = beta v + g, x' = x - lr v'."""
    return optax.sgd(learning_rate, momentum=beta)


@_checked
def clipped_sgd(learning_rate: Scalar, threshold: Scalar) -> Optimizer:
    """Gradient descent on gradients clipped elementwise to [-threshold, threshold]."""
    return optax.chain(optax.clip(threshold), optax.sgd(learning_rate))


@_checked
def rmsprop(learning_rate: Scalar, decay: Scalar = 0.9, eps: Scalar = 1e-8) -> Optimizer:
    """RMSProp: nu' = decay nu + (1 - decay) g^2, x' = x - lr g / sqrt(nu' + eps) (optax)."""
    return optax.rmsprop(learning_rate, decay=decay, eps=eps)


@_checked
def adam(
    learning_rate: Scalar, b1: Scalar = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-8, eps_root: Scalar = 1e-16
) -> Optimizer:
    """Adam (Kingma & Ba 2014) with bias correction. ``eps_root`` inside the square root keeps
    the unroll differentiable where a gradient is exactly zero (a dead ReLU unit): without it
    d sqrt(v)/dv = inf at v = 0 and the outer-gradient is NaN (optax's advice for meta-learning)."""
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root)


HAND_DESIGNED: dict[str, Callable[..., Optimizer]] = {
    "sgd": sgd,
    "momentum": momentum,
    "clipped_sgd": clipped_sgd,
    "rmsprop": rmsprop,
    "adam": adam,
}


def make(name: str, **hyperparameters: Scalar) -> Optimizer:
    """A hand-designed optimizer by name, e.g. ``make("adam", learning_rate=1e-3)``."""
    if name not in HAND_DESIGNED:
        raise ValueError(f"unknown optimizer {name!r}; allowed values: {', '.join(HAND_DESIGNED)}")
    return HAND_DESIGNED[name](**hyperparameters)


class LearnedOptimizer:
    """A family of optimizers indexed by meta-parameters: ``init(key)``, ``opt_fn(theta)``."""

    def init(self, key: jax.Array) -> Theta:
        raise NotImplementedError

    def opt_fn(self, theta: Theta) -> Optimizer:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Hyperparameters(LearnedOptimizer):
    """A hand-designed optimizer whose hyperparameters are learned.

    ``theta`` maps each name in ``learn`` to its value, in log space for names in ``log``
    (so ``Hyperparameters("adam", {"learning_rate": 1e-3}, log=("learning_rate",))`` learns
    log(lr), as in Metz et al. 2019 Fig. 3). Hyperparameters not in ``learn`` stay fixed.
    """

    name: str
    learn: Mapping[str, float]
    fixed: Mapping[str, float] = dataclasses.field(default_factory=dict)
    log: tuple[str, ...] = ()

    def init(self, key: jax.Array | None = None) -> dict[str, jax.Array]:
        float_ = jnp.result_type(float)  # float32, or float64 with jax_enable_x64
        return {
            k: jnp.log(jnp.asarray(v, float_)) if k in self.log else jnp.asarray(v, float_)
            for k, v in self.learn.items()
        }

    def hyperparameters(self, theta: Mapping[str, jax.Array]) -> dict[str, Scalar]:
        values = {k: jnp.exp(v) if k in self.log else v for k, v in theta.items()}
        return {**self.fixed, **values}

    def opt_fn(self, theta: Mapping[str, jax.Array]) -> Optimizer:
        return make(self.name, **self.hyperparameters(theta))
