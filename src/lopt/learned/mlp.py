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

``features`` builds these inputs as one (*shape, num_inputs) array, the formula as written. The
update computes the same function without materialising them or the hidden layer (which made it
memory-bound, 45-120 ns per parameter): the RMS normalisation is a per-tensor scale per input,
folded into the first-layer weights, the time features (the same for every parameter) are folded
into the first-layer bias, and the MLP is one elementwise expression over per-input arrays,
summing relu(sum_i x_i w1[i, j] + b1[j]) * w2[j] over the hidden units j. Reverse mode (the
TBPTT meta-gradient) is the vjp of the same function derived by hand (``_backward``), recomputed from the
inputs: the per-tensor inputs as one (P, inputs) array and the hidden layer as (P, hidden) matrix
products, the time features folded into the bias as in the forward pass. Differentiating the formula as
written instead (``direction``, the reference the tests compare with) carried the 9 time features through
both matrix products and the normalisation: TBPTT ran at 1.52x the pure-JAX reference that way, 2.73x with
``_backward`` (``benchmarks/meta_training.py``; ``results/meta_training_separate_emas.json``, ``meta_training.json``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..optimizers import LearnedOptimizer, Optimizer

Array = jax.Array


class MLPOptState(NamedTuple):
    emas: Any  # per parameter: a tuple of len(decays) moving averages of the gradient, each shaped like it
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

    def input_index(self, name: str) -> int:
        """The input column of a feature: ``"grad"``, ``"param"``, ``"ema_<decay>"`` or ``"time_<scale>"``."""
        names = ["grad", "param"] + [f"ema_{d:g}" for d in self.decays] * self.use_momentum
        names += [f"time_{s:g}" for s in self.time_scales] * self.use_time
        if name not in names:
            raise ValueError(f"unknown input {name!r}; allowed values: {', '.join(names)}")
        return names.index(name)

    def init_linear(self, key: Array, learning_rate: float, feature: str = "ema_0.9", noise: float = 0.1) -> dict[str, Array]:
        """Meta-parameters whose update is ``-learning_rate * x / rms(x)`` for the input ``feature`` (say,
        normalised momentum: two hidden ReLU units read +x and -x), plus ``noise`` times :meth:`init`
        (readout noise scaled like the signal). Starts outer-training near a tuned hand-designed
        optimizer instead of near zero steps (``step_mult`` is 1e-3 and a random readout's log learning
        rate would need l ~ 2300 to grow steps tenfold)."""
        if self.hidden < 2:
            raise ValueError(f"init_linear needs hidden >= 2 units, got hidden={self.hidden}")
        theta = self.init(key)
        i, a = self.input_index(feature), learning_rate / self.step_mult
        w1 = jnp.zeros_like(theta["w1"]).at[i, 0].set(1.0).at[i, 1].set(-1.0)
        w2 = jnp.zeros_like(theta["w2"]).at[0, 0].set(-a).at[1, 0].set(a)
        return {"w1": w1 + noise * theta["w1"], "b1": noise * theta["b1"],
                "w2": w2 + noise * a * theta["w2"], "b2": noise * theta["b2"]}

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

    def direction(self, theta: dict[str, Array], g: Array, p: Array, m: Array, t: Array) -> Array:
        """The update of one tensor, the formula as written: features, MLP, ``step_mult d exp(exp_mult l)``;
        ``m`` is the (*shape, len(decays)) moving averages."""
        h = jax.nn.relu(self.features(g, p, m, t) @ theta["w1"] + theta["b1"])
        out = h @ theta["w2"] + theta["b2"]
        return self.step_mult * out[..., 0] * jnp.exp(self.exp_mult * out[..., 1])

    def direction_fused(self, theta: dict[str, Array], g: Array, p: Array, m: tuple[Array, ...], t: Array) -> Array:
        """``direction`` without the (*shape, num_inputs) and (*shape, hidden) arrays (module docstring); ``m`` is
        the moving averages as a tuple of arrays shaped like ``g``, each read contiguously."""
        n_tensor = 2 + len(self.decays) * self.use_momentum  # inputs normalised per tensor; then time
        xs = [g, p] + (list(m) if self.use_momentum else [])
        scale = jax.lax.rsqrt(jnp.stack([jnp.mean(x * x) for x in xs]) + 1e-12)
        w1 = theta["w1"][:n_tensor] * scale[:, None].astype(theta["w1"].dtype)
        b1 = theta["b1"]
        if self.use_time:
            b1 = b1 + jnp.tanh(t / jnp.asarray(self.time_scales, g.dtype) - 1.0) @ theta["w1"][n_tensor:]
        w2, b2 = theta["w2"], theta["b2"]
        d, lr = b2[0], b2[1]
        for j in range(self.hidden):  # one fused elementwise expression over the tensor
            z = b1[j]
            for x, w in zip(xs, w1[:, j]):
                z = z + x * w
            # relu(z) w2[j] as a select: where the unit is on (z > 0, or z is NaN, which relu propagates) add
            # z w2[j]; where it is off relu's 0 adds nothing, so the sums are kept. The same values as with relu
            # (but the sign of an exact zero); XLA's NaN-propagating maximum costs a compare and a blend besides
            # the maximum, the select one compare that masks the two multiply-adds: the expression on a 784x128
            # tensor, 2 cores, 5.5 -> 3.9 ns per parameter (benchmarks/README.md)
            on = (z > 0) | jnp.isnan(z)
            d, lr = jnp.where(on, d + z * w2[j, 0], d), jnp.where(on, lr + z * w2[j, 1], lr)
        return self.step_mult * d * jnp.exp(self.exp_mult * lr)

    def opt_fn(self, theta: dict[str, Array]) -> Optimizer:
        """The optimizer with meta-parameters ``theta``. Its state keeps each moving average as its own array (not
        one (*shape, len(decays)) array, whose strided slices XLA copies out before the update reads them: the
        update of a 100k-parameter MLP took 1.15x as long that way, ``benchmarks/optimizer_step.py``)."""
        decays = jnp.asarray(self.decays)

        def init(params: Any) -> MLPOptState:
            emas = jax.tree.map(lambda p: tuple(jnp.zeros(jnp.shape(p), jnp.result_type(p)) for _ in self.decays), params)
            return MLPOptState(emas, jnp.zeros((), jnp.int32))

        def one(g, p, m, step):
            d = decays.astype(g.dtype)
            m = tuple(d[k] * mk + (1.0 - d[k]) * g for k, mk in enumerate(m))
            return _direction(self, theta, g, p, m, step.astype(g.dtype)), m

        def update(grads: Any, state: MLPOptState, params: Any = None):
            if params is None:
                raise ValueError("the MLP optimizer reads parameter values: pass params to update()")
            gs, tree = jax.tree.flatten(grads)
            out = [one(*a, state.step) for a in zip(gs, tree.flatten_up_to(params), tree.flatten_up_to(state.emas))]
            updates, emas = (tree.unflatten([o[i] for o in out]) for i in (0, 1))
            return updates, MLPOptState(emas, state.step + 1)

        return optax.GradientTransformation(init, update)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _direction(lopt: MLPOptimizer, theta, g, p, m, t):
    """Forward: the fused expression; reverse mode: ``_backward``, the vjp derived by hand, recomputed from the
    inputs. Differentiated directly, the fused expression (hidden x inputs scalar ops per tensor) made a TBPTT
    outer step compile in 50-85 s instead of 9 s and run 0.73x as fast as the unfused formula
    (``benchmarks/meta_training.py``)."""
    return _fused(lopt, theta, g, p, m, t)


@functools.partial(jax.jit, static_argnums=(0,))
def _fused(lopt, theta, g, p, m, t):
    """The fused expression as one jitted call: a program that applies the optimizer traces it once per tensor
    shape and carries one call, not hidden x inputs scalar operations per tensor, through its transformations
    (vmap, scan, cond). Lowering a 10-step unroll of a small CNN: 8.8 s -> 2.4 s."""
    return lopt.direction_fused(theta, g, p, m, t)


def _direction_fwd(lopt, theta, g, p, m, t):
    return _fused(lopt, theta, g, p, m, t), (theta, g, p, m, t)


def _direction_bwd(lopt, res, ct):
    return _backward(lopt, *res, ct)


_direction.defvjp(_direction_fwd, _direction_bwd)


@functools.partial(jax.jit, static_argnums=(0,))
def _backward(lopt: MLPOptimizer, theta, g, p, m, t, ct):
    """The vjp of ``direction`` at (theta, g, p, m, t) applied to ``ct``, by hand (module docstring). With
    x_k the per-tensor inputs, s_k = rsqrt(mean x_k^2) and z = sum_k s_k x_k w1[k] + b1 + tf(t) w1[time]:
    the output cotangents (dd, dl) of u = step_mult d exp(exp_mult l) give dz = [z > 0] (dd, dl) w2^T, then
    dw1[k] = s_k sum_P x_k dz, and x_k's cotangent adds s_k's: -s_k^3 x_k / P * sum_j w1[k, j] sum_P x_k dz_j."""
    n_t = 2 + len(lopt.decays) * lopt.use_momentum
    xs = [g, p] + (list(m) if lopt.use_momentum else [])
    x = jnp.stack([a.reshape(-1) for a in xs], axis=-1)  # (P, n_t)
    s = jax.lax.rsqrt(jnp.mean(x * x, axis=0) + 1e-12)
    w1, w2 = theta["w1"], theta["w2"]
    w = w1[:n_t] * s[:, None]
    b = theta["b1"]
    if lopt.use_time:
        scales = jnp.asarray(lopt.time_scales, g.dtype)
        tf = jnp.tanh(t / scales - 1.0)
        b = b + tf @ w1[n_t:]
    z = x @ w + b
    h = jax.nn.relu(z)
    out = h @ w2 + theta["b2"]
    e = jnp.exp(lopt.exp_mult * out[:, 1])
    c = ct.reshape(-1)
    dout = jnp.stack([c * lopt.step_mult * e, c * lopt.exp_mult * lopt.step_mult * out[:, 0] * e], axis=-1)
    dz = jnp.where(z > 0, dout @ w2.T, 0.0)
    db1 = jnp.sum(dz, axis=0)
    dw = x.T @ dz  # (n_t, hidden): sum over the tensor of x_k dz_j
    ds = jnp.sum(dw * w1[:n_t], axis=1)
    dx = dz @ w.T - (ds * s**3 / x.shape[0]) * x
    dw1 = dw * s[:, None]
    dt = jnp.zeros_like(t)
    if lopt.use_time:
        dw1 = jnp.concatenate([dw1, tf[:, None] * db1[None, :]], axis=0)
        dt = jnp.sum((w1[n_t:] @ db1) * (1.0 - tf**2) / scales)
    dxs = [dx[:, k].reshape(g.shape) for k in range(len(xs))]
    dm = tuple(dxs[2:]) if lopt.use_momentum else tuple(jnp.zeros_like(a) for a in m)
    dtheta = {"w1": dw1, "b1": db1, "w2": h.T @ dout, "b2": jnp.sum(dout, axis=0)}
    return dtheta, dxs[0], dxs[1], dm, dt
