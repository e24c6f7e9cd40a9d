"""Saving and loading pytrees (learned-optimizer weights, outer-training checkpoints).

A pytree is stored as one ``.npz`` file, with no pickle anywhere (it is read with
``allow_pickle=False``, so loading a file never runs code):

- ``leaf_00000``, ``leaf_00001``, ...: the leaves in ``jax.tree.flatten`` order, exact (dtypes
  included);
- ``__structure__``: the tree's structure as UTF-8 JSON. Trees of dicts (str keys), lists, tuples
  and None are encoded node by node (``{"dict": {k: ...}}``, ``{"list": [...]}``,
  ``{"tuple": [...]}``, ``{"none": null}``, ``{"leaf": i}``) and rebuilt from the file alone.
  Any other node (optax NamedTuple states, registered dataclasses) makes the tree *opaque*:
  ``{"opaque": str(treedef)}``, rebuilt only from a template, ``load_pytree(path, like=tree)``,
  whose structure string, number of leaves and leaf shapes and dtypes must match the file;
- ``__meta__``: an optional JSON-ready dict (say, the optimizer's configuration).

:func:`read_meta` reads only the meta dict. :func:`fingerprint` hashes what makes a run (pytrees
exactly, dataclasses by a process-independent description, strings), and
:func:`check_fingerprint` refuses a checkpoint whose stored fingerprint differs, naming the parts
(:func:`lopt.outer.train` resumes only from a checkpoint of the same run).

Files of the old format (the structure pickled in ``__treedef__``) are refused, never unpickled;
an unreadable (truncated, corrupt) file raises ``ValueError`` naming the path. Writes are atomic
(temporary file, then rename), so a run killed while saving never leaves a truncated file behind.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import re
import types
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

FORMAT = "lopt-pytree/1"
_UNREADABLE = (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError)


def _encode(tree: Any, leaves: list) -> Any:
    """The JSON node of a plain tree (appending its leaves to ``leaves`` in jax.tree.flatten
    order: dict keys sorted), or ``None`` when the tree holds any other node type."""
    if tree is None:
        return {"none": None}
    if type(tree) is dict:
        if not all(isinstance(k, str) for k in tree):
            return None
        out = {}
        for k in sorted(tree):
            out[k] = _encode(tree[k], leaves)
            if out[k] is None:
                return None
        return {"dict": out}
    if type(tree) in (list, tuple):
        items = [_encode(x, leaves) for x in tree]
        return None if any(x is None for x in items) else {type(tree).__name__: items}
    treedef = jax.tree.structure(tree)
    if treedef.num_leaves == 1 and treedef.num_nodes == 1:
        leaves.append(tree)
        return {"leaf": len(leaves) - 1}
    return None


def _decode(node: dict, leaves: list) -> Any:
    (kind, value), = node.items()
    if kind == "none":
        return None
    if kind == "leaf":
        return leaves[value]
    if kind == "dict":
        return {k: _decode(v, leaves) for k, v in value.items()}
    if kind in ("list", "tuple"):
        items = [_decode(v, leaves) for v in value]
        return items if kind == "list" else tuple(items)
    raise ValueError(f"unknown structure node {kind!r}")


def _json_bytes(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode(), dtype=np.uint8)


def save_pytree(path: str | Path, tree: Any, meta: dict | None = None) -> Path:
    """Write ``tree`` (and ``meta``, JSON-ready) to ``path`` atomically; returns the path."""
    path = Path(path)
    leaves, treedef = jax.tree.flatten(tree)
    plain: list = []
    node = _encode(tree, plain)
    if node is None:
        node = {"opaque": str(treedef)}
    elif len(plain) != len(leaves) or any(a is not b for a, b in zip(plain, leaves)):
        raise AssertionError("structure encoding out of step with jax.tree.flatten")  # never expected
    arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    for name, a in arrays.items():
        if a.dtype.hasobject:
            raise ValueError(f"{path}: {name} has dtype {a.dtype}, which cannot be stored without pickle")
    arrays["__structure__"] = _json_bytes({"format": FORMAT, "num_leaves": len(leaves), "tree": node})
    arrays["__meta__"] = _json_bytes(meta or {})
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # no object arrays (checked above): nothing is pickled
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


class _OldFormat(Exception):
    pass


def _read(path: Path, with_leaves: bool = True) -> tuple[dict, list[np.ndarray], dict]:
    """(structure, leaves, meta) of a file in the current format; ValueError otherwise."""
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError("a bare .npy array, not an .npz archive")
        with f:
            if "__treedef__" in f.files:
                raise _OldFormat
            structure = json.loads(f["__structure__"].tobytes().decode())
            meta = json.loads(f["__meta__"].tobytes().decode())
            if structure.get("format") != FORMAT:
                raise ValueError(f"unknown format {structure.get('format')!r}")
            leaves = [f[f"leaf_{i:05d}"] for i in range(int(structure["num_leaves"]) if with_leaves else 0)]
    except _OldFormat:
        raise ValueError(
            f"{path} stores its tree structure pickled (an old format that could run code when loaded); not "
            "loaded. Regenerate it by rerunning the notebook that writes it (e.g. `dvc repro <stage>`), or "
            "delete it.") from None
    except _UNREADABLE as e:
        raise ValueError(f"{path} is not a readable lopt checkpoint ({type(e).__name__}: {e}): delete it and "
                         "rerun the notebook / stage that writes it") from e
    return structure, leaves, meta


def _check_like(path: Path, stored: str, leaves: list[np.ndarray], like: Any) -> jax.tree_util.PyTreeDef:
    """The template's treedef, after checking that the file holds a tree of its structure, leaf
    count, leaf shapes and dtypes."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(like)
    advice = "written for a different run/structure; delete it to start over"
    if str(treedef) != stored:
        raise ValueError(f"{path} was {advice}: its tree structure\n  {stored}\ndiffers from the expected\n  {treedef}")
    if len(with_path) != len(leaves):
        raise ValueError(f"{path} was {advice}: it holds {len(leaves)} leaves, expected {len(with_path)}")
    for (keys, x), a in zip(with_path, leaves):
        shape, dtype = np.shape(x), np.dtype(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
        if a.shape != shape or a.dtype != dtype:
            raise ValueError(f"{path} was {advice}: leaf {jax.tree_util.keystr(keys) or '(root)'} is "
                             f"{a.dtype}{list(a.shape)}, expected {dtype}{list(shape)}")
    return treedef


def load_pytree(path: str | Path, like: Any = None) -> tuple[Any, dict]:
    """The pytree (leaves as numpy arrays) and the ``meta`` dict stored by :func:`save_pytree`.

    With ``like`` (a pytree of the expected structure, leaf shapes and dtypes: say, a fresh run's
    state) the tree is rebuilt with its structure, after checking that the file matches it;
    without it, only plain trees (dicts, lists, tuples, None) can be loaded. Raises
    ``FileNotFoundError`` when the file does not exist and ``ValueError`` when it is of the old
    pickled format, unreadable, opaque without ``like``, or does not match ``like``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    structure, leaves, meta = _read(path)
    try:
        node = structure["tree"]
        tree = None if "opaque" in node else _decode(node, leaves)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a readable lopt checkpoint (bad structure: {e!r}): delete it and rerun "
                         "the notebook / stage that writes it") from e
    if like is not None:
        stored = node["opaque"] if "opaque" in node else str(jax.tree.structure(tree))
        return jax.tree.unflatten(_check_like(path, stored, leaves, like), leaves), meta
    if tree is None:
        raise ValueError(f"{path} holds a tree with node types JSON cannot rebuild ({node['opaque']}); pass "
                         "like= (a tree of the same structure, e.g. a fresh run's state) to load it")
    return tree, meta


def read_meta(path: str | Path) -> dict:
    """The ``meta`` dict of a file written by :func:`save_pytree` (errors as :func:`load_pytree`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return _read(path, with_leaves=False)[2]


def tree_digest(tree: Any) -> str:
    """sha256 (hex) of a pytree's structure and of each leaf's dtype, shape and bytes."""
    h = hashlib.sha256(str(jax.tree.structure(tree)).encode())
    for x in jax.tree.leaves(tree):
        a = np.ascontiguousarray(np.asarray(x))
        h.update(f"|{a.dtype.str}{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _describe(obj: Any, depth: int = 0) -> str:
    if depth > 8:
        return "..."
    d = functools.partial(_describe, depth=depth + 1)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = (f"{f.name}={d(getattr(obj, f.name))}" for f in dataclasses.fields(obj) if f.repr)
        return f"{type(obj).__qualname__}({', '.join(fields)})"
    if isinstance(obj, types.FunctionType):  # closures (say, truncation schedules) by what they close over
        cells = []
        for c in obj.__closure__ or ():
            try:
                cells.append(d(c.cell_contents))
            except ValueError:  # an empty cell
                cells.append("<empty>")
        return f"{obj.__module__}.{obj.__qualname__}(defaults={d(obj.__defaults__)}, closure=[{', '.join(cells)}])"
    if isinstance(obj, functools.partial):
        return f"partial({d(obj.func)}, {d(obj.args)}, {d(obj.keywords)})"
    if type(obj) in (list, tuple):
        return f"{type(obj).__name__}[{', '.join(map(d, obj))}]"
    if type(obj) is dict:
        return "{" + ", ".join(f"{d(k)}: {d(v)}" for k, v in obj.items()) + "}"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


def object_digest(obj: Any) -> str:
    """sha256 (hex) of a description of ``obj`` that is the same in every process: dataclasses field
    by field (as their repr), functions by name, defaults and closure, anything else by its repr
    without memory addresses, arrays under numpy's default print options (so large ones only in
    part: a cheap check, not a proof of equality)."""
    with np.printoptions(precision=8, threshold=1000, edgeitems=3, linewidth=75, suppress=False,
                         floatmode="maxprec", sign="-"):
        return hashlib.sha256(_describe(obj).encode()).hexdigest()


def fingerprint(**parts: Any) -> dict[str, str]:
    """sha256 (hex) per named part: a str by its UTF-8 bytes, a dataclass instance by
    :func:`object_digest`, anything else as a pytree of arrays by :func:`tree_digest`."""
    def one(x):
        if isinstance(x, str):
            return hashlib.sha256(x.encode()).hexdigest()
        return object_digest(x) if dataclasses.is_dataclass(x) and not isinstance(x, type) else tree_digest(x)

    return {name: one(x) for name, x in parts.items()}


class StaleCheckpoint(ValueError):
    """A checkpoint that belongs to another run (its fingerprint differs) or is past the requested end."""


def check_fingerprint(path: str | Path, meta: dict, parts: dict[str, str]) -> None:
    """ValueError unless ``meta["fingerprint_parts"]`` (as stored beside a checkpoint) equals
    ``parts`` (:func:`fingerprint` of the run about to resume), naming the parts that differ."""
    advice = "delete it or pass another checkpoint path"
    stored = meta.get("fingerprint_parts")
    if not isinstance(stored, dict):
        raise StaleCheckpoint(f"{path} has no run fingerprint (written by an older lopt), so it cannot be checked to "
                         f"belong to this run; {advice}")
    differ = [k for k in parts if stored.get(k) != parts[k]]
    if differ:
        raise StaleCheckpoint(f"{path} was written by a different run (fingerprint differs: {' / '.join(differ)}); "
                         f"{advice}")
