"""The README's tables are generated from the committed metrics (lopt.readme), never typed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lopt import readme

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_match_the_metrics():
    text = (ROOT / "README.md").read_text()
    assert readme.render(text, ROOT) == text, "README.md is stale: run `make readme` (python -m lopt.readme)"


def test_every_notebook_with_metrics_has_a_row():
    nbs = {p.name[:2] for p in (ROOT / "figures").glob("*_metrics.json")}
    assert nbs <= set(readme.ROWS)


def test_status_counts_fragile_and_names_not_reproduced():
    data = {"profile": "cpu", "claims": {"a": True, "b": False, "c": True}, "not_reproduced": ["b"], "fragile": ["c"]}
    text = readme.status(data)
    assert text.startswith("**partly reproduced**") and "1/3 claims at `cpu`" in text
    assert "not reproduced: `b`" in text and "fragile across seeds: `c`" in text
    assert readme.status({"profile": "cpu", "claims": {"a": True}}).startswith("**reproduced** (1/1")


def test_render_replaces_only_between_markers(tmp_path):
    text = f"head\n{readme.START}\nold\n{readme.END}\nmid\n{readme.SEEDS_START}\nold\n{readme.SEEDS_END}\ntail\n"
    (tmp_path / "figures").mkdir()
    (tmp_path / "notebooks").mkdir()
    out = readme.render(text, tmp_path)
    assert out.startswith("head\n") and out.endswith("tail\n") and "\nmid\n" in out and "old" not in out
    assert "| 05 |" in out and "not yet" in out
    with pytest.raises(ValueError, match="markers"):
        readme.render("no markers", tmp_path)


def test_missing_metric_key_fails_loudly(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "notebooks" / "executed").mkdir(parents=True)
    (tmp_path / "notebooks" / "13_autonomous.ipynb").write_text("{}")
    (tmp_path / "figures" / "13_autonomous.png").write_bytes(b"")
    (tmp_path / "figures" / "13_metrics.json").write_text(json.dumps(
        {"notebook": "13", "profile": "cpu", "metrics": {}, "claims": {}}))
    with pytest.raises(KeyError):
        readme.row(tmp_path, "13")
