"""Metrics JSON and claims: the numbers a notebook computed and the paper claims checked on them.

Every notebook writes ``figures/NN_metrics.json`` through :func:`save_metrics`::

    {"notebook": "01", "profile": "cpu", "seconds": 42.1,
     "metrics": {...key numbers...}, "claims": {"basins_split": true, ...}}

and beside it ``figures/NN_summary.json``, the same few flat numbers for every notebook (claims held of
claims made, not reproduced, fragile, seconds): DVC's metrics, so that ``dvc metrics show`` / ``diff``
print one short line per notebook; the detail stays in ``NN_metrics.json``.

and ends with :func:`assert_claims`, which asserts every claim at the ``cpu`` and ``gpu``
profiles and only checks that the numbers are finite at ``smoke``.

A claim must hold at every seed (:mod:`lopt.seeds`): one whose value differs between this run and the
committed runs at other seeds is *fragile* (``FRAGILE = seeds.fragile_claims(...)`` in the notebook), named
in the JSON's ``fragile``, reported and not asserted as reproduced.

A claim that the notebook could not reproduce at its budget is not dropped, loosened or faked: it
stays in ``claims`` with its measured truth value, is named in ``not_reproduced`` (both in the JSON
and in the call to :func:`assert_claims`), and the notebook's markdown reports the numbers and what
was tried. :func:`assert_claims` then asserts the other claims and prints the ones not reproduced.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import config


class Timer:
    """Wall-clock seconds since creation (``Timer().seconds``)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def to_builtin(value: Any) -> Any:
    """Convert numpy/JAX scalars and arrays (nested in dicts and lists) to JSON-ready Python."""
    if isinstance(value, Mapping):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, str)) or value is None:
        return value
    arr = np.asarray(value)
    if arr.dtype == bool:
        return arr.tolist()
    return arr.tolist() if arr.ndim else arr.item()


def _flat_numbers(tree: Any) -> list[float]:
    out: list[float] = []
    if isinstance(tree, Mapping):
        for v in tree.values():
            out += _flat_numbers(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            out += _flat_numbers(v)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out.append(float(tree))
    return out


def metrics_path(notebook: str) -> Path:
    return config.output_dir() / "figures" / f"{notebook}_metrics.json"


def summary_path(notebook: str) -> Path:
    return config.output_dir() / "figures" / f"{notebook}_summary.json"


def summary(record: Mapping[str, Any]) -> dict[str, float]:
    """The flat headline of a metrics record (module docstring): the same keys for every notebook."""
    claims = record["claims"]
    return {"claims_held": sum(bool(v) for v in claims.values()), "claims": len(claims),
            "not_reproduced": len(record["not_reproduced"]), "fragile": len(record["fragile"]),
            "seconds": record["seconds"]}


def save_metrics(
    notebook: str,
    profile: str,
    seconds: float,
    metrics: Mapping[str, Any],
    claims: Mapping[str, bool],
    not_reproduced: Sequence[str] = (),
    fragile: Sequence[str] = (),
    seed: int | None = None,
) -> Path:
    """Write ``figures/<notebook>_metrics.json`` (and its summary) and return its path. ``not_reproduced`` names the
    claims known not to reproduce at this profile, ``fragile`` those whose value depends on the seed
    (module docstring); ``seed`` is the run's seed."""
    _check_not_reproduced(claims, not_reproduced)
    _check_not_reproduced(claims, fragile)
    record = {
        "notebook": notebook,
        "profile": config.resolve_profile(profile),
        "seed": seed,
        "seconds": round(float(seconds), 2),
        "metrics": to_builtin(dict(metrics)),
        "claims": {k: bool(v) for k, v in claims.items()},
        "not_reproduced": list(not_reproduced),
        "fragile": list(fragile),
    }
    path = metrics_path(notebook)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    summary_path(notebook).write_text(json.dumps(summary(record), indent=2) + "\n")
    return path


def save_curves(notebook: str, name: str, columns: Mapping[str, Any]) -> Path:
    """Write ``figures/<notebook>_<name>.csv`` from equal-length columns and return its path: a curve that users
    compare across runs (``dvc plots show`` / ``dvc plots diff``, defined in ``dvc.yaml``); a value that is not
    finite is left empty."""
    data = {k: np.asarray(v, np.float64).ravel() for k, v in columns.items()}
    sizes = {k: v.size for k, v in data.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"columns of {notebook}_{name} differ in length: {sizes}")
    path = config.output_dir() / "figures" / f"{notebook}_{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = zip(*data.values())
    cell = lambda x: repr(float(x)) if np.isfinite(x) else ""
    path.write_text(",".join(data) + "\n" + "".join(",".join(cell(x) for x in row) + "\n" for row in rows))
    return path


def _check_not_reproduced(claims: Mapping[str, bool], not_reproduced: Sequence[str]) -> None:
    if isinstance(not_reproduced, str):
        raise TypeError("not_reproduced is a list of claim names, not one string")
    unknown = [k for k in not_reproduced if k not in claims]
    if unknown:
        raise KeyError(f"not_reproduced names unknown claims {unknown}; claims are: {', '.join(claims)}")


def assert_claims(
    claims: Mapping[str, bool],
    metrics: Mapping[str, Any],
    profile: str,
    not_reproduced: Sequence[str] = (),
    fragile: Sequence[str] = (),
) -> None:
    """Assert every claim (``cpu``/``gpu``) except those in ``not_reproduced`` and ``fragile``, which are
    printed with their measured value; at ``smoke`` assert only that the metrics are finite."""
    _check_not_reproduced(claims, not_reproduced)
    _check_not_reproduced(claims, fragile)
    numbers = _flat_numbers(to_builtin(dict(metrics)))
    if not all(math.isfinite(x) for x in numbers):
        raise AssertionError("non-finite metric values (use None for a number that is undefined)")
    if not config.strict(profile):
        assert claims, "no claims computed"
        return
    for name in not_reproduced:
        print(f"not reproduced at profile {profile!r} (see the notebook's text): {name} = {bool(claims[name])}")
    for name in fragile:
        print(f"fragile at profile {profile!r} (differs between seeds, benchmarks/results/seeds/NN.json): {name} = {bool(claims[name])}")
    failed = [name for name, ok in claims.items() if not ok and name not in not_reproduced and name not in fragile]
    assert not failed, f"claims not reproduced at profile {profile!r}: {', '.join(failed)}"
