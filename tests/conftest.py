"""Shared fixtures for the lopt test suite.

- ``output_dir``: points ``$LOPT_OUTPUT_DIR`` at a fresh temporary folder, so that tests which write
  figures or metrics never touch the committed results in the repository.
- An autouse fixture removes ``$LOPT_PROFILE`` (``make test`` exports ``LOPT_PROFILE=smoke`` for the
  notebooks), so that config tests see the default unless they set it themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from lopt import config  # noqa: E402


@pytest.fixture(autouse=True)
def _no_profile_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.PROFILE_ENV, raising=False)


@pytest.fixture
def output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary ``$LOPT_OUTPUT_DIR`` (figures and metrics go below it)."""
    monkeypatch.setenv(config.OUTPUT_ENV, str(tmp_path))
    return tmp_path

