"""lopt: learned optimizers, the pathologies of training them, and what they learn.

Importing ``lopt`` switches on JAX's persistent compilation cache, so that a second ``make test``, ``dvc repro``
or notebook run loads its compiled programs from disk instead of compiling them again (most of the test suite's
time on 2 cores is XLA compilation).  A cached program is the same executable, so results do not change.  The
folder is ``$LOPT_COMPILATION_CACHE`` (``off`` switches the cache off), else ``$XDG_CACHE_HOME/lopt/jax``
(``~/.cache/lopt/jax``); an explicit ``$JAX_COMPILATION_CACHE_DIR`` wins over both.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__version__ = "0.1.0"

CACHE_ENV = "LOPT_COMPILATION_CACHE"
# Every program is cached, however fast it compiles (JAX's default caches only those over 1 s). The small ones are
# many: eager operations on new shapes, initialisations, metrics; reading one back costs a few milliseconds, compiling
# it tens. With 0.2 s here a second `make test` took 260 s, with 0 191 s (same machine, back to back).
_MIN_COMPILE_SECONDS = 0.0


def compilation_cache_dir() -> Path | None:
    """The persistent compilation cache's folder, or ``None`` when ``$LOPT_COMPILATION_CACHE=off``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in ("off", "0", "false", "no", "none"):
        return None
    if value:
        return Path(value).expanduser()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lopt" / "jax"


def _enable_compilation_cache() -> None:
    folder = compilation_cache_dir()
    if folder is None:
        return
    settings = {"jax_compilation_cache_dir": str(folder),
                "jax_persistent_cache_min_compile_time_secs": _MIN_COMPILE_SECONDS}
    if "jax" in sys.modules:  # jax already read its environment: set its config directly
        import jax

        if jax.config.jax_compilation_cache_dir is None or os.environ.get(CACHE_ENV):
            for name, value in settings.items():
                jax.config.update(name, value)
    else:
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(folder))
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(_MIN_COMPILE_SECONDS))


_enable_compilation_cache()
