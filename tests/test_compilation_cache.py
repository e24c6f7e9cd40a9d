"""Importing ``lopt`` switches on JAX's persistent compilation cache for every program (``src/lopt/__init__.py``).

Each case runs in a fresh interpreter: JAX reads its cache settings once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = "import jax; jax.block_until_ready(jax.jit(lambda x: x + 1.0)(1.0))"  # compiles in milliseconds
REPORT = ("import jax, json; print(json.dumps([jax.config.jax_compilation_cache_dir, "
          "jax.config.jax_persistent_cache_min_compile_time_secs]))")


def run(code: str, **env: str) -> tuple[str | None, float]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "LOPT_COMPILATION_CACHE"))}
    out = subprocess.run([sys.executable, "-c", f"{code}; {REPORT}"], env={**clean, **env},
                         capture_output=True, text=True, check=True)
    folder, min_seconds = json.loads(out.stdout.strip().splitlines()[-1])
    return folder, min_seconds


@pytest.mark.parametrize("order", ["import lopt; " + PROGRAM, PROGRAM + "; import lopt; " + PROGRAM])
def test_every_program_is_written_to_the_chosen_folder(tmp_path: Path, order: str) -> None:
    # lopt imported before or after jax started: either way even a millisecond compile is cached
    folder, min_seconds = run(order, LOPT_COMPILATION_CACHE=str(tmp_path))
    assert (folder, min_seconds) == (str(tmp_path), 0.0)
    assert any(p.name.endswith("-cache") for p in tmp_path.iterdir())


def test_default_folder_and_off(tmp_path: Path) -> None:
    folder, _ = run("import lopt", XDG_CACHE_HOME=str(tmp_path))
    assert folder == str(tmp_path / "lopt" / "jax")
    folder, _ = run("import lopt; " + PROGRAM, LOPT_COMPILATION_CACHE="off", XDG_CACHE_HOME=str(tmp_path))
    assert folder is None and not (tmp_path / "lopt").exists()
