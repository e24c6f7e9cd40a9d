"""lopt.config: profiles, sections, overrides and validation of params.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lopt import config

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    """A copy of the real params.yaml with the top-level seed 1 (the tests edit it freely)."""
    doc = config.read_params(PARAMS)
    doc["seed"] = 1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_load_real_section_with_attribute_access():
    raw = yaml.safe_load(PARAMS.read_text())["nb01"]["cpu"]
    cfg = config.load("nb01", "cpu")
    assert isinstance(cfg, config.Params)
    assert cfg.profile == "cpu"
    for key, value in raw.items():
        assert getattr(cfg, key) == value
        assert cfg[key] == value
    with pytest.raises(AttributeError, match="no parameter"):
        cfg.this_key_does_not_exist


def test_unknown_profile_names_allowed_values(params_file):
    with pytest.raises(config.ConfigError) as exc:
        config.load("nb01", "laptop", path=params_file)
    msg = str(exc.value)
    assert "laptop" in msg
    for name in ("smoke", "cpu", "gpu"):
        assert name in msg


def test_profile_from_environment(params_file, monkeypatch):
    assert config.load("nb01", None, path=params_file).profile == config.DEFAULT_PROFILE
    monkeypatch.setenv(config.PROFILE_ENV, "smoke")
    assert config.load("nb01", None, path=params_file).profile == "smoke"
    assert config.resolve_profile(None) == "smoke"
    # an explicit argument wins over the environment
    assert config.load("nb01", "gpu", path=params_file).profile == "gpu"


def test_bad_profile_in_environment(monkeypatch):
    monkeypatch.setenv(config.PROFILE_ENV, "tpu")
    with pytest.raises(config.ConfigError, match=config.PROFILE_ENV) as exc:
        config.resolve_profile(None)
    assert "smoke, cpu, gpu" in str(exc.value)


def test_unknown_section_names_allowed_sections(params_file):
    with pytest.raises(config.ConfigError) as exc:
        config.load("nb99", "cpu", path=params_file)
    msg = str(exc.value)
    assert "nb99" in msg and "nb01" in msg and "nb13" in msg
    # the top-level scalar `profile` is not a section
    with pytest.raises(config.ConfigError):
        config.load("profile", "cpu", path=params_file)


def test_override_of_unknown_key(params_file):
    with pytest.raises(config.ConfigError) as exc:
        config.load("nb01", "cpu", overrides={"num_theta": 3}, path=params_file)
    assert "num_theta" in str(exc.value)
    assert "num_thetas" in str(exc.value)  # lists the allowed keys


def test_override_of_known_key_applies(params_file):
    cfg = config.load("nb01", "smoke", overrides={"num_thetas": 5}, path=params_file)
    assert cfg.num_thetas == 5
    # overrides do not leak into a fresh load
    assert config.load("nb01", "smoke", path=params_file).num_thetas == 64


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"num_thetas": 0}, "num_thetas"),
        ({"num_thetas": -3}, "num_thetas"),
        ({"steps": [10, -1]}, "steps"),
        ({"steps": [0]}, "steps"),
    ],
)
def test_nonpositive_counts_rejected(params_file, overrides, key):
    with pytest.raises(config.ConfigError, match=key):
        config.load("nb01", "cpu", overrides=overrides, path=params_file)


def test_nonpositive_counts_rejected_in_real_section():
    with pytest.raises(config.ConfigError, match="num_thetas"):
        config.load("nb01", "cpu", overrides={"num_thetas": 0})


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"lr_sweep": {"momentum": 0.9, "lr_min": -1e-3, "lr_max": 0.02}}, "lr_min"),
    ],
)
def test_nonpositive_rates_rejected(params_file, overrides, key):
    with pytest.raises(config.ConfigError, match=key):
        config.load("nb01", "cpu", overrides=overrides, path=params_file)


def test_nan_rejected(params_file):
    with pytest.raises(config.ConfigError, match="learning_rate = nan"):
        config.load("nb01", "cpu", overrides={"learning_rate": float("nan")}, path=params_file)


def test_seed_zero_allowed(params_file):
    cfg = config.load("nb01", "cpu", seed=0, path=params_file)
    assert cfg.seed == 0


def test_seed_from_argument_environment_or_file(params_file, monkeypatch):
    monkeypatch.delenv(config.SEED_ENV, raising=False)
    assert config.load("nb01", "cpu", path=params_file).seed == 1  # the file's top-level seed
    monkeypatch.setenv(config.SEED_ENV, "2")
    assert config.load("nb01", "cpu", path=params_file).seed == 2
    assert config.load("nb01", "cpu", seed=3, path=params_file).seed == 3  # papermill's parameter wins


@pytest.mark.parametrize("bad", [-1, 1.5, "x", True])
def test_bad_seed_rejected(params_file, bad):
    with pytest.raises(config.ConfigError, match="seed"):
        config.load("nb01", "cpu", seed=bad, path=params_file)


def test_per_section_seed_rejected(params_file):
    doc = yaml.safe_load(params_file.read_text())
    doc["nb01"]["cpu"]["seed"] = 0
    params_file.write_text(yaml.safe_dump(doc))
    with pytest.raises(config.ConfigError, match="top-level"):
        config.load("nb01", "cpu", path=params_file)


def _edit(path: Path, fn) -> Path:
    doc = yaml.safe_load(path.read_text())
    fn(doc)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda d: d.update(profile="gpux"), ["gpux", "smoke, cpu, gpu"]),
        (lambda d: d.pop("profile"), ["profile"]),
        (lambda d: d.update(seed=-2), ["seed"]),
        (lambda d: d["nb01"].pop("gpu"), ["nb01", "gpu"]),
        (lambda d: d["nb01"]["gpu"].pop("num_thetas"), ["nb01", "num_thetas"]),
        (lambda d: d["nb13"]["smoke"].update(num_runs=0), ["nb13.smoke.num_runs", ">= 1"]),
        (lambda d: d.update(verbose=True), ["verbose"]),
    ],
)
def test_check_file_rejects_bad_files(params_file, edit, words):
    with pytest.raises(config.ConfigError) as exc:
        config.check_file(_edit(params_file, edit))
    for w in words:
        assert w in str(exc.value)


def test_check_file_real_params_and_cli(capsys):
    assert set(config.required_sections()) <= set(config.check_file(PARAMS))
    assert config.main([str(PARAMS)]) == 0


def test_cli_reports_error_without_traceback(params_file, capsys):
    _edit(params_file, lambda d: d.update(profile="gpux"))
    assert config.main([str(params_file)]) == 2
    err = capsys.readouterr().err
    assert "nothing was run" in err and "gpux" in err


def test_config_error_is_value_error():
    assert issubclass(config.ConfigError, ValueError)


def test_strict():
    assert not config.strict("smoke")
    assert config.strict("cpu") and config.strict("gpu")


def test_output_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(config.OUTPUT_ENV, str(tmp_path))
    assert config.output_dir() == tmp_path.resolve()
    monkeypatch.delenv(config.OUTPUT_ENV)
    assert (config.output_dir() / "params.yaml").is_file()


# ---------------------------------------------------------------------------------------------
# The real params.yaml


def _sections(raw: dict) -> dict:
    return {k: v for k, v in raw.items() if isinstance(v, dict)}


def test_params_yaml_active_profile():
    raw = config.read_params(PARAMS)
    assert raw.get("profile") in config.PROFILES


def test_params_yaml_sections_are_consistent(monkeypatch):
    raw = config.read_params(PARAMS)
    # every config.load below reads this parse (the pure-Python YAML 1.2 loader takes ~0.16 s per read; 51 loads)
    monkeypatch.setattr(config, "read_params", lambda path=None: raw)
    sections = _sections(raw)
    assert sections, "params.yaml has no notebook sections"
    for name, block in sections.items():
        assert set(block) == set(config.PROFILES), f"{name}: profiles {sorted(block)}"
        keysets = {p: set(block[p] or {}) for p in config.PROFILES}
        assert keysets["smoke"] == keysets["cpu"] == keysets["gpu"], f"{name}: {keysets}"
        for profile in config.PROFILES:
            cfg = config.load(name, profile, path=PARAMS)  # validates
            assert cfg.profile == profile


def test_load_reads_yaml_12_numbers_and_checks_every_key(params_file):
    """Issue: `1e-1` was a string under YAML 1.1, `.inf` and unknown keys were accepted silently."""
    text = params_file.read_text()
    sci = text.replace("learning_rate: 0.01", "learning_rate: 1e-1", 1).replace("num_thetas: 64", "num_thetas: 1e2", 1)
    params_file.write_text(sci)
    cfg = config.load("nb01", "smoke", path=params_file)
    assert cfg.learning_rate == 0.1 and cfg.num_thetas == 100 and isinstance(cfg.num_thetas, int)
    params_file.write_text(text.replace("learning_rate: 0.01", "learning_rate: .inf", 1))
    with pytest.raises(config.ConfigError, match="nb01.smoke.learning_rate = inf"):
        config.load("nb01", "smoke", path=params_file)
    params_file.write_text(text)
    _edit(params_file, lambda d: d["nb01"]["cpu"].update(seedd=3))
    with pytest.raises(config.ConfigError, match="unknown key 'seedd'.*seed"):
        config.load("nb01", "cpu", path=params_file)
