"""The per-parameter MLP learned optimizer of Metz et al. 2019 sec. 4.1 (architecture: App. D).

Every parameter is updated independently by the same small MLP (one hidden layer of 32 ReLU
units, about 1k weights). Its inputs per parameter are

- the gradient and the parameter value,
- exponential moving averages of the gradient at several timescales (``decays``; the momentum
  features, switched off by ``use_momentum=False`` for the ablation of Fig. 8),
- a representation of the iteration, tanh(t / s - 1) for several scales s (``time_scales``;
  switched off by ``use_time=False``),

each normalised by its root-mean-square over the parameter tensor, so that input scales are
comparable across tasks and layers. The MLP outputs a direction d and a log learning rate l, and
the update is ``step_mult * d * exp(exp_mult * l)``; the small fixed multipliers make a freshly
initialised optimizer take small steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..optimizers import LearnedOptimizer, Optimizer

Array = jax.Array


class MLPOptState(NamedTuple):
    emas: Any  # per parameter: (*shape, len(decays)) moving averages of the gradient
    step: Array


@dataclasses.dataclass(frozen=True)
class MLPOptimizer(LearnedOptimizer):
    """Per-parameter MLP optimizer (module docstring). ``theta`` is the MLP's weights."""

    hidden: int = 32
    decays: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999, 0.9999)
    time_scales: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
    use_momentum: bool = True
    use_time: bool = True
    step_mult: float = 1e-3
    exp_mult: float = 1e-3

    @property
    def num_inputs(self) -> int:
        return 2 + len(self.decays) * self.use_momentum + len(self.time_scales) * self.use_time

    def init(self, key: Array) -> dict[str, Array]:
        k1, k2 = jax.random.split(key)
        n = self.num_inputs
        return {
            "w1": jax.random.normal(k1, (n, self.hidden)) / jnp.sqrt(n),
            "b1": jnp.zeros((self.hidden,)),
            "w2": jax.random.normal(k2, (self.hidden, 2)) / jnp.sqrt(self.hidden),
            "b2": jnp.zeros((2,)),
        }

    def features(self, grad: Array, param: Array, emas: Array, step: Array) -> Array:
        """Normalised inputs of one parameter tensor: shape (*param.shape, num_inputs)."""
        parts = [grad[..., None], param[..., None]]
        if self.use_momentum:
            parts.append(emas)
        x = jnp.concatenate(parts, axis=-1)
        axes = tuple(range(x.ndim - 1))
        x = x * jax.lax.rsqrt(jnp.mean(x**2, axis=axes, keepdims=True) + 1e-12)
        if self.use_time:
            t = jnp.tanh(step / jnp.asarray(self.time_scales, x.dtype) - 1.0)
            x = jnp.concatenate([x, jnp.broadcast_to(t, (*param.shape, t.size))], axis=-1)
        return x

    def opt_fn(self, theta: dict[str, Array]) -> Optimizer:
        decays = jnp.asarray(self.decays)

        def init(params: Any) -> MLPOptState:
            emas = jax.tree.map(lambda p: jnp.zeros((*jnp.shape(p), len(self.decays)), jnp.result_type(p)), params)
            return MLPOptState(emas, jnp.zeros((), jnp.int32))

        def update(grads: Any, state: MLPOptState, params: Any = None):
            if params is None:
                raise ValueError("the MLP optimizer reads parameter values: pass params to update()")
            emas = jax.tree.map(lambda m, g: decays * m + (1.0 - decays) * g[..., None], state.emas, grads)

            def one(g, p, m):
                x = self.features(g, p, m, state.step.astype(g.dtype))
                h = jax.nn.relu(x @ theta["w1"] + theta["b1"])
                out = h @ theta["w2"] + theta["b2"]
                return self.step_mult * out[..., 0] * jnp.exp(self.exp_mult * out[..., 1])

            updates = jax.tree.map(one, grads, params, emas)
            return updates, MLPOptState(emas, state.step + 1)

        return optax.GradientTransformation(init, update)
