"""Shared fixtures for the lopt test suite.

- ``output_dir``: points ``$LOPT_OUTPUT_DIR`` at a fresh temporary folder, so that tests which write
  figures or metrics never touch the committed results in the repository.
- Matrix products and convolutions run at full float32 precision on every backend: on a GPU, JAX's default
  lets float32 products use TF32 (about 3 decimal digits), which the reference comparisons here would read
  as wrong maths. On the CPU this changes nothing.
- An autouse fixture removes ``$LOPT_PROFILE`` (``make test`` exports ``LOPT_PROFILE=smoke`` for the
  notebooks), so that config tests see the default unless they set it themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
jax.config.update("jax_default_matmul_precision", "highest")

from lopt import config  # noqa: E402


@pytest.fixture(autouse=True)
def _no_profile_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.PROFILE_ENV, raising=False)


@pytest.fixture
def output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary ``$LOPT_OUTPUT_DIR`` (figures and metrics go below it)."""
    monkeypatch.setenv(config.OUTPUT_ENV, str(tmp_path))
    return tmp_path



@pytest.fixture(autouse=True)
def _fresh_active_profile():
    """config.load records the notebook's profile (it decides output_dir); no test inherits another's."""
    config._active["profile"] = None
    yield
    config._active["profile"] = None
