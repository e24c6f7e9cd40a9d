"""A typed schema of ``params.yaml``: one pydantic model per notebook section, describing one profile block.

Each key has a type and a range from what the notebook does with it (counts are integers >= 1, rates finite and
> 0, momentum-like decays in [0, 1), names one of the values the library accepts, ...); unknown keys are rejected
with a close-match hint, missing ones reported; cross-field rules catch what a notebook would otherwise fail on
late (a truncation that does not divide the horizon, ``eval_every`` that does not divide a run).
``make repro`` runs ``python -m lopt.schema`` on the whole file before DVC touches any output::

    validate_block("nb03", "cpu", values)  # the validated values (plain Python, the input's shape) or SchemaError
    validate_file("params.yaml")           # every block of every section; one SchemaError listing every problem
    validate_params(params)                # the same on the contents, already read
    python -m lopt.schema [params.yaml]    # exit 0 (valid) or 2 (errors on stderr)

:func:`read_yaml` reads numbers as YAML 1.2 does (PyYAML's YAML 1.1 rules read ``1e-3`` and ``1e3`` as strings);
as :func:`lopt.config.load` still reads the file with ``yaml.safe_load``, :func:`validate_file` flags such numbers.

Modules: :mod:`.values` (value types, shared sub-models), :mod:`.metz` (nb01-08), :mod:`.maheswaranathan`
(nb09-14), :mod:`.thesis` (nb15-17), :mod:`.sections` (the table), :mod:`.validate` (reading, messages, checks).
"""

from .sections import SECTIONS
from .validate import Loader, main, read_yaml, validate_block, validate_file, validate_params
from .values import PROFILES, SchemaError

__all__ = ["SECTIONS", "PROFILES", "SchemaError", "Loader", "read_yaml", "validate_block", "validate_file",
           "validate_params", "main"]
