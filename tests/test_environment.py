"""The environment files and the DVC pipeline stay consistent with each other and the notebooks."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NB_STAGE = re.compile(r"^nb(\d\d)_")


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_installs_package_with_dev_extras():
    env = _environment()
    deps = env["dependencies"]
    pythons = [d for d in deps if isinstance(d, str) and re.match(r"^python\s*[=<>]", d)]
    assert pythons == ["python=3.11"]
    assert "pip" in deps
    pip_blocks = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip_blocks) == 1
    assert "-e .[dev]" in pip_blocks[0]


def test_requires_python_matches_environment():
    env_python = next(d for d in _environment()["dependencies"] if isinstance(d, str) and d.startswith("python="))
    version = env_python.split("=", 1)[1]
    requires = _pyproject()["project"]["requires-python"]
    m = re.fullmatch(r">=\s*(\d+\.\d+)", requires.strip())
    assert m, f"unexpected requires-python {requires!r}"
    assert tuple(map(int, version.split("."))) >= tuple(map(int, m.group(1).split(".")))
    assert m.group(1) == version


def test_dev_extra_has_the_tools():
    dev = {_requirement_name(r) for r in _pyproject()["project"]["optional-dependencies"]["dev"]}
    for tool in ("pytest", "nbval", "papermill", "dvc", "jupyterlab"):
        assert tool in dev, f"{tool} missing from the dev extra"


def test_torch_is_pinned_exactly():
    deps = _pyproject()["project"]["dependencies"]
    torch = [d for d in deps if _requirement_name(d) == "torch"]
    assert len(torch) == 1
    assert re.fullmatch(r"torch\s*==\s*\d+(\.\d+)*", torch[0].strip()), torch[0]


# ---------------------------------------------------------------------------------------------
# dvc.yaml


def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _paths(entries) -> list[tuple[str, dict]]:
    """(path, options) for every entry of an outs/metrics/deps list."""
    out = []
    for entry in entries or []:
        if isinstance(entry, str):
            out.append((entry, {}))
        else:
            assert isinstance(entry, dict) and len(entry) == 1, entry
            (path, opts), = entry.items()
            out.append((path, opts or {}))
    return out


def _notebook_stages() -> dict:
    return {name: stage for name, stage in _stages().items() if NB_STAGE.match(name)}


def test_pipeline_has_notebook_stages():
    assert _notebook_stages(), "dvc.yaml has no nbNN_* stages"


@pytest.mark.parametrize("name", sorted(_notebook_stages()))
def test_notebook_stage(name):
    stage = _notebook_stages()[name]
    number = NB_STAGE.match(name).group(1)
    cmd = " ".join(stage["cmd"]) if isinstance(stage["cmd"], list) else stage["cmd"]
    assert "papermill -k python3" in cmd
    assert "--cwd notebooks" in cmd

    deps = [p for p, _ in _paths(stage.get("deps"))]
    notebooks = [p for p in deps if re.fullmatch(r"notebooks/[^/]+\.ipynb", p)]
    assert len(notebooks) == 1, f"{name}: notebook deps {notebooks}"
    notebook = notebooks[0]
    assert Path(notebook).name.startswith(number + "_"), (name, notebook)
    assert notebook in cmd

    outs = _paths(stage.get("outs")) + _paths(stage.get("metrics"))
    assert outs
    assert notebook not in [p for p, _ in outs]
    for path, opts in outs:
        assert opts.get("cache") is False, f"{name}: {path} must have cache: false"

    path = ROOT / notebook
    assert path.is_file(), f"{notebook} missing"
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    for cell in code:
        assert cell.get("outputs", []) == [], f"{notebook}: committed with outputs"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{notebook}: {len(tagged)} cells tagged 'parameters'"


@pytest.mark.parametrize("name", sorted(_notebook_stages()))
def test_executed_notebook_shows_its_figures(name):
    """The committed executed copy shows its figures inline (a run with MPLBACKEND=Agg drops them)."""
    executed = [p for p, _ in _paths(_notebook_stages()[name].get("outs")) if p.startswith("notebooks/executed/")]
    assert len(executed) == 1, f"{name}: executed copies {executed}"
    path = ROOT / executed[0]
    if not path.is_file():
        pytest.skip(f"{executed[0]} not generated yet (dvc repro {name})")
    nb = json.loads(path.read_text())
    saves = sum("plotting.savefig(" in "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    images = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
    assert images >= saves, f"{executed[0]}: {images} inline images for {saves} saved figures; rerun `make repro`"
