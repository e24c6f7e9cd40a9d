"""benchmarks/step_profile.py names each XLA kernel by the source line most of its operations come from."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import step_profile  # noqa: E402


def _program(x, w):
    h = jnp.tanh(x @ w)
    scaled = h * 3.0 + jnp.sin(h) * 2.0 - jnp.cos(h)  # most of the elementwise fusion's operations
    return scaled + 1.0


def test_kernels_are_named_by_their_source_line():
    x, w = jnp.ones((16, 32)), jnp.ones((32, 8))
    names = step_profile.sources(jax.jit(_program).lower(x, w).compile().as_text())
    line = _program.__code__.co_firstlineno + 2
    fusions = [src for op, src in names.values() if op == "fusion"]
    assert any(src == f"test_step_profile.py:{line} _program" for src in fusions), names
    assert "XLA_FLAGS" not in step_profile.os.environ or "traceme" not in step_profile.os.environ["XLA_FLAGS"]


def test_by_line_adds_up_the_kernels_of_a_line():
    kernels = {"a": {"us_per_step": 1.0, "source": "f.py:1 f"}, "b": {"us_per_step": 2.0, "source": "f.py:1 f"},
               "c": {"us_per_step": 4.0, "source": "g.py:2 g"}}
    assert step_profile.by_line(kernels) == {"g.py:2 g": {"us_per_step": 4.0, "kernels": 1},
                                             "f.py:1 f": {"us_per_step": 3.0, "kernels": 2}}
