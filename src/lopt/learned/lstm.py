"""The coordinatewise LSTM optimizer of Andrychowicz et al. 2016 as Schröter 2022 trains it (ch. 3.3, ch. 5).

Every coordinate of the optimizee is updated by the same small network phi (two LSTM layers of 20 units, l.384)
from that coordinate's gradient alone, each coordinate with its own LSTM state::

    x          = pre(g)                                  (preprocessing, sec. 5.3.1; identity by default)
    (h_l, c_l) = LSTM_l(input_l, (h_l, c_l))             (Keras LSTM: gates i, f, c, o; input_1 = x, input_l = h_(l-1))
    update     = alpha * sum_j h_L[j]                    (fixed readout, l.384 footnote 4; or alpha * w^T h_L, no bias)
    theta'     = theta + update                          (eq. 3.6: the output is *added*, as optax adds updates)

So the sign of a step is learned, not imposed: a fresh optimizer steps in a random direction per coordinate,
and a trained one learns to output about -alpha * c * g. ``alpha`` is the thesis's learning rate (l.400: 0.001 on
the quadratic, l.408: 0.01 on the MLP). All coordinates of all parameter tensors go through the LSTM at once
(one (N, .) matmul per gate block), like :class:`lopt.learned.GRUOptimizer`.

As in the author's code (a stateful Keras LSTM fed ``stop_gradient``-ed gradients):

- the gradients read are ``lax.stop_gradient``-ed, eq. 3.8 (d grad / d phi = 0: no second derivatives);
- ``detach_state`` (default on) stops the meta-gradient through the carried (h, c) at every step: Keras reads the
  state from variables, so within a truncation only the optimizee's parameters carry the meta-gradient;
- init as Keras: Glorot-uniform input kernels, orthogonal recurrent kernels, zero biases but forget gates at 1;
  the state is zero whenever the optimizer state is initialised (every super epoch).

``per_layer`` gives every layer of the optimizee its own phi (sec. 5.4.2): ``theta = {layer: phi}``, where a
layer is a top-level entry of the parameter pytree (as the code's ``to_1d_per_layer``: a layer's kernel and bias
share one optimizer); the names are given by ``layers``.

Preprocessing (``preprocessing``): ``"none"``; ``"thesis"``, the one channel of eq. 5.2 (:func:`rho`), which is
what the code computes; ``"log_sign"``, Andrychowicz et al.'s two channels (log|g|/p, sgn g), or (-1, e^p g) below
e^-p. The state of one coordinate is one flat vector [h_1, c_1, ..., h_L, c_L] (``state_size`` numbers), so
:func:`lstm_parts` gives the (F, r, h0) that :mod:`lopt.recurrent` analyses.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..optimizers import LearnedOptimizer, Optimizer

Array = jax.Array
Phi = dict[str, Any]
Theta = Any  # a Phi, or {layer: Phi} with per_layer

PREPROCESSING = ("none", "thesis", "log_sign")


def _log_abs(g: Array, p: float) -> tuple[Array, Array]:
    """(|g| >= e^-p, log|g|) with the log taken only where it is finite (no NaN gradients at g = 0)."""
    a = jnp.abs(g)
    big = a >= jnp.exp(-p)
    return big, jnp.log(jnp.where(big, a, 1.0))


def rho(g: Array, p: float = 10.0) -> Array:
    """Eq. 5.2: sgn(g) ln|g| / p if |g| >= e^-p, else -e^p g. Continuous at |g| = e^-p (value -+1), bijective on
    e^-p <= |g| < 1 onto (-1, 0] u [0, 1), and rho(g) = rho(-1/g) for 1 < |g| < e^p (sec. 5.3.1, Fig. 9)."""
    big, log_a = _log_abs(g, p)
    return jnp.where(big, jnp.sign(g) * log_a / p, -jnp.exp(p) * g)


def log_sign(g: Array, p: float = 10.0) -> Array:
    """Andrychowicz et al. 2016 (App. A): (ln|g| / p, sgn g) if |g| >= e^-p, else (-1, e^p g); shape (..., 2)."""
    big, log_a = _log_abs(g, p)
    return jnp.stack([jnp.where(big, log_a / p, -1.0), jnp.where(big, jnp.sign(g), jnp.exp(p) * g)], axis=-1)


class LSTMOptState(NamedTuple):
    s: Any  # per parameter tensor of shape S: its coordinates' states, (*S, state_size) = [h_1, c_1, ..., h_L, c_L]


def _group(path: tuple) -> str:
    """The layer a parameter leaf belongs to: the first entry of its path ("" for a bare array)."""
    if not path:
        return ""
    k = path[0]
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _orthogonal(key: Array, shape: tuple[int, int]) -> Array:
    """``jax.nn.initializers.orthogonal()(key, shape)``, with one QR factorisation per matrix even under ``vmap``.

    jaxlib 0.10's CPU QR kernel splits a batch of matrices over XLA's intra-op thread pool and blocks its pool thread
    until the pieces finish; two batched QRs running at once on a 2-core machine (the pool has 2 threads) wait on
    each other forever. Under ``vmap`` the matrices are therefore factored one at a time (``lax.map``): the same
    LAPACK calls on the same matrices, so the same bits, and a batch of one runs inline.
    """
    @jax.custom_batching.custom_vmap
    def one(k: Array) -> Array:
        return jax.nn.initializers.orthogonal()(k, shape)

    @one.def_vmap
    def _batched(axis_size: int, in_batched: list[bool], k: Array) -> tuple[Array, bool]:
        return jax.lax.map(one, k), True

    return one(key)


@dataclasses.dataclass(frozen=True)
class LSTMOptimizer(LearnedOptimizer):
    """Coordinatewise LSTM optimizer (module docstring). A phi is ``{"lstm": [{"kernel", "recurrent", "bias"}
    per layer], "readout": (hidden[-1],) if trainable_readout}`` with Keras's shapes (kernel (in, 4H), recurrent
    (H, 4H), bias (4H,), gate order i, f, c, o), so meta-gradients are normalised per Keras tensor."""

    hidden: tuple[int, ...] = (20, 20)
    alpha: float = 0.001
    preprocessing: str = "none"
    p: float = 10.0
    per_layer: bool = False
    layers: tuple[str, ...] = ()
    trainable_readout: bool = False
    detach_state: bool = True

    def __post_init__(self) -> None:
        if self.preprocessing not in PREPROCESSING:
            raise ValueError(f"unknown preprocessing {self.preprocessing!r}; allowed values: {', '.join(PREPROCESSING)}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be a non-empty tuple of positive sizes, got {self.hidden}")
        if self.per_layer and not self.layers:
            raise ValueError("per_layer needs the names of the optimizee's layers (top-level keys of its parameters)")

    @property
    def num_inputs(self) -> int:
        return 2 if self.preprocessing == "log_sign" else 1

    @property
    def state_size(self) -> int:
        return 2 * sum(self.hidden)

    # -- meta-parameters --------------------------------------------------------------------------------

    def init_phi(self, key: Array) -> Phi:
        """One network, Keras's LSTM init (Glorot-uniform kernel, orthogonal recurrent kernel, forget bias 1)."""
        glorot, orth = jax.nn.initializers.glorot_uniform(), _orthogonal
        keys = jax.random.split(key, 2 * len(self.hidden) + 1)
        layers, n_in = [], self.num_inputs
        for i, h in enumerate(self.hidden):
            bias = jnp.zeros((4 * h,)).at[h:2 * h].set(1.0)
            layers.append({"kernel": glorot(keys[2 * i], (n_in, 4 * h)),
                           "recurrent": orth(keys[2 * i + 1], (h, 4 * h)), "bias": bias})
            n_in = h
        phi: Phi = {"lstm": layers}
        if self.trainable_readout:
            phi["readout"] = glorot(keys[-1], (self.hidden[-1], 1))[:, 0]  # Keras Dense(1, use_bias=False)
        return phi

    def init(self, key: Array) -> Theta:
        """theta: one phi, or with ``per_layer`` an independently initialised phi per layer."""
        if not self.per_layer:
            return self.init_phi(key)
        return {name: self.init_phi(k) for name, k in zip(self.layers, jax.random.split(key, len(self.layers)))}

    def from_phi(self, phi: Phi) -> Theta:
        """theta with ``phi`` for every layer (a pretrained network copied into each optimizer, ch. 5.4.4)."""
        return {name: phi for name in self.layers} if self.per_layer else phi

    # -- one coordinate (broadcast over leading axes) -------------------------------------------------------

    def preprocess(self, g: Array) -> Array:
        """The network's input for gradients g (...): shape (..., num_inputs)."""
        if self.preprocessing == "thesis":
            return rho(g, self.p)[..., None]
        if self.preprocessing == "log_sign":
            return log_sign(g, self.p)
        return g[..., None]

    def initial_state(self, phi: Phi | None = None) -> Array:
        """State of one coordinate before any gradient: zeros, shape (state_size,)."""
        return jnp.zeros((self.state_size,))

    def cell(self, phi: Phi, s: Array, g: Array) -> Array:
        """F(s, g): the state after reading gradient g. s (..., state_size), g (...) -> (..., state_size)."""
        x = self.preprocess(jnp.asarray(g, s.dtype))
        out, offset = [], 0
        for layer, n in zip(phi["lstm"], self.hidden):
            h, c = s[..., offset:offset + n], s[..., offset + n:offset + 2 * n]
            z = x @ layer["kernel"] + h @ layer["recurrent"] + layer["bias"]
            i, f, u, o = jnp.split(z, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(u)
            x = jax.nn.sigmoid(o) * jnp.tanh(c)
            out += [x, c]
            offset += 2 * n
        return jnp.concatenate(out, axis=-1)

    def readout(self, phi: Phi, s: Array) -> Array:
        """The update of a coordinate in state s: alpha * sum(h_L), or alpha * w^T h_L. (..., state_size) -> (...)."""
        n = self.hidden[-1]
        h = s[..., self.state_size - 2 * n:self.state_size - n]
        return self.alpha * (h @ phi["readout"] if self.trainable_readout else jnp.sum(h, axis=-1))

    # -- the optimizer --------------------------------------------------------------------------------------

    def opt_fn(self, theta: Theta) -> Optimizer:
        def init(params: Any) -> LSTMOptState:
            return LSTMOptState(jax.tree.map(lambda p: jnp.zeros((*jnp.shape(p), self.state_size),
                                                                 jnp.result_type(p)), params))

        def update(grads: Any, state: LSTMOptState, params: Any = None) -> tuple[Any, LSTMOptState]:
            with_path, treedef = jax.tree_util.tree_flatten_with_path(grads)
            g_leaves = [jax.lax.stop_gradient(g) for _, g in with_path]  # eq. 3.8
            s_leaves = treedef.flatten_up_to(state.s)
            groups: dict[str, list[int]] = {}
            for i, (path, _) in enumerate(with_path):
                groups.setdefault(_group(path) if self.per_layer else "", []).append(i)
            new_s, updates = list(s_leaves), list(g_leaves)
            for name, idx in groups.items():
                if self.per_layer and name not in theta:
                    raise KeyError(f"no optimizer for layer {name!r}; theta has {', '.join(theta)}")
                phi = theta[name] if self.per_layer else theta
                g = jnp.concatenate([jnp.ravel(g_leaves[i]) for i in idx])
                s = jnp.concatenate([s_leaves[i].reshape(-1, self.state_size) for i in idx])
                if self.detach_state:
                    s = jax.lax.stop_gradient(s)
                s = self.cell(phi, s, g)
                u = self.readout(phi, s)
                cuts = list(itertools.accumulate(int(jnp.size(g_leaves[i])) for i in idx))[:-1]
                for i, si, ui in zip(idx, jnp.split(s, cuts), jnp.split(u, cuts)):
                    shape = jnp.shape(g_leaves[i])
                    new_s[i] = si.reshape(*shape, self.state_size)
                    updates[i] = ui.reshape(shape).astype(jnp.result_type(g_leaves[i]))
            return treedef.unflatten(updates), LSTMOptState(treedef.unflatten(new_s))

        return optax.GradientTransformation(init, update)


def lstm_parts(lstm: LSTMOptimizer, phi: Phi) -> tuple[Callable[[Array, Array], Array], Callable[[Array], Array], Array]:
    """(F, r, h0) of one network phi, the interface of :mod:`lopt.recurrent` (as ``gru_parts`` for the GRU):
    F(s, g) -> s over the flat state [h_1, c_1, ..., h_L, c_L], r(s) the update (alpha included), h0 = 0."""
    phi = jax.tree.map(jnp.asarray, phi)
    return (lambda s, g: lstm.cell(phi, s, g)), (lambda s: lstm.readout(phi, s)), lstm.initial_state(phi)
