"""Profiles and ``params.yaml``: load a notebook's settings, validate them, fail with clear errors.

``params.yaml`` holds ``profile: cpu`` and one section per notebook (``nb01``, ``nb09``, ...), each
with a block per profile (``smoke``, ``cpu``, ``gpu``).  A notebook asks for its section::

    cfg = config.load("nb01", profile, seed)  # profile and seed from papermill (or $LOPT_PROFILE, $LOPT_SEED)
    cfg.num_steps                             # attribute access to the profile's values

The seed is one top-level ``seed: 0`` shared by every notebook (``dvc exp run -S seed=1`` reruns the
pipeline at another seed; ``benchmarks/claims_across_seeds.py`` runs several).  Every value is checked
against the typed schema of :mod:`lopt.schema` (types, ranges, allowed names, unknown keys rejected) when a
notebook loads its section, and ``python -m lopt.config`` validates the whole file (every section at every
profile, every error listed) before ``make repro`` lets DVC touch any output, so a bad value never deletes
committed figures.  The file is read with YAML 1.2 numbers (``1e-3`` is a number, not a string).

Outputs (figures, metrics, learned weights) go below :func:`output_dir`: ``$LOPT_OUTPUT_DIR`` when set, else
the repository root for the committed profile (``params.yaml``'s ``profile``) and ``.outputs/<profile>/``
(ignored by git) for any other, so a notebook run at ``smoke`` outside DVC never overwrites the committed
results.  Learned weights are *read* from :func:`input_dir` (``$LOPT_INPUT_DIR``, else the repository root):
notebooks 06-07 and 11-14 find the committed weights of notebooks 05 and 10 wherever their outputs go.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

PROFILES = ("smoke", "cpu", "gpu")
DEFAULT_PROFILE = "cpu"
PROFILE_ENV = "LOPT_PROFILE"
SEED_ENV = "LOPT_SEED"
OUTPUT_ENV = "LOPT_OUTPUT_DIR"
INPUT_ENV = "LOPT_INPUT_DIR"
OTHER_PROFILES_DIR = ".outputs"

_active: dict[str, str | None] = {"profile": None}  # the profile of the last load() (a notebook's own)


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
    """Where figures, metrics and learned weights are written: $LOPT_OUTPUT_DIR, else the repository root when
    the notebook runs at the committed profile (or loaded none), else ``.outputs/<profile>`` below the root."""
    env = os.environ.get(OUTPUT_ENV)
    if env:
        return Path(env).resolve()
    root, profile = repo_root(), _active["profile"]
    if profile is None or profile == _committed_profile(root):
        return root
    return root / OTHER_PROFILES_DIR / profile


def input_dir() -> Path:
    """Where learned weights written by other notebooks are read from: $LOPT_INPUT_DIR, else the root."""
    env = os.environ.get(INPUT_ENV)
    return Path(env).resolve() if env else repo_root()


def checkpoint_path(name: str) -> Path:
    """``.checkpoints/<name>`` below :func:`output_dir` (ignored by git and DVC): a long run's checkpoint, kept while
    it runs so that a killed pipeline resumes it."""
    return output_dir() / ".checkpoints" / name


def learned_path(name: str) -> Path:
    """``data/learned/<name>`` below :func:`input_dir`: the weights notebooks 05 and 10 wrote."""
    return input_dir() / "data" / "learned" / name


def _committed_profile(root: Path) -> str | None:
    try:
        return read_params(root / "params.yaml").get("profile")
    except ConfigError:
        return None



def resolve_profile(profile: str | None = None) -> str:
    """The profile to use: the argument, else ``$LOPT_PROFILE``, else ``cpu``; validated."""
    name = profile or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ConfigError(
            f"unknown profile {name!r} (from {'argument' if profile else PROFILE_ENV}); "
            f"allowed values: {', '.join(PROFILES)}"
        )
    return name


def resolve_seed(seed: int | str | None = None, path: str | Path | None = None) -> int:
    """The seed to use: the argument, else ``$LOPT_SEED``, else ``params.yaml``'s top-level ``seed``."""
    source = "argument"
    if seed is None:
        seed, source = os.environ.get(SEED_ENV), SEED_ENV
    if seed is None:
        seed, source = read_params(path).get("seed", 0), "params.yaml: seed"
    if isinstance(seed, str) and seed.strip().lstrip("-").isdigit():
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed = {seed!r} (from {source}): must be an integer >= 0, e.g. seed: 0")
    return seed


def read_params(path: str | Path | None = None) -> dict:
    """The raw contents of ``params.yaml``."""
    path = Path(path) if path else repo_root() / "params.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found: run from inside the repository (or pass path=)")
    from .schema import read_yaml  # lazily: the schema imports modules that import this one

    try:
        return read_yaml(path)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None


def validate(section: str, profile: str, values: Mapping[str, Any]) -> Params:
    """The values of one profile block checked against :mod:`lopt.schema` (returned validated, same shape);
    raises :class:`ConfigError` listing every bad key with its value, what is allowed and the fix."""
    from .schema import SchemaError, validate_block

    try:
        return Params(validate_block(section, profile, values))
    except SchemaError as err:
        raise ConfigError(f"params.yaml: {err}") from None


def load(
    section: str,
    profile: str | None = None,
    seed: int | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    path: str | Path | None = None,
) -> Params:
    """One notebook's settings for a profile, with optional overrides, validated; ``cfg.seed`` is
    :func:`resolve_seed` (the notebooks' ``seed`` parameter).

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
    if "seed" in values:
        raise ConfigError(
            f"{section}.{profile}.seed: the seed is one top-level key of params.yaml (seed: 0), "
            "not a per-notebook value; remove it from the section"
        )
    for key, value in (overrides or {}).items():
        if key not in values:
            raise ConfigError(
                f"unknown parameter {key!r} for {section}; allowed keys: {', '.join(sorted(values))}"
            )
        values[key] = value
    values = validate(section, profile, values)
    values["profile"] = profile
    _active["profile"] = profile
    values["seed"] = resolve_seed(seed, path)
    return values


def _keys(tree: Any, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict):
        return {prefix}
    return set().union(*(_keys(v, f"{prefix}.{k}" if prefix else str(k)) for k, v in tree.items())) or {prefix}


def check_file(path: str | Path | None = None) -> list[str]:
    """Validate the whole ``params.yaml`` against :mod:`lopt.schema`: the active profile, the seed, every
    notebook section at every profile (same keys in each), every value.  Returns the sections; raises one
    :class:`ConfigError` listing every problem.  Cheap: ``make repro`` runs it before ``dvc repro`` removes any
    stage's outputs."""
    from .schema import SchemaError, validate_params

    params = read_params(path)
    where = f" in {path or 'params.yaml'}"
    try:
        sections = validate_params(params)
    except SchemaError as err:
        n = len(err.errors)
        raise ConfigError(f"{n} problem{'s' * (n > 1)}{where}:\n" + "\n".join(f"  - {e}" for e in err.errors)) from None
    for section in sections:
        keys = {p: _keys(params[section][p] or {}) for p in PROFILES}
        for p in PROFILES:
            diff = keys["cpu"] ^ keys[p]
            if diff:
                raise ConfigError(
                    f"section {section!r}: profiles 'cpu' and {p!r} differ in keys {sorted(diff)}{where}; "
                    "every profile needs the same keys"
                )
    return sections


def required_sections(dvc_yaml: str | Path | None = None) -> list[str]:
    """The params.yaml sections that ``dvc.yaml``'s stages read (``params:`` entries other than
    ``profile`` and ``seed``)."""
    path = Path(dvc_yaml) if dvc_yaml else repo_root() / "dvc.yaml"
    stages = yaml.safe_load(path.read_text()).get("stages", {})
    names = {p for st in stages.values() for p in st.get("params", []) if isinstance(p, str)}
    return sorted(names - {"profile", "seed"})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lopt.config [params.yaml]``: validate the file and the sections dvc.yaml needs."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    path = Path(args[0]) if args else repo_root() / "params.yaml"
    try:
        sections = check_file(path)
        missing = [s for s in required_sections() if s not in sections]
        if missing:
            raise ConfigError(f"{path}: sections {missing} are read by dvc.yaml's stages but missing; add them back")
    except ConfigError as err:
        print(f"params.yaml is not valid, nothing was run: {err}", file=sys.stderr)
        return 2
    print(f"{path.name}: valid ({len(sections)} sections, profile {read_params(path)['profile']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def strict(profile: str) -> bool:
    """Whether claims are asserted at this profile (``cpu`` and ``gpu``; ``smoke`` only runs)."""
    return resolve_profile(profile) != "smoke"
