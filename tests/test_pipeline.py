"""The committed pipeline is never stale, and its claims hold across seeds (lopt.seeds).

``make test`` runs ``make data`` first, so ``data/fashion_mnist.npz`` exists here with its stable hash: any
stage that ``dvc status`` reports means a notebook, a library module or ``params.yaml`` changed without the
rerun of the stages it affects (``make repro``) and the new ``dvc.lock`` being committed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lopt import config, report, seeds

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "figures"


def _dvc() -> str:
    exe = Path(sys.executable).with_name("dvc")
    return str(exe) if exe.is_file() else (shutil.which("dvc") or pytest.skip("dvc not installed"))


def test_dvc_status_is_clean():
    if not (ROOT / "data" / "fashion_mnist.npz").is_file():
        pytest.skip("data/fashion_mnist.npz not prepared (make data)")
    proc = subprocess.run([_dvc(), "status", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stale = json.loads(proc.stdout or "{}")
    assert not stale, (
        "stale pipeline: these stages changed without being rerun; run `make repro` and commit dvc.lock, "
        f"figures/ and notebooks/executed/: {json.dumps(stale)[:2000]}"
    )


def _metrics() -> dict[str, dict]:
    return {p.name[:2]: json.loads(p.read_text()) for p in sorted(FIGURES.glob("[0-9][0-9]_metrics.json"))}


def test_every_stage_has_committed_metrics_at_the_default_profile():
    metrics = _metrics()
    for nb in seeds.stages(ROOT):
        assert nb in metrics, f"figures/{nb}_metrics.json missing"
        assert metrics[nb]["profile"] == config.read_params()["profile"]
        assert metrics[nb].get("seed") == config.read_params().get("seed", 0), f"{nb}: run at another seed"


def test_dvc_metrics_are_the_short_summaries():
    """Each stage declares its flat summary as DVC metrics (one short line per notebook in `dvc metrics show`),
    the detail as an output, and the committed summary agrees with the detail."""
    stages = seeds.stages(ROOT)
    for nb, record in _metrics().items():
        stage = stages[nb]
        declared = [next(iter(m)) if isinstance(m, dict) else m for m in stage.get("metrics", [])]
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]
        assert declared == [f"figures/{nb}_summary.json"] and f"figures/{nb}_metrics.json" in outs, nb
        assert json.loads((FIGURES / f"{nb}_summary.json").read_text()) == report.summary(record), nb


def test_seeds_table_is_current():
    table = seeds.read_table()
    assert table.get("profile") == config.read_params()["profile"], "benchmarks/results/seeds/ missing"
    assert sorted({0, *table["seeds"]}) == list(seeds.SEEDS)
    stale = seeds.stale_notebooks(table, ROOT)
    assert not stale, (
        f"the seeds table is stale for notebooks {stale} (their inputs changed since it was made): "
        f"run `.venv/bin/python benchmarks/claims_across_seeds.py --notebooks {' '.join(stale)}`, then `make repro`"
    )


def test_asserted_claims_hold_at_every_seed():
    """A claim the pipeline asserts (not named fragile or not reproduced) holds at seeds 0, 1 and 2; the names the
    notebooks recorded as fragile are exactly those whose value differs between the seeds."""
    table = seeds.read_table()
    for nb, record in _metrics().items():
        asserted = [c for c in record["claims"] if c not in record["not_reproduced"] and c not in record["fragile"]]
        for claim in asserted:
            assert record["claims"][claim], f"{nb}: {claim} is false but asserted"
            at = seeds.outcomes(nb, claim, table)
            assert set(at) == set(table["seeds"]), f"{nb}: {claim} missing at seeds {set(table['seeds']) - set(at)}"
            assert all(at.values()), f"{nb}: {claim} asserted but false at seeds {[s for s, v in at.items() if not v]}"
        expected = seeds.fragile_claims(nb, record["claims"], record["seed"], record["profile"], record["not_reproduced"], table)
        assert record["fragile"] == expected, f"{nb}: fragile {record['fragile']} but the table says {expected}"


def test_fragile_claims_logic():
    table = {"profile": "cpu", "seeds": [1, 2], "notebooks": {"99": {"runs": {
        "1": {"claims": {"a": True, "b": False, "c": True}}, "2": {"claims": {"a": True, "b": True}}}}}}
    claims = {"a": True, "b": True, "c": True, "d": False}
    # b differs between seeds; c is missing at seed 2, d at both (not computed there): no evidence it holds
    assert seeds.fragile_claims("99", claims, 0, "cpu", (), table) == ["b", "c", "d"]
    assert seeds.fragile_claims("99", claims, 0, "cpu", ["b", "d"], table) == ["c"]
    assert seeds.fragile_claims("99", claims, 0, "smoke", (), table) == []
    # at seed 1 itself, the table's own run at seed 1 does not count
    assert seeds.fragile_claims("99", {"a": True, "b": False}, 1, "cpu", (), table) == ["b"]
    assert "| 99 | `b` | **no** | yes |" in seeds.render(table)


def test_fingerprint_tracks_inputs(tmp_path):
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    stage = seeds.stages(ROOT)["09"]
    for dep in stage["deps"]:
        if (ROOT / dep).is_file():
            (tmp_path / dep).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / dep, tmp_path / dep)
    before = seeds.fingerprint("09", "cpu", tmp_path)
    assert before == seeds.fingerprint("09", "cpu", ROOT)
    (tmp_path / "src/lopt/dynamics.py").write_text("# changed\n")
    assert seeds.fingerprint("09", "cpu", tmp_path) != before
    # the gpu block of params.yaml does not enter the cpu fingerprint
    shutil.copy(ROOT / "src/lopt/dynamics.py", tmp_path / "src/lopt/dynamics.py")
    doc = yaml.safe_load((tmp_path / "params.yaml").read_text())
    doc["nb09"]["gpu"]["history_steps"] += 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    assert seeds.fingerprint("09", "cpu", tmp_path) == before
    doc["nb09"]["cpu"]["history_steps"] += 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    assert seeds.fingerprint("09", "cpu", tmp_path) != before
    # how the stage prints (papermill's log options) does not enter it; what it runs does
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    dvc_yaml = (ROOT / "dvc.yaml").read_text()
    assert " --log-level INFO --log-output " in dvc_yaml
    (tmp_path / "dvc.yaml").write_text(dvc_yaml.replace(" --log-level INFO --log-output ", " --log-level WARNING "))
    assert seeds.fingerprint("09", "cpu", tmp_path) == before
    (tmp_path / "dvc.yaml").write_text(dvc_yaml.replace("-k python3", "-k python3 --request-save-on-cell-execute"))
    assert seeds.fingerprint("09", "cpu", tmp_path) != before


def test_each_stage_reads_only_its_own_seeds_entry():
    """A seeds run of one notebook reruns that notebook's stage only."""
    for nb, stage in seeds.stages(ROOT).items():
        entries = [d for d in stage["deps"] if d.startswith(seeds.TABLE.as_posix())]
        assert entries == [f"{seeds.TABLE.as_posix()}/{nb}.json"], f"{stage['name']}: seeds entries {entries}"


def test_table_entries_round_trip(tmp_path):
    runs = {"1": {"claims": {"a": True}, "seconds": 1.0, "error": None}}
    seeds.write_entry("07", "cpu", [2, 1], "f7", runs, tmp_path)
    seeds.write_entry("08", "cpu", [1, 2], "f8", runs, tmp_path)
    seeds.write_entry("09", "smoke", [1, 2], "f9", runs, tmp_path)  # another profile: not evidence at cpu
    table = seeds.read_table(tmp_path)
    assert table["profile"] == "cpu" and table["seeds"] == [1, 2]
    assert set(table["notebooks"]) == {"07", "08"} and table["notebooks"]["07"] == {"fingerprint": "f7", "runs": runs}
    assert list(seeds.read_table(tmp_path, ["08"])["notebooks"]) == ["08"]
    assert seeds.read_table(tmp_path / "none")["notebooks"] == {}


def test_notebook_chains_share_an_xdist_group():
    """``make test`` (--dist loadgroup) runs the notebooks that read another notebook's learned optimizers on
    the same worker, after it (root conftest.py); every other test file is its own group."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    root_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root_conftest)
    groups = {p.name[:2]: root_conftest.group_of(f"notebooks/{p.name}") for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert groups["05"] == groups["06"] == groups["07"] and groups["10"] == groups["11"] == groups["14"]
    assert groups["05"] != groups["10"]
    # every notebook that reads learned weights (a dependency under data/learned/ in dvc.yaml) shares the group of
    # the notebook that writes them
    stages = seeds.stages(ROOT)
    writer = {out: nb for nb, st in stages.items() for o in st.get("outs", []) for out in ([o] if isinstance(o, str) else o)}
    read = [(nb, dep) for nb, st in stages.items() for dep in st.get("deps", []) if dep.startswith("data/learned/")]
    assert read and {dep for _, dep in read} <= set(writer)
    assert all(groups[nb] == groups[writer[dep]] for nb, dep in read)
    assert groups["01"] == "notebooks/" + next((ROOT / "notebooks").glob("01_*.ipynb")).name
    assert root_conftest.group_of("tests/test_tasks.py") == "tests/test_tasks.py"
    assert "loadgroup" in (ROOT / "Makefile").read_text()



def _lopt_imports(source: str, package: str) -> set[str]:
    """The lopt modules that ``source`` (a module of ``package``) imports, as dotted names; a name imported from
    a package's ``__init__`` (``from lopt.learned import MLPOptimizer``) resolves to the module defining it.
    Package ``__init__`` files themselves are not followed (they re-export, and switch on the compile cache)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lopt"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] != "lopt":
                continue
            for alias in node.names:
                if _module_file(f"{base}.{alias.name}") is not None:
                    found.add(f"{base}.{alias.name}")
                elif (ROOT / "src" / Path(*base.split(".")) / "__init__.py").is_file():
                    init = ROOT / "src" / Path(*base.split(".")) / "__init__.py"
                    found |= {m for m in _lopt_imports(init.read_text(), base) if _defines(m, alias.name)}
                else:
                    found.add(base)
    return found


def _defines(module: str, name: str) -> bool:
    path = _module_file(module)
    return path is not None and path.name != "__init__.py" and (
        f"class {name}" in path.read_text() or f"def {name}" in path.read_text() or f"\n{name} =" in path.read_text())


def _module_file(name: str) -> Path | None:
    path = ROOT / "src" / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_stage_deps_cover_every_library_module_its_notebook_imports():
    """DVC reruns a stage when one of its deps changes: every lopt module its notebook imports, directly or
    through other lopt modules, must be a dep (a file, or a folder above it), or a change to it would leave
    the committed results stale without ``dvc status`` noticing."""
    missing = {}
    for number, stage in seeds.stages(ROOT).items():
        notebook = next(ROOT.glob(f"notebooks/{number}_*.ipynb"))
        cells = json.loads(notebook.read_text())["cells"]
        source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        todo, files = list(_lopt_imports(source, "lopt")), set()
        while todo:
            path = _module_file(todo.pop())
            if path is None or path.name == "__init__.py" or path in files:
                continue
            files.add(path)
            package = ".".join(path.relative_to(ROOT / "src").parts[:-1])
            if package != "lopt.schema":  # (a dep as a folder) it imports allowed values, not results
                todo += _lopt_imports(path.read_text(), package)
        deps = [ROOT / d for d in stage["deps"]]
        uncovered = sorted(str(f.relative_to(ROOT)) for f in files if not any(f == d or d in f.parents for d in deps))
        if uncovered:
            missing[number] = uncovered
    assert not missing, f"stage deps missing in dvc.yaml (add them): {missing}"
