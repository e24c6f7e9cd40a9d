"""What a benchmark's numbers were measured on: machine, versions, load and the checkout (shared by the
benchmark scripts; the numbers are only comparable within one run)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import jax
import optax


def git_state() -> dict:
    """The commit and the files that differ from it (the numbers depend on uncommitted edits too)."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], capture_output=True, text=True, timeout=10,
                                  cwd=Path(__file__).parent).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"head": git("rev-parse", "HEAD"), "modified": git("diff", "--name-only", "HEAD").split()}


def describe(**extra: Any) -> dict:
    """Platform, cores, Python/JAX/optax versions, devices, 1-min load average now, git state, XLA flags from the
    environment; plus ``extra``."""
    import lopt

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
        "optax": optax.__version__,
        "load_average_1min_at_start": os.getloadavg()[0],
        "lopt": str(Path(lopt.__file__).parent),  # which checkout (or copy) of the library was measured
        # compiler settings from the environment change the programs XLA emits (and may change their rounding)
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_disable_most_optimizations": os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS", ""),
        "git": git_state(),
        **extra,
    }
