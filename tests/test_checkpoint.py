"""lopt.checkpoint: exact round trips with the structure stored as JSON (no pickle), old pickled files
refused without being unpickled, unreadable files named, ``like=`` for trees JSON cannot rebuild
(optax states) with its structure / shape / dtype checks, and the run fingerprints."""

from __future__ import annotations

import json
import pathlib
import pickle
import re
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import checkpoint, estimators, optimizers, tasks, truncation


def _nested():
    return {
        "f32": np.array([[1.5, -0.0], [np.inf, np.nan]], np.float32),
        "lists": [np.float64(np.pi), (np.arange(4, dtype=np.int32) - 2, None), [np.array([True, False])]],
        "tuple": (np.array(1e-300, np.float64), {"deeper": np.array([-(2**31)], np.int32), "none": None}),
        "empty": {"list": [], "tuple": (), "dict": {}},
        "scalar": np.float32(0.1),
    }


def _assert_exact(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x = np.asarray(x)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()  # bit for bit (NaN, -0.0 included)


def test_round_trip_of_nested_plain_trees_is_exact(tmp_path):
    tree = _nested()
    path = checkpoint.save_pytree(tmp_path / "sub" / "t.npz", tree, meta={"hidden": 4, "name": "x"})
    back, meta = checkpoint.load_pytree(path)
    assert meta == {"hidden": 4, "name": "x"} == checkpoint.read_meta(path)
    _assert_exact(tree, back)
    assert type(back["lists"]) is list and type(back["lists"][1]) is tuple and back["tuple"][1]["none"] is None
    # the stored leaves are jax.tree.flatten's leaves, in its order
    with np.load(path, allow_pickle=False) as f:
        for i, x in enumerate(jax.tree.leaves(tree)):
            assert f[f"leaf_{i:05d}"].tobytes() == np.asarray(x).tobytes()
    # a plain tree loads with like= too (same checks as for opaque trees)
    _assert_exact(tree, checkpoint.load_pytree(path, like=tree)[0])
    assert not list(path.parent.glob("*.tmp"))  # the atomic write leaves no temporary file


def test_file_holds_json_and_no_pickle(tmp_path):
    path = checkpoint.save_pytree(tmp_path / "t.npz", _nested())
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    assert "__treedef__.npy" not in names and "__structure__.npy" in names
    with np.load(path, allow_pickle=False) as f:
        assert all(not f[k].dtype.hasobject for k in f.files)
        structure = json.loads(f["__structure__"].tobytes().decode())
    assert structure["format"] == checkpoint.FORMAT and structure["num_leaves"] == len(jax.tree.leaves(_nested()))
    assert structure["tree"]["dict"]["lists"]["list"][1] == {"tuple": [{"leaf": 2}, {"none": None}]}
    with pytest.raises(ValueError, match="without pickle"):
        checkpoint.save_pytree(tmp_path / "obj.npz", {"a": np.array([{}, 1], dtype=object)})
    assert not (tmp_path / "obj.npz").exists()


class _Payload:
    """Unpickling this creates the file ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_old_pickled_format_is_refused_without_unpickling(tmp_path):
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_Payload(live)))
    assert live.exists()  # the payload does run code when unpickled
    marker = tmp_path / "marker"
    path = tmp_path / "old.npz"
    np.savez(path, leaf_00000=np.zeros(2), __treedef__=np.frombuffer(pickle.dumps(_Payload(marker)), np.uint8),
             __meta__=np.frombuffer(b"{}", np.uint8))
    for call in (lambda: checkpoint.load_pytree(path), lambda: checkpoint.load_pytree(path, like=[np.zeros(2)]),
                 lambda: checkpoint.read_meta(path)):
        with pytest.raises(ValueError, match=re.escape(str(path)) + ".*pickled.*not loaded.*dvc repro"):
            call()
    assert not marker.exists()


def test_unreadable_files_name_the_path(tmp_path):
    path = checkpoint.save_pytree(tmp_path / "t.npz", _nested())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(str(path)) + " is not a readable lopt checkpoint.*delete it"):
        checkpoint.load_pytree(path)
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match=re.escape(str(path)) + " is not a readable"):
        checkpoint.load_pytree(path)
    np.save(tmp_path / "bare.npy", np.zeros(3))
    with pytest.raises(ValueError, match="not a readable"):
        checkpoint.load_pytree(tmp_path / "bare.npy")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(2))  # an .npz of someone else's: no structure entry
    with pytest.raises(ValueError, match="not a readable"):
        checkpoint.load_pytree(tmp_path / "foreign.npz")
    with pytest.raises(FileNotFoundError, match="missing"):
        checkpoint.load_pytree(tmp_path / "missing.npz")


def _adam_tree():
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.array([0.5], jnp.float32)}
    opt = optax.adam(1e-3)
    state = opt.init(params)
    for g in (1.0, -2.0):
        _, state = opt.update(jax.tree.map(lambda p: g * jnp.ones_like(p), params), state, params)
    return params, {"params": params, "opt_state": state, "step": np.int32(2)}


def test_like_rebuilds_optax_states(tmp_path):
    params, tree = _adam_tree()
    path = checkpoint.save_pytree(tmp_path / "adam.npz", tree, meta={"k": 1})
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*pass like="):
        checkpoint.load_pytree(path)
    template = {"params": params, "opt_state": optax.adam(1e-3).init(params), "step": np.int32(0)}
    back, meta = checkpoint.load_pytree(path, like=template)
    assert meta == {"k": 1}
    _assert_exact(tree, back)
    assert isinstance(back["opt_state"][0], optax.ScaleByAdamState) and int(back["opt_state"][0].count) == 2


def test_like_mismatch_is_refused(tmp_path):
    params, tree = _adam_tree()
    path = checkpoint.save_pytree(tmp_path / "adam.npz", tree)
    advice = re.escape(str(path)) + " was written for a different run/structure; delete it to start over"
    sgd = {"params": params, "opt_state": optax.sgd(0.1, momentum=0.9).init(params), "step": np.int32(0)}
    with pytest.raises(ValueError, match=advice + ".*tree structure"):
        checkpoint.load_pytree(path, like=sgd)
    wider = {**params, "w": jnp.zeros((2, 4))}
    leaf = r": leaf \['opt_state'\]\[0\]\.mu\['w'\] is float32\[2, 3\], expected float32\[2, 4\]"
    with pytest.raises(ValueError, match=advice + leaf):
        checkpoint.load_pytree(path, like={"params": wider, "opt_state": optax.adam(1e-3).init(wider), "step": 0})
    with pytest.raises(ValueError, match=advice + r".*leaf \['step'\] is int32\[\], expected float32\[\]"):
        checkpoint.load_pytree(path, like={**tree, "step": np.float32(0)})
    plain = checkpoint.save_pytree(tmp_path / "plain.npz", {"a": [np.zeros(2)]})
    with pytest.raises(ValueError, match="different run/structure.*tree structure"):
        checkpoint.load_pytree(plain, like={"a": (np.zeros(2),)})


def test_fingerprints(tmp_path):
    """Pytrees hash exactly; dataclasses (estimators) by a description that does not depend on
    memory addresses, so two equal closures (truncation schedules) agree and different ones do not."""
    lopt = optimizers.Hyperparameters("sgd", {"learning_rate": 0.1})
    family = tasks.SingleTask(tasks.Quadratic(jnp.eye(2), jnp.zeros(2), jnp.ones(2)))

    def est(**kw):
        return estimators.ES(lopt, family, **{"horizon": 8, "length": truncation.curriculum(2, 6, 5), **kw})

    fp = checkpoint.fingerprint
    assert fp(e=est()) == fp(e=est())
    assert fp(e=est()) != fp(e=est(sigma=0.2)) != fp(e=est(length=truncation.curriculum(2, 6, 6)))
    assert fp(t={"a": np.zeros(2, np.float32)}) != fp(t={"a": np.zeros(2, np.float64)})
    assert fp(t={"a": np.float32(0.0)}) != fp(t={"a": np.float32(-0.0)})
    parts = fp(theta0={"a": np.ones(2)}, settings="{}")
    checkpoint.check_fingerprint("p", {"fingerprint_parts": parts}, parts)
    with pytest.raises(ValueError, match="p was written by a different run .fingerprint differs: settings.; delete it"):
        checkpoint.check_fingerprint("p", {"fingerprint_parts": parts}, {**parts, "settings": "x"})
    with pytest.raises(ValueError, match="p has no run fingerprint.*delete it"):
        checkpoint.check_fingerprint("p", {"step": 3}, parts)
