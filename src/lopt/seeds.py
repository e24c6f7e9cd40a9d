"""Claims across seeds: which claims hold at every seed, which only at some (*fragile*).

A claim asserted at ``cpu`` must hold at seeds 0, 1 and 2 (floating-point summation order differs between
machines and meta-training amplifies it, so one seed is not evidence).  ``benchmarks/claims_across_seeds.py``
runs the notebooks at the other seeds (papermill, ``LOPT_OUTPUT_DIR``) and writes one file per notebook
under :data:`TABLE` (``benchmarks/results/seeds/NN.json``, so that a stage depends on its own entry only)::

    {"profile": "cpu", "seeds": [1, 2], "fingerprint": "...",
     "runs": {"1": {"claims": {...}, "seconds": 61.0}, "2": {...}}}

:func:`read_table` assembles them as ``{"profile", "seeds", "notebooks": {"11": {...}, ...}}``.  Each entry
carries a :func:`fingerprint` of what computes the notebook's claims (notebook, library modules, data, its
``params.yaml`` block; not the GRU weights, which each seed trains itself, nor the modules that only record,
plot or compare claims), so a test can tell when the table is stale.  A notebook calls :func:`fragile_claims`
with the claims it just computed (it reads the notebook's own file only): a claim is fragile when its value at this seed and at the table's other seeds is not the same everywhere.  Fragile
claims are reported (metrics JSON ``fragile``), not asserted as reproduced (:func:`lopt.report.assert_claims`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from . import config

TABLE = Path("benchmarks") / "results" / "seeds"
SEEDS = (0, 1, 2)
# Left out of the fingerprint: inputs a seed run produces itself (notebook 10's GRU weights), the table itself,
# modules that record, plot or compare the claims without computing them, and those that read and check the
# parameters (config, schema: the parameter values themselves are fingerprinted, block by block).
_NOT_FINGERPRINTED = ("data/learned/", TABLE.as_posix() + "/", "src/lopt/seeds.py", "src/lopt/report.py",
                      "src/lopt/plotting.py", "src/lopt/config.py", "src/lopt/schema")
# Options of a stage's command that only route or filter the notebook's printed output (papermill's --log-output,
# --log-level, --stdout-file, --stderr-file).
_OUTPUT_ROUTING = re.compile(r"\s--(log-output|(log-level|stdout-file|stderr-file)\s+\S+)")


def table_path(notebook: str | None = None, root: Path | None = None) -> Path:
    """The table's folder, or one notebook's file in it."""
    folder = (root or config.repo_root()) / TABLE
    return folder / f"{notebook}.json" if notebook else folder


def stages(root: Path | None = None) -> dict[str, dict]:
    """``dvc.yaml``'s notebook stages by notebook number (``"01"`` -> stage dict with its ``name``)."""
    root = root or config.repo_root()
    out = {}
    for name, st in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items():
        if name.startswith("nb"):
            out[name[2:4]] = {**st, "name": name}
    return out


def fingerprint(notebook: str, profile: str = "cpu", root: Path | None = None) -> str:
    """SHA-256 over the stage's command (without its output routing), its dependencies' contents (not the table
    itself, nor inputs a seed run makes itself, nor :data:`_NOT_FINGERPRINTED`) and its ``params.yaml`` block at
    ``profile``."""
    root = root or config.repo_root()
    stage = stages(root)[notebook]
    h = hashlib.sha256(_OUTPUT_ROUTING.sub("", stage["cmd"]).encode())
    for dep in sorted(stage.get("deps", [])):
        if dep.startswith(_NOT_FINGERPRINTED):
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


def read_table(folder: Path | None = None, notebooks: Sequence[str] | None = None) -> dict[str, Any]:
    """The committed table, assembled from its per-notebook files (all, or ``notebooks``; empty when there are
    none).  Entries made at another profile or other seeds than the first file's are left out."""
    folder = folder or table_path()
    table: dict[str, Any] = {"profile": None, "seeds": [], "notebooks": {}}
    paths = sorted(folder.glob("[0-9][0-9].json")) if notebooks is None else [folder / f"{nb}.json" for nb in notebooks]
    for path in (p for p in paths if p.is_file()):
        entry = json.loads(path.read_text())
        if table["profile"] is None:
            table["profile"], table["seeds"] = entry.get("profile"), sorted(entry.get("seeds", []))
        if entry.get("profile") == table["profile"] and sorted(entry.get("seeds", [])) == table["seeds"]:
            table["notebooks"][path.stem] = {k: entry[k] for k in ("fingerprint", "runs") if k in entry}
    return table


def write_entry(notebook: str, profile: str, seeds_: Sequence[int], fingerprint_: str, runs: Mapping[str, Any],
                folder: Path | None = None) -> Path:
    """Write one notebook's entry of the table (``benchmarks/results/seeds/NN.json``)."""
    path = (folder or table_path()) / f"{notebook}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"profile": profile, "seeds": sorted(int(s) for s in seeds_), "fingerprint": fingerprint_, "runs": dict(runs)}
    path.write_text(json.dumps(entry, indent=1) + "\n")
    return path


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
    table = read_table(notebooks=[notebook]) if table is None else table
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
