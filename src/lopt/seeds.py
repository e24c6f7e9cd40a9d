"""Claims across seeds: which claims hold at every seed, which only at some (*fragile*).

A claim asserted at ``cpu`` must hold at seeds 0, 1 and 2 (floating-point summation order differs between
machines and meta-training amplifies it, so one seed is not evidence).  ``benchmarks/claims_across_seeds.py``
runs the notebooks at the other seeds (papermill, ``LOPT_OUTPUT_DIR``) and writes :data:`TABLE`::

    {"profile": "cpu", "seeds": [1, 2],
     "notebooks": {"11": {"fingerprint": "...", "runs": {"1": {"claims": {...}, "seconds": 61.0}, ...}}}}

Each notebook's entry carries a :func:`fingerprint` of what its DVC stage reads (notebook, library modules,
data, its ``params.yaml`` block; not the GRU weights, which each seed trains itself), so a test can tell
when the table is stale.  A notebook calls :func:`fragile_claims` with the claims it just computed: a claim
is fragile when its value at this seed and at the table's other seeds is not the same everywhere.  Fragile
claims are reported (metrics JSON ``fragile``), not asserted as reproduced (:func:`lopt.report.assert_claims`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from . import config

TABLE = Path("benchmarks") / "results" / "claims_across_seeds.json"
SEEDS = (0, 1, 2)
# Inputs a seed run produces itself (notebook 10's GRU weights), left out of the fingerprint.
_OWN_INPUTS = ("data/learned/",)


def table_path() -> Path:
    return config.repo_root() / TABLE


def stages(root: Path | None = None) -> dict[str, dict]:
    """``dvc.yaml``'s notebook stages by notebook number (``"01"`` -> stage dict with its ``name``)."""
    root = root or config.repo_root()
    out = {}
    for name, st in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items():
        if name.startswith("nb"):
            out[name[2:4]] = {**st, "name": name}
    return out


def fingerprint(notebook: str, profile: str = "cpu", root: Path | None = None) -> str:
    """SHA-256 over the stage's command, its dependencies' contents (not the table itself, nor inputs a
    seed run makes itself) and its ``params.yaml`` block at ``profile``."""
    root = root or config.repo_root()
    stage = stages(root)[notebook]
    h = hashlib.sha256(stage["cmd"].encode())
    for dep in sorted(stage.get("deps", [])):
        if dep == TABLE.as_posix() or dep.startswith(_OWN_INPUTS):
            continue
        path = root / dep
        h.update(dep.encode() + b"\0" + (hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"missing"))
    params = config.read_params(root / "params.yaml")
    for name in stage.get("params", []):
        if name in ("profile", "seed"):
            continue
        block = (params.get(name) or {}).get(profile)
        h.update(name.encode() + json.dumps(block, sort_keys=True, default=str).encode())
    return h.hexdigest()


def read_table(path: Path | None = None) -> dict[str, Any]:
    """The committed table (empty when it does not exist yet)."""
    path = path or table_path()
    if not path.is_file():
        return {"profile": None, "seeds": [], "notebooks": {}}
    return json.loads(path.read_text())


def outcomes(notebook: str, claim: str, table: Mapping[str, Any]) -> dict[int, bool | None]:
    """The claim's value at each seed of the table (``None``: that run failed before its metrics)."""
    runs = table.get("notebooks", {}).get(notebook, {}).get("runs", {})
    return {int(s): (r.get("claims") or {}).get(claim) for s, r in runs.items()}


def fragile_claims(
    notebook: str,
    claims: Mapping[str, bool],
    seed: int,
    profile: str,
    not_reproduced: Sequence[str] = (),
    table: Mapping[str, Any] | None = None,
) -> list[str]:
    """Claims (not already named not reproduced) whose value at this seed and at the table's other seeds
    differ, or that the run of another seed could not compute.  Empty at a profile the table was not made at."""
    table = read_table() if table is None else table
    if table.get("profile") != profile:
        return []
    out = []
    for name, value in claims.items():
        if name in not_reproduced:
            continue
        others = [v for s, v in outcomes(notebook, name, table).items() if s != seed]
        if any(v is None or bool(v) != bool(value) for v in others):
            out.append(name)
    return out


def stale_notebooks(table: Mapping[str, Any] | None = None, root: Path | None = None) -> list[str]:
    """Notebooks whose table entry is missing or was made from other inputs than the current tree's."""
    table = read_table() if table is None else table
    profile = table.get("profile") or "cpu"
    entries = table.get("notebooks", {})
    return [nb for nb in stages(root) if entries.get(nb, {}).get("fingerprint") != fingerprint(nb, profile, root)]


def render(table: Mapping[str, Any], seed0: Mapping[str, Mapping[str, bool]] | None = None) -> str:
    """The table claim x seed as Markdown (``seed0``: claims of the main run, e.g. ``figures/*_metrics.json``)."""
    seeds = sorted({0, *map(int, table.get("seeds", []))}) if seed0 else sorted(map(int, table.get("seeds", [])))
    mark = {True: "yes", False: "**no**", None: "error"}
    lines = ["| nb | claim | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|" + "---|" * len(seeds)]
    for nb in sorted(set(table.get("notebooks", {})) | set(seed0 or {})):
        names = list((seed0 or {}).get(nb, {}))
        for run in table.get("notebooks", {}).get(nb, {}).get("runs", {}).values():
            names += [n for n in (run.get("claims") or {}) if n not in names]
        for name in names:
            vals = outcomes(nb, name, table)
            if seed0:
                vals[0] = (seed0.get(nb) or {}).get(name)
            lines.append(f"| {nb} | `{name}` | " + " | ".join(mark[vals.get(s)] for s in seeds) + " |")
    return "\n".join(lines) + "\n"
