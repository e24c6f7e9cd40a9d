"""Tracing and lowering time of the library's larger programs: with the persistent compilation cache warm (a second
``make test`` or ``dvc repro``), XLA compilation is skipped and what remains per program is JAX tracing it
(Python) and lowering it to StableHLO; on the smoke profile that is most of a notebook's time.

Each program is traced and lowered in a fresh process (JAX caches traces within a process), ``--repeats`` times,
alternating programs; compilation is not timed here. Programs, on notebook 08's smoke CNN task (3 classes of 7x7
Fashion-MNIST, channels 4-4-4) with the MLP learned optimizer (hidden 32):

- ``outer_merged_schedule``: one fused outer step of ``lopt.outer.train`` with ``Merged`` (2 pairs) and the
  jittered truncation curriculum (notebook 08's paper configuration);
- ``outer_pes_constant``: the ``lax.scan`` of 16 fused outer steps with ``PES`` at a constant truncation of 5;
- ``slice_unroll``: ``lopt.landscape`` evaluating a 10-step unroll's outer-loss at 8 points (notebook 02).

``--src A B`` compares library checkouts (their ``src`` folders) in one interleaved run. Writes
``results/tracing.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROGRAMS = ("outer_merged_schedule", "outer_pes_constant", "slice_unroll")


def _one(program: str) -> float:
    """Seconds to trace and lower ``program`` once, in this (fresh) process."""
    import jax
    import jax.numpy as jnp

    from lopt import ablations, classsplit, estimators, landscape, outer, truncation
    from lopt.learned import MLPOptimizer

    family, _ = classsplit.class_split([4, 6, 2, 7, 3], [5, 9, 0, 8, 1], 3, {"train": 16, "valid": 16, "test": 16}, 7,
                                       model="cnn", hidden=(4, 4, 4), strides=(1, 2, 2), batch_size=8,
                                       loss_cap_factor=1.5)
    lo = MLPOptimizer(hidden=32)
    key = jax.random.PRNGKey(0)
    theta = lo.init_linear(key, 0.03, feature="grad", noise=0.1)
    if program == "slice_unroll":
        f = landscape.outer_loss_fn(lo, family.sample(key), 10, key)
        d = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), theta)
        start = time.perf_counter()
        landscape._slice_values.lower(f, theta, [d], jnp.linspace(-1.0, 1.0, 8)[:, None], 4)
        return time.perf_counter() - start
    opt = outer.meta_optimizer(0.003, clip_value=5.0)
    if program == "outer_merged_schedule":
        schedule = truncation.curriculum(2, 5, 4, 0.2)
        est = ablations.setup("merged (paper)", family, 10, schedule, 6, 2, 4, {"short": 1, "medium": 4, "long": 10},
                              1.0, 32).estimator
        chunk, size = 1, 6
    else:
        est = estimators.PES(lo, family, horizon=10, length=5, num_tasks=2)
        chunk, size = outer.SCAN_STEPS, 5
    state = est.init(key, theta)
    run = outer._fused(est, opt, chunk, False)
    start = time.perf_counter()
    run.lower(theta, opt.init(theta), state, key, 0, 1, size=size, active=size)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--programs", nargs="+", default=list(PROGRAMS), choices=PROGRAMS)
    parser.add_argument("--src", nargs="+", type=Path, default=[Path(__file__).resolve().parents[1] / "src"],
                        help="library source folders to compare (default: this checkout's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tracing.json")
    parser.add_argument("--one", choices=PROGRAMS, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps({"seconds": _one(args.one)}))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from machine import describe

    machine = describe()
    seconds: dict[str, dict[str, list[float]]] = {str(s): {p: [] for p in args.programs} for s in args.src}
    for r in range(args.repeats):
        for p in args.programs:
            for src in args.src:
                env = {**os.environ, "LOPT_COMPILATION_CACHE": "off", "JAX_PLATFORMS": "cpu",
                       "PYTHONPATH": str(src.resolve())}
                out = subprocess.run([sys.executable, __file__, "--one", p], env=env, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{p} ({src}) failed:\n{out.stderr[-3000:]}")
                seconds[str(src)][p].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
                print(f"repeat {r + 1}/{args.repeats} {p} {src}: {seconds[str(src)][p][-1]:.2f} s", flush=True)
    git = {str(s): subprocess.run(["git", "-C", str(s), "log", "-1", "--format=%H"], capture_output=True,
                                  text=True).stdout.strip() for s in args.src}
    result = {"machine": machine, "commits": git, "seconds": seconds,
              "min": {s: {p: min(v) for p, v in d.items()} for s, d in seconds.items()},
              "load_average_1min_at_end": os.getloadavg()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["min"]))


if __name__ == "__main__":
    main()
