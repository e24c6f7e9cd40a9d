"""The table of bad inputs a new user tried (params, data and weights files, library calls): each must fail
clearly (the message names the key or file and the fix) within 5 seconds, before any compute, and touch no
committed output. The details of each area live in test_schema, test_config, test_data, test_checkpoint,
test_outer, test_optimizers and test_estimators; this table is the acceptance list in one place."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

from lopt import checkpoint, config, data, estimators, optimizers, outer, recurrent, tasks

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 5.0


# ------------------------------------------------------------------------------------------- params.yaml


def _params(tmp: Path, edit: Callable[[dict], None] | None = None, text: tuple[str, str] | None = None) -> Path:
    """A copy of the real params.yaml, edited as data (``edit``) or as text (``text``: old, new)."""
    raw = (ROOT / "params.yaml").read_text()
    if edit is not None:
        doc = config.read_params(ROOT / "params.yaml")
        edit(doc)
        raw = yaml.safe_dump(doc, sort_keys=False)
    if text is not None:
        assert text[0] in raw, text[0]
        raw = raw.replace(*text, 1)
    path = tmp / "params.yaml"
    path.write_text(raw)
    return path


def _load(section: str, profile: str = "cpu", **kw: Any) -> Callable[[Path], Any]:
    """The notebook's entry point on an edited copy: config.load(section, profile)."""
    return lambda tmp: config.load(section, profile, seed=0, path=_params(tmp, **kw))


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        *parents, key = path.split(".")
        node = doc
        for p in parents:
            node = node[p]
        node[key] = value
    return edit


def _rename(path: str, new: str) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        *parents, key = path.split(".")
        node = doc
        for p in parents:
            node = node[p]
        node[new] = node.pop(key)
    return edit


PARAMS = [
    ("unknown key seedd", _load("nb03", edit=_set("nb03.cpu.seedd", 3)), "unknown key 'seedd'"),
    ("count as a string", _load("nb11", edit=_set("nb11.cpu.num_steps", "200")), "nb11.cpu.num_steps = '200'"),
    ("count as a bool", _load("nb11", edit=_set("nb11.cpu.num_steps", True)), "nb11.cpu.num_steps = true"),
    ("count as null", _load("nb11", edit=_set("nb11.cpu.num_steps", None)), "nb11.cpu.num_steps = null"),
    ("count 50.5", _load("nb11", edit=_set("nb11.cpu.num_steps", 50.5)), "nb11.cpu.num_steps = 50.5"),
    ("tasks: []", _load("nb11", edit=_set("nb11.cpu.tasks", [])), "nb11.cpu.tasks = []"),
    ("momentum 1.5", _load("nb09", edit=_set("nb09.cpu.momentum", 1.5)), "nb09.cpu.momentum = 1.5"),
    ("clip_value -5", _load("nb10", edit=_set("nb10.cpu.meta.clip_value", -5)), "nb10.cpu.meta.clip_value = -5"),
    ("clip_threshold -1", _load("nb09", edit=_set("nb09.cpu.clip_threshold", -1)), "nb09.cpu.clip_threshold = -1"),
    ("learning_rate .inf", _load("nb01", "smoke", text=("learning_rate: 0.01", "learning_rate: .inf")),
     "nb01.smoke.learning_rate = inf"),
    ("renamed key", _load("nb11", edit=_rename("nb11.cpu.num_steps", "steps")), "missing key 'num_steps'"),
    ("unknown activation", _load("nb17", edit=_set("nb17.cpu.activations", ["swish"])), "swish"),
    ("unknown task", _load("nb11", edit=_set("nb11.cpu.tasks", ["linear_regresion"])), "linear_regresion"),
    ("unknown profile", lambda tmp: config.load("nb01", "laptop", path=_params(tmp)), "smoke, cpu, gpu"),
    ("two errors, both listed", lambda tmp: config.check_file(_params(tmp, edit=lambda d: (
        _set("nb03.cpu.seedd", 3)(d), _set("nb11.gpu.num_steps", 0)(d)))), "nb11.gpu.num_steps = 0"),
]

ACCEPTED = [  # YAML 1.1 read these as strings: now numbers
    ("learning_rate 1e-1 is 0.1", "nb01", ("learning_rate: 0.01", "learning_rate: 1e-1"), "learning_rate", 0.1),
    ("num_thetas 1e3 is 1000", "nb01", ("num_thetas: 64", "num_thetas: 1e3"), "num_thetas", 1000),
]


# ------------------------------------------------------------------------------------------- files


def _pickled_weights(tmp: Path) -> Any:
    marker = tmp / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp / "gru_evil.npz"
    np.savez(path, __treedef__=np.frombuffer(pickle.dumps(Payload()), np.uint8), __meta__=np.zeros(2, np.uint8))
    try:
        return checkpoint.load_pytree(path)
    finally:
        assert not marker.exists(), "the pickled payload ran"


def _truncated_weights(tmp: Path) -> Any:
    path = checkpoint.save_pytree(tmp / "w.npz", {"w": np.arange(1000.0)})
    path.write_bytes(path.read_bytes()[:200])
    return checkpoint.load_pytree(path)


def _damaged_splits(damage: str) -> Callable[[Path], Any]:
    def run(tmp: Path) -> Any:
        path = tmp / "fashion_mnist.npz"
        rng = np.random.default_rng(0)
        data.write_npz(path, {k: rng.integers(0, 255, (64, 64), dtype=np.uint8)
                              for k in ("x_train", "y_train", "x_test", "y_test")})
        raw = bytearray(path.read_bytes())
        if damage == "flip":
            raw[len(raw) // 3] ^= 0xFF
        else:
            raw = raw[: len(raw) // 2]
        path.write_bytes(bytes(raw))
        return data.load_splits(path)
    return run


def _corrupt_copies_only(tmp: Path) -> Any:
    folder = tmp / "fashion-mnist"
    folder.mkdir()
    for name in data.FILES:
        (folder / name).write_bytes(gzip.compress(b"flipped"))
    return data.find_raw(search=[folder], url=None)


def _weights_typo(tmp: Path) -> Any:
    return recurrent.load_trained_gru("linear_regresion")


def _weights_missing(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(config.INPUT_ENV, str(tmp))
    return recurrent.load_trained_gru("rosenbrock")


FILES = [
    ("pickled structure in a weights file", _pickled_weights, ValueError, "pickled"),
    ("truncated weights file", _truncated_weights, ValueError, "not a readable lopt checkpoint"),
    ("flipped byte in fashion_mnist.npz", _damaged_splits("flip"), data.DataError, "lopt.data prepare"),
    ("truncated fashion_mnist.npz", _damaged_splits("truncate"), data.DataError, "lopt.data prepare"),
    ("only corrupt IDX copies", _corrupt_copies_only, data.DataError, "Delete them"),
    ("task name typo for trained weights", _weights_typo, ValueError, "notebook 10 trains: linear_regression"),
]


# ------------------------------------------------------------------------------------------- library calls


def _problem():
    quad = tasks.Quadratic.from_eigenvalues(jax.random.PRNGKey(0), jnp.array([0.5, 2.0]))
    lopt = optimizers.Hyperparameters("momentum", {"learning_rate": 0.05, "beta": 0.5}, log=("learning_rate",))
    est = estimators.ES(lopt, tasks.SingleTask(quad), horizon=6, length=2, num_tasks=2)
    return est, lopt.init(None)


def _train(tmp: Path, *, theta: Any = None, lr: float = 0.05, steps: Any = 2, every: Any = 1, key: int = 1,
           settings: dict | None = None, est: Any = None, checkpoint: bool = False) -> Any:
    est0, theta0 = _problem()
    return outer.train(est or est0, theta0 if theta is None else theta, optax.adam(lr), steps, jax.random.PRNGKey(key),
                       checkpoint=tmp / "run.npz" if checkpoint else None, checkpoint_every=every, progress=False,
                       settings=settings)


def _resume(**change: Any) -> Callable[[Path], Any]:
    def run(tmp: Path) -> Any:
        _train(tmp, steps=2, checkpoint=True, settings={"meta_lr": 0.05})
        kw = {"steps": 3, "checkpoint": True, "settings": {"meta_lr": 0.05}, **change}
        if kw.pop("wider", False):
            kw["est"] = dataclasses.replace(_problem()[0], sigma=0.5)
        return _train(tmp, **kw)
    return run


def _set_sigma(tmp: Path) -> Any:
    est, _ = _problem()
    est.sigma = 0.5


LIBRARY = [
    ("NaN starting theta", lambda tmp: _train(tmp, theta={"learning_rate": jnp.nan, "beta": 0.5}), ValueError,
     "non-finite"),
    ("NaN meta learning rate", lambda tmp: _train(tmp, lr=float("nan")), ValueError, "learning rate"),
    ("inf meta learning rate", lambda tmp: _train(tmp, lr=float("inf")), ValueError, "learning rate"),
    ("checkpoint_every=0", lambda tmp: _train(tmp, every=0), ValueError, "checkpoint_every"),
    ("num_steps 2.5", lambda tmp: _train(tmp, steps=2.5), ValueError, "num_steps"),
    ("resume: another meta learning rate", _resume(settings={"meta_lr": 0.1}), ValueError, "settings"),
    ("resume: another key", _resume(key=2), ValueError, "key"),
    ("resume: another estimator", _resume(wider=True), ValueError, "estimator"),
    ("resume: fewer steps", _resume(steps=1), ValueError, "more than num_steps"),
    ("NaN learning rate", lambda tmp: optimizers.sgd(float("nan")), ValueError, "learning_rate"),
    ("inf learning rate", lambda tmp: optimizers.adam(float("inf")), ValueError, "learning_rate"),
    ("negative learning rate", lambda tmp: optimizers.momentum(-0.1, 0.9), ValueError, "learning_rate"),
    ("changing an estimator's sigma", _set_sigma, dataclasses.FrozenInstanceError, "sigma"),
]


# ------------------------------------------------------------------------------------------- the table


def _committed() -> str:
    """A digest of the committed outputs' files (names, sizes, times): nothing may be deleted or rewritten."""
    h = hashlib.sha256()
    for folder in ("figures", "notebooks/executed", "data/learned"):
        for p in sorted((ROOT / folder).glob("*")):
            st = p.stat()
            h.update(f"{p}{st.st_size}{st.st_mtime_ns}".encode())
    return h.hexdigest()


@pytest.fixture
def untouched():
    before = _committed()
    yield
    assert _committed() == before, "a bad input changed a committed output"


def _fails_clearly(call: Callable[[], Any], error: type[BaseException], fragment: str) -> None:
    start = time.perf_counter()
    with pytest.raises(error) as exc:
        call()
    seconds = time.perf_counter() - start
    assert fragment in str(exc.value), str(exc.value)
    assert seconds < SECONDS, f"took {seconds:.1f} s"


@pytest.mark.parametrize("case, call, fragment", PARAMS, ids=[c[0] for c in PARAMS])
def test_bad_parameters(tmp_path, untouched, case, call, fragment):
    _fails_clearly(lambda: call(tmp_path), config.ConfigError, fragment)


@pytest.mark.parametrize("case, section, text, key, value", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_scientific_notation_is_a_number(tmp_path, case, section, text, key, value):
    cfg = config.load(section, "smoke", seed=0, path=_params(tmp_path, text=text))
    assert cfg[key] == value and type(cfg[key]) is type(value)


@pytest.mark.parametrize("case, call, error, fragment", FILES, ids=[c[0] for c in FILES])
def test_bad_files(tmp_path, untouched, case, call, error, fragment):
    _fails_clearly(lambda: call(tmp_path), error, fragment)


def test_missing_weights_name_the_notebook(tmp_path, untouched, monkeypatch):
    _fails_clearly(lambda: _weights_missing(tmp_path, monkeypatch), FileNotFoundError, "notebook 10")


@pytest.mark.parametrize("case, call, error, fragment", LIBRARY, ids=[c[0] for c in LIBRARY])
def test_bad_library_calls(tmp_path, untouched, case, call, error, fragment):
    _fails_clearly(lambda: call(tmp_path), error, fragment)


def test_bad_params_file_stops_make_repro_before_dvc(tmp_path, untouched):
    """`make repro` runs `python -m lopt.config` first: a bad file exits 2 with every problem listed, in seconds,
    before DVC could remove any stage's outputs."""
    bad = _params(tmp_path, edit=_set("nb11.cpu.num_steps", "200"))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lopt.config", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and "nb11.cpu.num_steps = '200'" in proc.stderr
    assert time.perf_counter() - start < SECONDS


def test_the_table_has_every_case():
    assert len(PARAMS) + len(ACCEPTED) + len(FILES) + 1 + len(LIBRARY) + 1 >= 34
