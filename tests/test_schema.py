"""lopt.schema: the typed schema of params.yaml (every key's type and range, unknown and missing keys, cross-field
rules, YAML 1.2 numbers, one error list for the whole file, the ``python -m lopt.schema`` command)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lopt import schema

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
RAW = schema.read_yaml(PARAMS)
DELETE = object()  # an edit that removes the key


class Rename(str):
    """An edit that renames the key (its value kept)."""


class Text(str):
    """An edit whose value is YAML text, written as is into the file (``1e3``, ``.inf``)."""


def edited(edits: dict[str, Any]) -> dict:
    """A deep copy of the real params with ``edits`` ({"nb11.cpu.num_steps": value}) applied."""
    params = copy.deepcopy(RAW)
    for path, value in edits.items():
        *parents, key = path.split(".")
        node = params
        for p in parents:
            node = node[p]
        if value is DELETE:
            del node[key]
        elif isinstance(value, Rename):
            node[str(value)] = node.pop(key)
        else:
            node[key] = value
    return params


def write(tmp_path: Path, edits: dict[str, Any]) -> Path:
    """The real params with ``edits`` as a YAML file; Text values go into the file verbatim."""
    marked = {k: f"__text_{i}__" if isinstance(v, Text) else v for i, (k, v) in enumerate(edits.items())}
    text = yaml.safe_dump(edited(marked), sort_keys=False)
    for i, value in enumerate(edits.values()):
        text = text.replace(f"__text_{i}__", str(value)) if isinstance(value, Text) else text
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def errors_of(params: dict) -> str:
    with pytest.raises(schema.SchemaError) as exc:
        schema.validate_params(params)
    return str(exc.value)


# ------------------------------------------------------------------------------------------- the real file


def test_real_params_valid():
    assert schema.validate_file(PARAMS) == [k for k in RAW if k.startswith("nb")]


@pytest.mark.parametrize("section", sorted(schema.SECTIONS))
@pytest.mark.parametrize("profile", schema.PROFILES)
def test_every_block_valid_and_unchanged(section, profile):
    raw = RAW[section][profile]
    out = schema.validate_block(section, profile, raw)
    assert out == raw
    assert repr(out) == repr(raw)  # same key order, same types (ints stay ints, floats floats)


def test_every_section_has_a_model_and_every_model_a_section():
    assert set(schema.SECTIONS) == {k for k, v in RAW.items() if isinstance(v, dict)}
    assert set(RAW) - set(schema.SECTIONS) == {"profile", "seed"}


def test_models_forbid_unknown_keys():
    from pydantic import BaseModel

    from lopt.schema import maheswaranathan, metz, thesis, values

    models = [m for mod in (values, metz, maheswaranathan, thesis) for m in vars(mod).values()
              if isinstance(m, type) and issubclass(m, BaseModel) and m is not BaseModel]
    assert set(schema.SECTIONS.values()) <= set(models)
    for model in models:
        assert model.model_config["extra"] == "forbid", model


# ------------------------------------------------------------------------------------------- bad inputs

BAD = [
    # unknown keys, with close-match hints
    ("unknown key seedd in a section: hint top-level seed", {"nb03.cpu.seedd": 3},
     ["nb03.cpu.seedd", "unknown key 'seedd'", "allowed keys: hidden", "top-level 'seed'"]),
    ("unknown key num_stepss typo next to num_steps", {"nb11.cpu.num_stepss": 200},
     ["nb11.cpu.num_stepss", "unknown key 'num_stepss'", "did you mean 'num_steps'?"]),
    ("unknown nested key lr_sweep.lr_mx", {"nb01.gpu.lr_sweep.lr_mx": 0.02},
     ["nb01.gpu.lr_sweep.lr_mx", "allowed keys: momentum, lr_min, lr_max", "did you mean 'lr_max'?"]),
    ("unknown top-level key seedd", {"seedd": 3}, ["unknown top-level key 'seedd'", "did you mean 'seed'?"]),
    ("unknown section nb99", {"nb99": {"cpu": {}}}, ["unknown section 'nb99'", "nb01, nb02"]),
    # missing and renamed keys
    ("renamed key num_steps -> num_stepss", {"nb11.cpu.num_steps": Rename("num_stepss")},
     ["nb11.cpu.num_steps: missing key 'num_steps'", "renamed to 'num_stepss'?", "did you mean 'num_steps'?"]),
    ("renamed nested key meta.clip_value -> clip", {"nb10.smoke.meta.clip_value": Rename("clip")},
     ["nb10.smoke.meta.clip_value: missing key 'clip_value'"]),
    ("missing key train_tasks", {"nb02.gpu.train_tasks": DELETE}, ["nb02.gpu.train_tasks: missing key"]),
    ("missing profile gpu", {"nb12.gpu": DELETE}, ["nb12: missing profile 'gpu'"]),
    ("unknown profile laptop", {"nb12.laptop": {}}, ["nb12: unknown profile 'laptop'", "smoke, cpu, gpu"]),
    ("missing section nb06", {"nb06": DELETE}, ["section 'nb06' is missing"]),
    ("section given as a number", {"nb06": 3}, ["nb06 = 3: a section must be a mapping"]),
    # counts
    ("count as string '200'", {"nb11.cpu.num_steps": "200"}, ["nb11.cpu.num_steps = '200'", "an integer >= 1"]),
    ("count as true", {"nb11.cpu.num_steps": True}, ["nb11.cpu.num_steps = true", "an integer >= 1"]),
    ("count as null", {"nb11.cpu.num_steps": None}, ["nb11.cpu.num_steps = null", "an integer >= 1"]),
    ("count as 50.5", {"nb11.cpu.num_steps": 50.5}, ["nb11.cpu.num_steps = 50.5", "an integer >= 1",
                                                     "e.g. num_steps:"]),
    ("count 0", {"nb06.smoke.timing_repeats": 0}, ["nb06.smoke.timing_repeats = 0", "an integer >= 1"]),
    ("count 1e3x in YAML (a string)", {"nb11.cpu.num_steps": Text("1e3x")}, ["nb11.cpu.num_steps = '1e3x'"]),
    ("nested count as string", {"nb05.cpu.per_class.valid": "64"}, ["nb05.cpu.per_class.valid = '64'"]),
    ("list item count 0 in truncations", {"nb03.cpu.truncations": [1, 0, 100]},
     ["nb03.cpu.truncations[1] = 0", "an integer >= 1"]),
    ("Merged train_tasks 1 (needs 2)", {"nb02.cpu.train_tasks": 1}, ["nb02.cpu.train_tasks = 1", "integer >= 2"]),
    ("class label 10", {"nb08.cpu.train_classes": [4, 6, 2, 7, 10]}, ["nb08.cpu.train_classes[4] = 10", "<= 9"]),
    ("pool 3 does not divide 28", {"nb04.cpu.pool": 3}, ["nb04.cpu.pool = 3", "dividing 28: 1, 2, 4, 7, 14, 28"]),
    ("num_train above the 50000 training images", {"nb16.cpu.mlp.num_train": 60000},
     ["nb16.cpu.mlp.num_train = 60000", "<= 50000"]),
    # learning rates, sigmas, scales
    ("learning_rate .inf in YAML", {"nb09.cpu.learning_rate": Text(".inf")},
     ["nb09.cpu.learning_rate = inf", "a finite number > 0"]),
    ("learning_rate .nan in YAML", {"nb09.cpu.learning_rate": Text(".nan")}, ["nb09.cpu.learning_rate = nan"]),
    ("learning_rate negative", {"nb09.cpu.learning_rate": -0.1}, ["nb09.cpu.learning_rate = -0.1", "> 0"]),
    ("learning_rate zero", {"nb01.cpu.learning_rate": 0}, ["nb01.cpu.learning_rate = 0", "> 0"]),
    ("learning_rate as string", {"nb01.cpu.learning_rate": "0.01"}, ["nb01.cpu.learning_rate = '0.01'"]),
    ("learning_rate as bool", {"nb01.cpu.learning_rate": True}, ["nb01.cpu.learning_rate = true"]),
    ("sigma zero", {"nb04.gpu.sigma": 0.0}, ["nb04.gpu.sigma = 0.0", "> 0"]),
    ("meta_learning_rate -1e-3 in YAML", {"nb15.cpu.meta_learning_rate": Text("-1e-3")},
     ["nb15.cpu.meta_learning_rate = -0.001"]),
    ("pilot learning rate negative", {"nb10.cpu.tasks.rosenbrock.pilot_lrs": [0.001, -0.003]},
     ["nb10.cpu.tasks.rosenbrock.pilot_lrs[1] = -0.003"]),
    # momentum-like, fractions, clipping
    ("momentum 1.5", {"nb09.cpu.momentum": 1.5}, ["nb09.cpu.momentum = 1.5", "a number in [0, 1)"]),
    ("momentum 1.0 in lr_sweep", {"nb01.smoke.lr_sweep.momentum": 1.0}, ["nb01.smoke.lr_sweep.momentum = 1.0"]),
    ("rms_decay negative", {"nb09.gpu.rms_decay": -0.1}, ["nb09.gpu.rms_decay = -0.1", "[0, 1)"]),
    ("theta_max 1.2 (a momentum)", {"nb01.cpu.theta_max": 1.2}, ["nb01.cpu.theta_max = 1.2", "(0, 1)"]),
    ("large_fraction 1.5", {"nb12.cpu.large_fraction": 1.5}, ["nb12.cpu.large_fraction = 1.5", "[0, 1]"]),
    ("curriculum jitter 1", {"nb05.cpu.curriculum.jitter": 1.0}, ["nb05.cpu.curriculum.jitter = 1.0"]),
    ("clip_value -5", {"nb10.cpu.meta.clip_value": -5}, ["nb10.cpu.meta.clip_value = -5", "> 0"]),
    ("clip_threshold -1", {"nb09.cpu.clip_threshold": -1}, ["nb09.cpu.clip_threshold = -1", "> 0"]),
    ("outer_clip 0", {"nb08.cpu.outer_clip": 0.0}, ["nb08.cpu.outer_clip = 0.0", "> 0"]),
    ("margin above ln 10", {"nb17.cpu.margin": 2.5}, ["nb17.cpu.margin = 2.5", "(0, 2.30259)"]),
    # lists
    ("tasks []", {"nb11.cpu.tasks": []}, ["nb11.cpu.tasks = []", "a non-empty list"]),
    ("tasks as a string", {"nb13.cpu.tasks": "rosenbrock"}, ["nb13.cpu.tasks = 'rosenbrock'", "list"]),
    ("tasks repeated", {"nb14.cpu.tasks": ["rosenbrock", "rosenbrock"]}, ["nb14.cpu.tasks", "without repeats"]),
    ("quad_steps with one T (a slope needs two)", {"nb01.cpu.quad_steps": [100]},
     ["nb01.cpu.quad_steps = [100]", "a list of >= 2 items"]),
    # names
    ("unknown task name quadratic", {"nb12.cpu.tasks": ["linear_regression", "quadratic"]},
     ["nb12.cpu.tasks[1] = 'quadratic'", "one of linear_regression, rosenbrock, two_moons"]),
    ("unknown task key in nb10.tasks", {"nb10.cpu.tasks.quadratic": RAW["nb10"]["cpu"]["tasks"]["rosenbrock"]},
     ["nb10.cpu.tasks.quadratic: unknown name 'quadratic'", "linear_regression, rosenbrock, two_moons"]),
    ("unknown activation swish", {"nb17.cpu.activations": ["sigmoid", "swish"]},
     ["nb17.cpu.activations[1] = 'swish'", "one of sigmoid, tanh, relu, leaky_relu"]),
    ("unknown optimizer adagrad", {"nb07.cpu.baselines": ["adam", "adagrad"]},
     ["nb07.cpu.baselines[1] = 'adagrad'", "one of momentum, rmsprop, adam"]),
    ("unknown grid scale log2", {"nb10.gpu.grids.adam.b1.scale": "log2"},
     ["nb10.gpu.grids.adam.b1.scale = 'log2'", "one of log, linear, log1m"]),
    ("unknown output relu", {"nb17.smoke.mlp.output": "relu"}, ["nb17.smoke.mlp.output = 'relu'", "sigmoid, softmax"]),
    ("unknown data mnist", {"nb07.cpu.tasks.mlp.data": "mnist"},
     ["nb07.cpu.tasks.mlp.data = 'mnist'", "digits, fashion_mnist, held_out"]),
    ("remat as string", {"nb10.cpu.tasks.two_moons.remat": "yes"},
     ["nb10.cpu.tasks.two_moons.remat = 'yes'", "true or false"]),
    ("nested mapping given as a list", {"nb16.cpu.mlp": [1]}, ["nb16.cpu.mlp = [1]", "a mapping with keys num_train"]),
    # ordered pairs and cross-field rules
    ("lr_grid lo > hi", {"nb05.cpu.lr_grid.lo": 100.0}, ["nb05.cpu.lr_grid.lo: lo = 100 must be < hi = 10"]),
    ("lr_sweep lr_min > lr_max", {"nb01.cpu.lr_sweep.lr_min": 0.5}, ["nb01.cpu.lr_sweep.lr_min", "< lr_max"]),
    ("nb02 lr_min == lr_max", {"nb02.cpu.lr_min": 0.1484},
     ["nb02.cpu.lr_min: lr_min = 0.1484 must be < lr_max = 0.1484"]),
    ("super_epochs short >= long", {"nb15.gpu.quadratic.super_epochs.short": 3200},
     ["nb15.gpu.quadratic.super_epochs.short: short = 3200 must be < long = 3200"]),
    ("log1m grid hi 1.2", {"nb10.cpu.grids.rmsprop.decay.hi": 1.2}, ["nb10.cpu.grids.rmsprop.decay.hi", "< 1"]),
    ("learning-rate grid lo <= 0 (linear)",
     {"nb10.cpu.grids.momentum.learning_rate": {"lo": 0.0, "hi": 1.0, "num": 5, "scale": "linear"}},
     ["nb10.cpu.grids.momentum.learning_rate.lo", "learning rates must be > 0"]),
    ("truncation not dividing horizon", {"nb03.cpu.truncations": [1, 10, 300]},
     ["nb03.cpu.truncations: [300] do not divide horizon = 1000"]),
    ("no length a multiple of the truncation", {"nb04.cpu.truncation": 9},
     ["nb04.cpu.truncation: truncation = 9 divides none"]),
    ("even num_grads (g = 0 off the grid)", {"nb09.cpu.num_grads": 600}, ["nb09.cpu.num_grads", "must be odd"]),
    ("class in both sides of the split", {"nb05.cpu.test_classes": [4, 9, 0, 8, 1]},
     ["nb05.cpu.test_classes: classes [4]"]),
    ("num_classes above the classes of a side", {"nb05.cpu.num_classes": 6},
     ["nb05.cpu.num_classes: num_classes = 6 must be <= 5"]),
    ("strides shorter than channels", {"nb08.gpu.strides": [1, 2]}, ["nb08.gpu.strides", "one entry per conv layer"]),
    ("fixed length above the horizon", {"nb08.cpu.fixed_lengths.long": 80},
     ["nb08.cpu.fixed_lengths.long: long = 80 must be <= horizon = 50"]),
    ("eval_every not dividing an epoch", {"nb15.cpu.mlp.eval_every": 20},
     ["nb15.cpu.mlp.eval_every: eval_every = 20 must divide"]),
    ("compare_activations not among activations", {"nb17.cpu.activations": ["sigmoid", "tanh"]},
     ["nb17.cpu.compare_activations: ['relu'] are not in activations"]),
    ("two_moons without mlp_hidden", {"nb10.cpu.tasks.two_moons.mlp_hidden": DELETE},
     ["nb10.cpu.tasks.two_moons", "mlp_hidden"]),
    ("digits task without per_class", {"nb07.cpu.tasks.cnn6_digits.per_class": DELETE},
     ["nb07.cpu.tasks.cnn6_digits.per_class: missing"]),
    ("min_warmup_steps >= num_steps", {"nb13.smoke.min_warmup_steps": 20},
     ["nb13.smoke.min_warmup_steps: min_warmup_steps = 20 must be < num_steps"]),
    # rules between sections
    ("nb06 eval_every not dividing nb05's horizon", {"nb06.cpu.eval_every": 30},
     ["nb06.cpu.eval_every = 30 must divide nb05.cpu.horizon = 100"]),
    ("nb13 task that nb10 does not train", {"nb10.cpu.tasks.rosenbrock": DELETE},
     ["nb13.cpu.tasks: notebook 10 trains no GRU for ['rosenbrock']", "nb14.cpu.tasks"]),
    # top level
    ("bad top-level profile", {"profile": "laptop"}, ["profile = 'laptop'", "one of smoke, cpu, gpu"]),
    ("missing top-level profile", {"profile": DELETE}, ["profile = null"]),
    ("negative seed", {"seed": -1}, ["seed = -1", "an integer >= 0"]),
    ("seed as string", {"seed": "1"}, ["seed = '1'", "an integer >= 0"]),
]


def _cases(yaml_text: bool) -> list:
    return [pytest.param(e, f, id=i) for i, e, f in BAD if any(isinstance(v, Text) for v in e.values()) == yaml_text]


@pytest.mark.parametrize("edits, fragments", _cases(yaml_text=False))
def test_bad_input_rejected(edits, fragments):
    msg = errors_of(edited(edits))
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in:\n{msg}"


@pytest.mark.parametrize("edits, fragments", _cases(yaml_text=True))
def test_bad_yaml_text_rejected(tmp_path, edits, fragments):
    with pytest.raises(schema.SchemaError) as exc:
        schema.validate_file(write(tmp_path, edits))
    for fragment in fragments:
        assert fragment in str(exc.value), f"{fragment!r} not in:\n{exc.value}"


def test_whole_file_reports_every_error(tmp_path):
    path = write(tmp_path, {"nb03.cpu.num_runs": 0, "nb17.smoke.margin": -1.0, "nb11.gpu.tasks": []})
    with pytest.raises(schema.SchemaError) as exc:
        schema.validate_file(path)
    assert len(exc.value.errors) == 3
    for fragment in ("nb03.cpu.num_runs = 0", "nb17.smoke.margin = -1.0", "nb11.gpu.tasks = []"):
        assert fragment in str(exc.value)


def test_unknown_section_and_profile_in_validate_block():
    with pytest.raises(schema.SchemaError, match="unknown section 'nb18'; known: nb01, nb02"):
        schema.validate_block("nb18", "cpu", {})
    with pytest.raises(schema.SchemaError, match="unknown profile 'laptop'"):
        schema.validate_block("nb01", "laptop", RAW["nb01"]["cpu"])


# ------------------------------------------------------------------------------------------- accepted inputs and YAML


@pytest.mark.parametrize("text, value", [
    ("1e3", 1000.0), ("1e-1", 0.1), ("1.0e8", 1e8), ("+1e-2", 0.01), ("1.0e-8", 1e-8), (".5", 0.5), ("200", 200),
    ("1_000", 1000), (".inf", float("inf")), ("-.Inf", float("-inf")), ("'1e3'", "1e3"), ("1e3x", "1e3x"),
    ("1.2.3", "1.2.3"),
])
def test_yaml_reads_numbers_as_yaml_1_2(tmp_path, text, value):
    path = tmp_path / "x.yaml"
    path.write_text(f"x: {text}\n")
    x = schema.read_yaml(path)["x"]
    assert x == value and type(x) is type(value)


def test_yaml_nan_is_read_and_rejected(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("x: .nan\n")
    assert schema.read_yaml(path)["x"] != schema.read_yaml(path)["x"]


@pytest.mark.parametrize("edits, key, expected", [
    pytest.param({"nb11.cpu.num_steps": Text("1e3")}, "num_steps", 1000, id="num_steps 1e3 in YAML read as 1000"),
    pytest.param({"nb09.cpu.learning_rate": Text("1e-1")}, "learning_rate", 0.1, id="learning_rate 1e-1 read as 0.1"),
    pytest.param({"nb11.cpu.fp_tol": Text("1e-8")}, "fp_tol", 1e-8, id="fp_tol 1e-8 read as 1e-8"),
    pytest.param({"nb11.cpu.num_steps": 1000.0}, "num_steps", 1000, id="num_steps 1000.0 accepted as int 1000"),
])
def test_scientific_notation_accepted(tmp_path, edits, key, expected):
    """read_yaml reads YAML 1.2 numbers (``1e-1`` is a number, not YAML 1.1's string), as lopt.config.load does:
    the whole-file check accepts them."""
    path = write(tmp_path, edits)
    schema.validate_file(path)
    section = next(iter(edits)).split(".")[0]
    out = schema.validate_block(section, "cpu", schema.read_yaml(path)[section]["cpu"])
    assert out[key] == expected and type(out[key]) is type(expected)


# ------------------------------------------------------------------------------------------- the command


def test_main_valid_and_broken(tmp_path, capsys):
    assert schema.main([str(PARAMS)]) == 0
    assert capsys.readouterr().out.strip() == f"params.yaml: valid ({len(schema.SECTIONS)} sections)"
    assert schema.main([str(write(tmp_path, {"nb11.cpu.num_steps": "200"}))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("params.yaml is not valid, nothing was run:") and "nb11.cpu.num_steps" in err


def test_python_m_lopt_schema(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "lopt.schema", str(write(tmp_path, {"nb10.cpu.meta.clip_value": -5}))],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "nb10.cpu.meta.clip_value = -5" in bad.stderr and "nothing was run" in bad.stderr
