"""lopt.report (metrics JSON, claims) and lopt.plotting.savefig."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from lopt import config, plotting, report



def test_save_metrics(output_dir):
    metrics = {
        "np_float": np.float32(1.5),
        "np_int": np.int64(7),
        "jax_scalar": jnp.float32(0.25),
        "jax_array": jnp.arange(3),
        "np_array": np.array([[1.0, 2.0], [3.0, 4.0]]),
        "nested": {"a": [np.float64(0.5), 2], "flag": np.bool_(True)},
        "missing": None,
        "name": "sgd",
    }
    claims = {"yes": np.bool_(True), "no": jnp.array(False), "int": 1}
    path = report.save_metrics("07", "cpu", np.float64(12.3456), metrics, claims)
    assert path == output_dir / "figures" / "07_metrics.json"
    record = json.loads(path.read_text())
    assert record["notebook"] == "07"
    assert record["profile"] == "cpu"
    assert record["seconds"] == 12.35
    m = record["metrics"]
    assert m["np_float"] == 1.5 and isinstance(m["np_float"], float)
    assert m["np_int"] == 7 and isinstance(m["np_int"], int)
    assert m["jax_scalar"] == 0.25
    assert m["jax_array"] == [0, 1, 2]
    assert m["np_array"] == [[1.0, 2.0], [3.0, 4.0]]
    assert m["nested"] == {"a": [0.5, 2], "flag": True}
    assert m["missing"] is None and m["name"] == "sgd"
    assert record["claims"] == {"yes": True, "no": False, "int": True}
    assert all(isinstance(v, bool) for v in record["claims"].values())
    summary = json.loads((output_dir / "figures" / "07_summary.json").read_text())
    assert summary == {"claims_held": 2, "claims": 3, "not_reproduced": 0, "fragile": 0, "seconds": 12.35}


def test_summary_is_flat_and_short_for_dvc_metrics(output_dir):
    """`dvc metrics show` prints one column per key over every notebook: the same five numbers everywhere."""
    report.save_metrics("03", "cpu", 1.0, {"curve": list(range(100)), "deep": {"a": {"b": 1}}},
                        {"a": True, "b": False}, not_reproduced=["b"])
    summary = json.loads((output_dir / "figures" / "03_summary.json").read_text())
    assert list(summary) == ["claims_held", "claims", "not_reproduced", "fragile", "seconds"]
    assert summary["not_reproduced"] == 1 and all(isinstance(v, (int, float)) for v in summary.values())


def test_save_metrics_profile_validated(output_dir):
    with pytest.raises(config.ConfigError):
        report.save_metrics("07", "fast", 1.0, {}, {})
    assert not (output_dir / "figures" / "07_metrics.json").exists()


def test_to_builtin_is_json_ready():
    value = report.to_builtin({"a": (jnp.ones(2), np.uint8(3)), 1: np.array(True)})
    assert value == {"a": [[1.0, 1.0], 3], "1": True}
    json.dumps(value)


def test_assert_claims_strict_profiles():
    for profile in ("cpu", "gpu"):
        report.assert_claims({"a": True, "b": np.bool_(True)}, {"x": 1.0}, profile)
        with pytest.raises(AssertionError) as exc:
            report.assert_claims({"a": True, "basins_split": False}, {"x": 1.0}, profile)
        assert "basins_split" in str(exc.value)
        assert str(exc.value).endswith(": basins_split")  # only the failed claim is named


def test_assert_claims_smoke_tolerates_false_claims():
    report.assert_claims({"basins_split": False}, {"x": 1.0, "y": [2.0, 3.0]}, "smoke")


@pytest.mark.parametrize("bad", [float("nan"), np.inf, np.array([1.0, np.nan]), jnp.float32(np.nan)])
def test_assert_claims_non_finite_metrics_fail_at_cpu(bad):
    with pytest.raises(AssertionError, match="non-finite"):
        report.assert_claims({"ok": True}, {"x": 1.0, "bad": {"deep": bad}}, "cpu")


def test_assert_claims_non_finite_metrics_fail_at_smoke():
    with pytest.raises(AssertionError, match="non-finite"):
        report.assert_claims({"ok": True}, {"x": float("nan")}, "smoke")


def test_assert_claims_allows_none_metrics():
    report.assert_claims({"ok": True}, {"fraction": None, "values": [None, 1.0]}, "cpu")
    report.assert_claims({"ok": True}, {"fraction": None}, "smoke")


def test_timer():
    t = report.Timer()
    assert 0.0 <= t.seconds < 5.0


def test_savefig(output_dir):
    plotting.setup()
    fig, axes = plotting.subplots(1, 2, width=2.0, height=1.5)
    assert axes.shape == (1, 2)
    axes[0, 0].plot([0, 1], [1, 0])
    path = plotting.savefig(fig, "00_test_figure")
    assert path == output_dir / "figures" / "00_test_figure.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_not_reproduced_claims_are_recorded_and_reported_not_asserted(output_dir, capsys):
    claims = {"a": True, "b": False}
    path = report.save_metrics("07", "cpu", 1.0, {"x": 1.0}, claims, not_reproduced=["b"])
    record = json.loads(path.read_text())
    assert record["claims"] == {"a": True, "b": False} and record["not_reproduced"] == ["b"]
    report.assert_claims(claims, {"x": 1.0}, "cpu", not_reproduced=["b"])
    assert "not reproduced at profile 'cpu'" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="a"):  # every other claim is still asserted
        report.assert_claims({"a": False, "b": False}, {"x": 1.0}, "cpu", not_reproduced=["b"])
    with pytest.raises(KeyError, match="unknown claims"):
        report.assert_claims(claims, {"x": 1.0}, "cpu", not_reproduced=["c"])
    with pytest.raises(TypeError):
        report.save_metrics("07", "cpu", 1.0, {}, claims, not_reproduced="b")
    assert json.loads(report.save_metrics("07", "cpu", 1.0, {}, claims).read_text())["not_reproduced"] == []


def test_save_curves_writes_a_csv_for_dvc_plots(output_dir):
    path = report.save_curves("04", "curve", {"length": [1, 2, 4], "log10_var": np.array([0.5, np.inf, -1.0])})
    assert path == output_dir / "figures" / "04_curve.csv"
    assert path.read_text().splitlines() == ["length,log10_var", "1.0,0.5", "2.0,", "4.0,-1.0"]
    with pytest.raises(ValueError, match="differ in length"):
        report.save_curves("04", "bad", {"a": [1, 2], "b": [1]})
