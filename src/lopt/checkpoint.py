"""Saving and loading pytrees (learned-optimizer weights, outer-training checkpoints).

A pytree is stored as one ``.npz`` file: its leaves as arrays (exact, including dtypes), its
structure and an optional JSON-ready ``meta`` dict (say, the optimizer's configuration) pickled
beside them. Writes are atomic (temporary file, then rename), so a run killed while saving never
leaves a truncated file behind.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import jax
import numpy as np


def save_pytree(path: str | Path, tree: Any, meta: dict | None = None) -> Path:
    """Write ``tree`` (and ``meta``, JSON-ready) to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves, treedef = jax.tree.flatten(tree)
    arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays["__treedef__"] = np.frombuffer(pickle.dumps(treedef), dtype=np.uint8)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta or {}, sort_keys=True).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def load_pytree(path: str | Path) -> tuple[Any, dict]:
    """The pytree (leaves as numpy arrays) and the ``meta`` dict stored by :func:`save_pytree`.

    Raises ``FileNotFoundError`` with the path when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with np.load(path, allow_pickle=False) as f:
        treedef = pickle.loads(f["__treedef__"].tobytes())
        meta = json.loads(f["__meta__"].tobytes().decode())
        n = len([k for k in f.files if k.startswith("leaf_")])
        leaves = [f[f"leaf_{i:05d}"] for i in range(n)]
    return jax.tree.unflatten(treedef, leaves), meta
