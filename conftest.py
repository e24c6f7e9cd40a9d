"""Scheduling of ``make test`` (pytest-xdist, ``--dist loadgroup``).

Every test file is one xdist group (as ``--dist loadfile``: a module's fixtures are built once), except the
notebooks that read what another notebook wrote to ``$LOPT_OUTPUT_DIR``: notebook 05 writes the MLP
optimizers that 06 and 07 read, notebook 10 the GRUs that 11-14 read. Each such chain is one group, so it runs
on one worker in file order. (Notebook 08 trains its own optimizers: it runs on whichever worker is free, which
took about 230 s off the longest worker's time with an empty compilation cache.) This file sits at the repository
root so that its hook sees the notebook items as well as those under ``tests/``.
"""

from __future__ import annotations

import re

import pytest

CHAINS = {"05-07": range(5, 8), "10-14": range(10, 15)}


def group_of(path: str) -> str:
    """The xdist group of a test file: its notebook chain, else the file itself."""
    match = re.match(r"(\d\d)_.*\.ipynb$", path.rsplit("/", 1)[-1])
    if match:
        for name, numbers in CHAINS.items():
            if int(match.group(1)) in numbers:
                return f"notebooks-{name}"
    return path


def _set_group(item: pytest.Item, group: str) -> None:
    """Append ``@group`` to the item's node id: xdist's ``loadgroup`` scheduler reads the group from it. (xdist's
    own hook does this from ``xdist_group`` marks by setting ``item._nodeid``, which pytest >= 9.2 no longer reads:
    its node ids live in ``item._id``.)"""
    nodeid = f"{item.nodeid}@{group}"
    if hasattr(item, "_id"):
        from _pytest.nodeid import coerce_node_id

        item._id = coerce_node_id(nodeid)
    else:
        item._nodeid = nodeid


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not getattr(config.option, "loadgroup", False):  # set in xdist's workers under --dist loadgroup
        return
    for item in items:
        _set_group(item, group_of(item.nodeid.split("::", 1)[0]))
