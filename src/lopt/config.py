"""Profiles and ``params.yaml``: load a notebook's settings, validate them, fail with clear errors.

``params.yaml`` holds ``profile: cpu`` and one section per notebook (``nb01``, ``nb09``, ...), each
with a block per profile (``smoke``, ``cpu``, ``gpu``).  A notebook asks for its section::

    cfg = config.load("nb01", profile)      # profile from papermill or $LOPT_PROFILE
    cfg.num_steps                           # attribute access to the profile's values

Outputs (figures, metrics, learned weights) go below :func:`output_dir`, the repository root
unless ``$LOPT_OUTPUT_DIR`` says otherwise (the test suite sends smoke-profile outputs elsewhere
so that they never overwrite the committed ``cpu`` results).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

PROFILES = ("smoke", "cpu", "gpu")
DEFAULT_PROFILE = "cpu"
PROFILE_ENV = "LOPT_PROFILE"
OUTPUT_ENV = "LOPT_OUTPUT_DIR"

# Integers must be >= 1 (step counts, sizes, sample counts) except for these names.
_INT_MAY_BE_ZERO = re.compile(r"(^|_)(seed|offset|index|start)s?($|_)")
# Floats under these names must be > 0.
_POSITIVE_FLOAT = re.compile(r"(^|_)(lr|learning_rate|sigma|eps|scale|temperature)s?($|_)")


class ConfigError(ValueError):
    """A bad profile, section or value in ``params.yaml`` (the message names the key and the fix)."""


class Params(dict):
    """A dict of one notebook's settings with attribute access (``cfg.num_steps``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"no parameter {name!r}; this section has: {', '.join(sorted(self))}"
            ) from None


def repo_root() -> Path:
    """The repository root: the nearest folder above the working directory holding
    ``params.yaml`` and ``dvc.yaml``, else the checkout this package is installed from."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file() and (folder / "dvc.yaml").is_file():
            return folder
    return Path(__file__).resolve().parents[2]


def output_dir() -> Path:
    """Where figures, metrics and learned weights are written ($LOPT_OUTPUT_DIR or the root)."""
    env = os.environ.get(OUTPUT_ENV)
    return Path(env).resolve() if env else repo_root()


def resolve_profile(profile: str | None = None) -> str:
    """The profile to use: the argument, else ``$LOPT_PROFILE``, else ``cpu``; validated."""
    name = profile or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ConfigError(
            f"unknown profile {name!r} (from {'argument' if profile else PROFILE_ENV}); "
            f"allowed values: {', '.join(PROFILES)}"
        )
    return name


def read_params(path: str | Path | None = None) -> dict:
    """The raw contents of ``params.yaml``."""
    path = Path(path) if path else repo_root() / "params.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found: run from inside the repository (or pass path=)")
    with open(path) as f:
        return yaml.safe_load(f) or {}


def validate(section: str, values: Mapping[str, Any]) -> None:
    """Check the values of one section: counts are integers >= 1, rates and scales are > 0."""

    def check(key: str, value: Any) -> None:
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, (list, tuple)):
            for v in value:
                check(key, v)
            return
        if isinstance(value, dict):
            for k, v in value.items():
                check(f"{key}.{k}", v)
            return
        leaf = key.rsplit(".", 1)[-1]
        if isinstance(value, int):
            if value < 1 and not _INT_MAY_BE_ZERO.search(leaf):
                raise ConfigError(
                    f"{section}.{key} = {value}: counts and sizes must be integers >= 1"
                )
        elif isinstance(value, float):
            if value != value:
                raise ConfigError(f"{section}.{key} is NaN")
            if value <= 0 and _POSITIVE_FLOAT.search(leaf):
                raise ConfigError(f"{section}.{key} = {value}: must be > 0")

    for key, value in values.items():
        check(key, value)


def load(
    section: str,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    path: str | Path | None = None,
) -> Params:
    """One notebook's settings for a profile, with optional overrides, validated.

    Raises :class:`ConfigError` naming the key and the allowed values for an unknown profile,
    an unknown section, an override of a key the section does not have, or a bad value.
    """
    profile = resolve_profile(profile)
    params = read_params(path)
    sections = sorted(k for k, v in params.items() if isinstance(v, dict))
    if section not in params or not isinstance(params[section], dict):
        raise ConfigError(
            f"unknown notebook section {section!r} in params.yaml; allowed values: {', '.join(sections)}"
        )
    block = params[section]
    if profile not in block:
        raise ConfigError(
            f"section {section!r} has no profile {profile!r}; allowed values: {', '.join(block)}"
        )
    values = Params(block[profile] or {})
    for key, value in (overrides or {}).items():
        if key not in values:
            raise ConfigError(
                f"unknown parameter {key!r} for {section}; allowed keys: {', '.join(sorted(values))}"
            )
        values[key] = value
    validate(section, values)
    values["profile"] = profile
    return values


def strict(profile: str) -> bool:
    """Whether claims are asserted at this profile (``cpu`` and ``gpu``; ``smoke`` only runs)."""
    return resolve_profile(profile) != "smoke"
