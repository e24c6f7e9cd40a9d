"""Trained learned optimizers as ``torch.optim.Optimizer``s, for training PyTorch models.

:class:`MLPOptimizerTorch` computes ``MLPOptimizer.opt_fn(theta).update`` (the per-parameter MLP of
Metz et al. 2019 sec. 4.1) and :class:`GRUOptimizerTorch` ``GRUOptimizer.opt_fn(theta).update`` (the
per-coordinate GRU of Maheswaranathan et al. 2021 sec. 2, eqs. 1-2), in PyTorch alone: no JAX at step
time, on the parameters' device (CPU or CUDA) and dtype. As with ``optax.apply_updates``, the update is
*added* to the parameter (the learned optimizers carry their own sign). The meta-parameters ``theta``
live in each param group (``group["theta"]``, with the optimizer's configuration in ``group["config"]``),
so ``state_dict()`` / ``load_state_dict()`` round-trip the whole optimizer.

:func:`load` reads a checkpoint written by :func:`lopt.checkpoint.save_pytree`: the GRUs of notebook 10
(``data/learned/gru_*.npz``, ``meta["optimizer"]`` the ``GRUOptimizer`` kwargs) or an MLP optimizer
written by :func:`save_mlp` (``meta["kind"] == "mlp"``, ``meta["optimizer"]`` the ``MLPOptimizer``
kwargs). Importing ``lopt`` does not import torch; importing this module does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch

if TYPE_CHECKING:
    from .learned import GRUOptimizer, MLPOptimizer

__all__ = ["GRUOptimizerTorch", "MLPOptimizerTorch", "cnn", "load", "save_mlp"]

KINDS = ("gru", "mlp")
# rows (coordinates) per chunk of the per-coordinate networks: bounds the (rows, hidden) temporaries
_CHUNK = 1 << 18


def _tensor(x: Any) -> torch.Tensor:
    """A torch copy of an array (numpy, JAX, or torch)."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    return torch.from_numpy(np.array(x))


def _chunks(n: int) -> Iterator[slice]:
    return (slice(i, min(i + _CHUNK, n)) for i in range(0, n, _CHUNK))


class _LearnedOptimizerTorch(torch.optim.Optimizer):
    """Shared machinery: theta and config in every param group, one ``_update`` per parameter tensor."""

    _shapes: Callable[[Any], dict[str, tuple[int, ...]]]

    def __init__(self, params: Iterable[Any], lopt: Any, theta: Mapping[str, Any]) -> None:
        self.lopt = lopt
        config = dataclasses.asdict(lopt)
        theta = {k: _tensor(v) for k, v in theta.items()}
        expected = self._shapes(lopt)
        got = {k: tuple(v.shape) for k, v in theta.items()}
        if got != expected:
            raise ValueError(f"theta does not fit {lopt}: expected shapes {expected}, got {got}")
        super().__init__(params, {"theta": theta, "config": config})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]  # theta on the device and dtype of the group's first parameter
        p0 = group["params"][0]
        group["theta"] = {k: _tensor(v).to(p0.device, p0.dtype) for k, v in group["theta"].items()}

    def __repr__(self) -> str:
        sizes = ", ".join(str(len(g["params"])) for g in self.param_groups)
        return f"{type(self).__name__}({self.lopt}, params per group: {sizes})"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        own = _plain(dataclasses.asdict(self.lopt))
        for group in state_dict["param_groups"]:
            if _plain(group.get("config", {})) != own:
                raise ValueError(f"state_dict is of a different learned optimizer: {group.get('config')} != {own}")
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One learned update of every parameter with a gradient: ``p += update(grad, state, p)``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                theta = {k: v.to(p.device, p.dtype) for k, v in group["theta"].items()}
                p.add_(self._update(p, p.grad.to(p.dtype), self.state[p], theta))
        return loss

    def _update(self, p: torch.Tensor, g: torch.Tensor, state: dict, theta: dict) -> torch.Tensor:
        raise NotImplementedError


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict with lists as tuples (JSON and some serialisers turn tuples into lists)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


class MLPOptimizerTorch(_LearnedOptimizerTorch):
    """``MLPOptimizer.opt_fn(theta)`` (Metz et al. 2019 sec. 4.1, App. D) as a torch optimizer.

    Per parameter tensor: the gradient's moving averages at ``decays`` (state ``emas``, only with
    ``use_momentum``), the inputs (g, p, emas) each divided by its RMS over the tensor, the time
    features tanh(t / s - 1) (state ``step``), one hidden ReLU layer, and the update
    ``step_mult * d * exp(exp_mult * l)``: the fused form of ``MLPOptimizer.direction_fused``, where
    the RMS scales fold into the first-layer weights and the time features into its bias.
    """

    def __init__(self, params: Iterable[Any], lopt: MLPOptimizer, theta: Mapping[str, Any]) -> None:
        super().__init__(params, lopt, theta)

    @staticmethod
    def _shapes(lopt: MLPOptimizer) -> dict[str, tuple[int, ...]]:
        return {"w1": (lopt.num_inputs, lopt.hidden), "b1": (lopt.hidden,), "w2": (lopt.hidden, 2), "b2": (2,)}

    def _update(self, p: torch.Tensor, g: torch.Tensor, state: dict, theta: dict) -> torch.Tensor:
        lo = self.lopt
        if not state:
            state["step"] = 0
            if lo.use_momentum:
                state["emas"] = torch.zeros((*p.shape, len(lo.decays)), dtype=p.dtype, device=p.device)
        step = state["step"]
        xs = [g.reshape(-1), p.reshape(-1)]
        if lo.use_momentum:
            decays = torch.tensor(lo.decays, dtype=p.dtype, device=p.device)
            m = state["emas"]
            m.mul_(decays).add_(g.unsqueeze(-1) * (1.0 - decays))
            xs += list(m.reshape(-1, len(lo.decays)).unbind(-1))
        n_tensor = len(xs)
        scale = torch.rsqrt(torch.stack([torch.mean(x * x) for x in xs]) + 1e-12)
        w1 = theta["w1"][:n_tensor] * scale[:, None]
        b1 = theta["b1"]
        if lo.use_time:
            scales = torch.tensor(lo.time_scales, dtype=p.dtype, device=p.device)
            b1 = b1 + torch.tanh(step / scales - 1.0) @ theta["w1"][n_tensor:]
        x = torch.stack(xs, dim=-1)  # (coordinates, n_tensor)
        out = torch.empty((x.shape[0], 2), dtype=p.dtype, device=p.device)
        for c in _chunks(x.shape[0]):
            out[c] = torch.relu(x[c] @ w1 + b1) @ theta["w2"] + theta["b2"]
        state["step"] = step + 1
        return (lo.step_mult * out[:, 0] * torch.exp(lo.exp_mult * out[:, 1])).reshape(p.shape)


class GRUOptimizerTorch(_LearnedOptimizerTorch):
    """``GRUOptimizer.opt_fn(theta)`` (Maheswaranathan et al. 2021 sec. 2, eqs. 1-2) as a torch optimizer.

    Every coordinate carries a state h (``hidden`` numbers, state ``h``; initially the learned ``h0``),
    updated by the GRU cell from ``input_scale * g``; the update is ``output_scale * readout . h'``.
    """

    def __init__(self, params: Iterable[Any], lopt: GRUOptimizer, theta: Mapping[str, Any]) -> None:
        super().__init__(params, lopt, theta)

    @staticmethod
    def _shapes(lopt: GRUOptimizer) -> dict[str, tuple[int, ...]]:
        n = lopt.hidden
        return {"b": (3, n), "h0": (n,), "readout": (n,), "u": (3, n, n), "w_in": (3, n)}

    def _update(self, p: torch.Tensor, g: torch.Tensor, state: dict, theta: dict) -> torch.Tensor:
        lo, n = self.lopt, self.lopt.hidden
        if not state:
            state["h"] = theta["h0"].expand(*p.shape, n).clone()
        h = state["h"].view(-1, n)
        s = (lo.input_scale * g).reshape(-1, 1)
        w, u, b = theta["w_in"], theta["u"], theta["b"]
        u_zr = torch.cat([u[0], u[1]], dim=1)
        out = torch.empty(h.shape[0], dtype=p.dtype, device=p.device)
        for c in _chunks(h.shape[0]):
            hc, sc = h[c], s[c]
            zr = hc @ u_zr
            z = torch.sigmoid(sc * w[0] + zr[:, :n] + b[0])
            r = torch.sigmoid(sc * w[1] + zr[:, n:] + b[1])
            cand = torch.tanh(sc * w[2] + (r * hc) @ u[2] + b[2])
            hc = z * hc + (1.0 - z) * cand  # eq. 1
            h[c] = hc
            out[c] = lo.output_scale * (hc @ theta["readout"])  # eq. 2
        return out.reshape(p.shape)


_CLASSES: dict[str, type[_LearnedOptimizerTorch]] = {"gru": GRUOptimizerTorch, "mlp": MLPOptimizerTorch}


def load(path: str | Path, params: Iterable[Any], **kw: Any) -> torch.optim.Optimizer:
    """The torch optimizer of a learned-optimizer checkpoint, over ``params``.

    ``meta["kind"]`` (default ``"gru"``, as in notebook 10's files) picks the class, ``meta["optimizer"]``
    holds the learned optimizer's kwargs; ``kw`` overrides some of them (e.g. ``output_scale=0.05``)."""
    from . import checkpoint
    from .learned import GRUOptimizer, MLPOptimizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the trained GRU optimizers data/learned/gru_*.npz are written by notebook 10 "
            "(`dvc repro nb10_learned_optimizers`, or run notebooks/10_learned_optimizers.ipynb); "
            "MLP optimizer checkpoints by lopt.torch.save_mlp"
        )
    theta, meta = checkpoint.load_pytree(path)
    kind = meta.get("kind", "gru")
    if kind not in KINDS:
        raise ValueError(f"{path}: unknown learned-optimizer kind {kind!r}; allowed values: {', '.join(KINDS)}")
    if "optimizer" not in meta:
        raise ValueError(f"{path}: meta has no 'optimizer' entry (the learned optimizer's kwargs)")
    lopt_cls = {"gru": GRUOptimizer, "mlp": MLPOptimizer}[kind]
    lopt = lopt_cls(**_plain({**meta["optimizer"], **kw}))
    return _CLASSES[kind](params, lopt, theta)


def save_mlp(path: str | Path, lopt: MLPOptimizer, theta: Mapping[str, Any], meta: dict | None = None) -> Path:
    """Write an MLP optimizer's ``theta`` for :func:`load`: ``meta`` plus kind "mlp" and its kwargs."""
    from . import checkpoint

    arrays = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in theta.items()}
    meta = {**(meta or {}), "kind": "mlp", "optimizer": dataclasses.asdict(lopt)}
    return checkpoint.save_pytree(path, arrays, meta=meta)


def cnn(in_channels: int, channels: Iterable[int], num_classes: int, strides: Iterable[int] | None = None
        ) -> torch.nn.Module:
    """The CNN of :class:`lopt.tasks.ImageClassifier` (``model="cnn"``) as an ``nn.Module``: 3x3 convolutions
    (stride ``strides[i]``, 2 by default, padding 1) with ReLU, global mean pooling, a linear readout. Input
    NCHW floats in [0, 1]."""
    channels = list(channels)
    strides = list(strides) if strides is not None else [2] * len(channels)
    layers, c_in = [], int(in_channels)
    for c_out, s in zip(channels, strides):
        layers += [torch.nn.Conv2d(c_in, int(c_out), 3, stride=int(s), padding=1), torch.nn.ReLU()]
        c_in = int(c_out)
    return torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(c_in, num_classes))


def fit(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: Any, labels: Any, num_steps: int,
        batch_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A plain PyTorch training loop (minibatches with replacement, cross-entropy, ``zero_grad`` / ``backward``
    / ``step``) on uint8 images (N, H, W); returns the loss and the wall-clock seconds of every step."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32).unsqueeze(1) / 255.0
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    gen = torch.Generator().manual_seed(int(seed))
    losses, seconds = [], []
    import time

    for _ in range(int(num_steps)):
        t0 = time.perf_counter()
        idx = torch.randint(0, x.shape[0], (int(batch_size),), generator=gen)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    return np.asarray(losses), np.asarray(seconds)
