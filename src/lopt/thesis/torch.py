"""The coordinatewise LSTM optimizer of Schröter 2022 (Andrychowicz et al. 2016) as a ``torch.optim.Optimizer``.

:class:`LSTMOptimizerTorch` computes ``LSTMOptimizer.opt_fn(theta).update`` (:mod:`lopt.learned.lstm`: ch. 3.3,
eq. 3.6, sec. 5.3.1's preprocessing, sec. 5.4.2's per-layer networks) in PyTorch alone, on the parameters' device
and dtype, like :mod:`lopt.torch`'s MLP and GRU optimizers (whose machinery it reuses): the update is *added* to
the parameter, each parameter's LSTM state ``[h_1, c_1, ..., h_L, c_L]`` per coordinate is ``self.state[p]["s"]``
(shape ``(*p.shape, state_size)``, the leaf of the JAX ``LSTMOptState``), each param group holds its network
(``group["theta"]``, flat: ``"lstm.{i}.kernel"``, ``"lstm.{i}.recurrent"``, ``"lstm.{i}.bias"``, ``"readout"``)
and the configuration (``group["config"]``), so ``state_dict()`` / ``load_state_dict()`` round-trip everything.

With ``per_layer`` every param group names its layer (a top-level key of the JAX parameter pytree) in
``group["group"]`` and uses ``theta[group["group"]]``; pass ``params`` as a dict ``{layer: params}``, e.g.
:func:`by_layer` ``(model)``, or as param groups with a ``"group"`` key. Only ``import lopt.thesis.torch`` imports
this module (``lopt.thesis`` does not need torch).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np
import torch

from ..torch import _chunks, _LearnedOptimizerTorch, _plain, _tensor

if TYPE_CHECKING:
    from ..learned import LSTMOptimizer

__all__ = ["LSTMOptimizerTorch", "by_layer", "from_jax", "load", "save", "to_jax"]

Flat = dict[str, torch.Tensor]


def _flat(phi: Mapping[str, Any], lstm: LSTMOptimizer) -> Flat:
    """One network phi (JAX pytree ``{"lstm": [{kernel, recurrent, bias}], "readout"}``) as flat torch tensors."""
    out = {f"lstm.{i}.{k}": _tensor(layer[k]) for i, layer in enumerate(phi["lstm"]) for k in ("kernel", "recurrent", "bias")}
    # without a trainable readout the JAX readout ignores phi["readout"] (fixed sum, l.384 footnote 4);
    # a missing one is reported by the shape check
    if lstm.trainable_readout and "readout" in phi:
        out["readout"] = _tensor(phi["readout"])
    return out


def from_jax(theta: Any, lstm: LSTMOptimizer) -> Flat | dict[str, Flat]:
    """theta (a phi, or ``{layer: phi}`` with ``per_layer``) as the torch optimizer holds it: flat tensors per phi."""
    if lstm.per_layer:
        return {name: _flat(phi, lstm) for name, phi in theta.items()}
    return _flat(theta, lstm)


def to_jax(flat: Mapping[str, Any], lstm: LSTMOptimizer) -> dict[str, Any]:
    """The inverse of :func:`from_jax` for one network (e.g. ``group["theta"]``): a phi of numpy arrays."""
    arr = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in flat.items()}
    phi: dict[str, Any] = {"lstm": [{k: arr[f"lstm.{i}.{k}"] for k in ("kernel", "recurrent", "bias")}
                                    for i in range(len(lstm.hidden))]}
    if lstm.trainable_readout:
        phi["readout"] = arr["readout"]
    return phi


def by_layer(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """``{layer: params}`` grouped by the first component of the parameter names ("0.weight" -> "0"), the
    torch counterpart of a JAX parameter pytree's top-level keys (``LSTMOptimizer.layers`` for ``per_layer``)."""
    out: dict[str, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        out.setdefault(name.split(".")[0], []).append(p)
    return out


def preprocess(lstm: LSTMOptimizer, g: torch.Tensor) -> torch.Tensor:
    """The network's input for flat gradients g (N,): (N, num_inputs); sec. 5.3.1 (eq. 5.2 rho) or
    Andrychowicz et al. App. A (log|g|/p, sgn g), as :func:`lopt.learned.lstm.rho` / ``log_sign``."""
    if lstm.preprocessing == "none":
        return g[:, None]
    a = g.abs()
    big = a >= torch.tensor(-lstm.p, dtype=g.dtype, device=g.device).exp()  # jnp.exp(-p) in the gradient's dtype
    log_a = torch.log(torch.where(big, a, torch.ones_like(a)))  # no log(0)
    small = math.exp(lstm.p) * g
    if lstm.preprocessing == "thesis":
        return torch.where(big, torch.sign(g) * log_a / lstm.p, -small)[:, None]
    return torch.stack([torch.where(big, log_a / lstm.p, -1.0), torch.where(big, torch.sign(g), small)], dim=-1)


class LSTMOptimizerTorch(_LearnedOptimizerTorch):
    """``LSTMOptimizer.opt_fn(theta)`` as a torch optimizer (module docstring): per coordinate, two (or
    ``len(hidden)``) Keras LSTM layers (gates i, f, c, o) read the preprocessed gradient, and the update
    ``alpha * sum(h_L)`` (or ``alpha * w^T h_L``) is added to the parameter (eq. 3.6). ``theta`` is the JAX
    pytree (numpy-convertible leaves) or :func:`from_jax`'s torch form."""

    def __init__(self, params: Iterable[Any] | Mapping[str, Any], lstm: LSTMOptimizer, theta: Any) -> None:
        self.lopt = self.lstm = lstm
        flat = theta if _is_flat(theta, lstm) else from_jax(theta, lstm)
        self._phis: dict[str, Flat] = {k: {n: _tensor(v) for n, v in phi.items()}
                                       for k, phi in (flat.items() if lstm.per_layer else [("", flat)])}
        for name, phi in self._phis.items():
            self._check(phi, name)
        if isinstance(params, Mapping):  # {layer: params}
            params = [{"params": [v] if isinstance(v, torch.Tensor) else list(v), "group": str(k)} for k, v in params.items()]
        defaults: dict[str, Any] = {"config": dataclasses.asdict(lstm)}
        if not lstm.per_layer:
            defaults["theta"] = self._phis[""]
        torch.optim.Optimizer.__init__(self, params, defaults)  # not the parent's: theta may differ per group

    @staticmethod
    def _shapes(lstm: LSTMOptimizer) -> dict[str, tuple[int, ...]]:
        out, n_in = {}, lstm.num_inputs
        for i, h in enumerate(lstm.hidden):
            out |= {f"lstm.{i}.kernel": (n_in, 4 * h), f"lstm.{i}.recurrent": (h, 4 * h), f"lstm.{i}.bias": (4 * h,)}
            n_in = h
        return out | ({"readout": (lstm.hidden[-1],)} if lstm.trainable_readout else {})

    def _check(self, phi: Mapping[str, Any], name: str) -> None:
        expected, got = self._shapes(self.lstm), {k: tuple(v.shape) for k, v in phi.items()}
        if got != expected:
            raise ValueError(f"theta{f'[{name!r}]' if name else ''} does not fit {self.lstm}: "
                             f"expected shapes {expected}, got {got}")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """With ``per_layer``, ``param_group["group"]`` (a layer of ``theta``) picks the group's network."""
        if "theta" in param_group:
            self._check(param_group["theta"], str(param_group.get("group", "")))
        elif self.lstm.per_layer:
            name = param_group.get("group")
            if name is None:
                raise ValueError("per_layer: give params as {layer: params} (e.g. by_layer(model)) or as param groups "
                                 "with a 'group' key naming their layer")
            if name not in self._phis:
                raise KeyError(f"no optimizer for layer {name!r}; theta has {', '.join(self._phis)}")
            param_group = {**param_group, "theta": self._phis[name]}
        super().add_param_group(param_group)

    def _update(self, p: torch.Tensor, g: torch.Tensor, state: dict, theta: dict) -> torch.Tensor:
        lo, size = self.lstm, self.lstm.state_size
        if not state:  # zero (h, c) whenever the optimizer state is initialised (LSTMOptimizer.initial_state)
            state["s"] = torch.zeros((*p.shape, size), dtype=p.dtype, device=p.device)
        s, x0 = state["s"].view(-1, size), preprocess(lo, g.reshape(-1))
        out = torch.empty(s.shape[0], dtype=p.dtype, device=p.device)
        for c in _chunks(s.shape[0]):
            x, new, off = x0[c], [], 0
            for i, n in enumerate(lo.hidden):  # LSTMOptimizer.cell
                h, cell = s[c, off:off + n], s[c, off + n:off + 2 * n]
                z = torch.addmm(theta[f"lstm.{i}.bias"], x, theta[f"lstm.{i}.kernel"]) + h @ theta[f"lstm.{i}.recurrent"]
                zi, zf, zu, zo = z.split(n, dim=-1)
                cell = torch.sigmoid(zf) * cell + torch.sigmoid(zi) * torch.tanh(zu)
                x = torch.sigmoid(zo) * torch.tanh(cell)
                new += [x, cell]
                off += 2 * n
            s[c] = torch.cat(new, dim=-1)
            out[c] = lo.alpha * (x @ theta["readout"] if lo.trainable_readout else x.sum(dim=-1))  # readout
        return out.reshape(p.shape)


def _is_flat(theta: Any, lstm: LSTMOptimizer) -> bool:
    """Whether theta is already :func:`from_jax`'s form (flat names) rather than the JAX pytree."""
    phi = next(iter(theta.values()), {}) if lstm.per_layer else theta
    return isinstance(phi, Mapping) and "lstm.0.kernel" in phi


def save(path: str | Path, lstm: LSTMOptimizer, theta: Any, meta: dict | None = None) -> Path:
    """Write a JAX theta for :func:`load` (:func:`lopt.checkpoint.save_pytree`, meta kind "lstm" + kwargs)."""
    import jax

    from .. import checkpoint

    meta = {**(meta or {}), "kind": "lstm", "optimizer": dataclasses.asdict(lstm)}
    return checkpoint.save_pytree(path, jax.tree.map(np.asarray, theta), meta=meta)


def load(path: str | Path, params: Iterable[Any] | Mapping[str, Any], **kw: Any) -> LSTMOptimizerTorch:
    """The torch optimizer of a checkpoint written by :func:`save`; ``kw`` overrides ``LSTMOptimizer`` kwargs."""
    from .. import checkpoint
    from ..learned import LSTMOptimizer

    theta, meta = checkpoint.load_pytree(path)
    if meta.get("kind") != "lstm" or "optimizer" not in meta:
        raise ValueError(f"{path}: not an LSTM optimizer checkpoint (meta kind {meta.get('kind')!r}); write one with save")
    return LSTMOptimizerTorch(params, LSTMOptimizer(**_plain({**meta["optimizer"], **kw})), theta)
