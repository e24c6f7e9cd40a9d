"""Seconds per outer step of notebook 10's two-moons meta-training (Maheswaranathan et al. 2021, App. D.1).

The setting of notebook 10's ``two_moons`` task: a per-parameter GRU optimizer (``lopt.learned.GRUOptimizer``)
meta-trained by ``lopt.estimators.FullUnroll`` through 200-step unrolls of a tanh MLP on two moons, 4 problems
per outer step, with ``lopt.outer.train`` and notebook 10's meta-optimizer settings. Varied: the MLP's hidden
layers (3x16, the ``cpu`` profile's until it moved to the paper's 3x64, and 3x64) and rematerialisation of the
unroll (``remat``). Each configuration is timed as ``train(N + 2 steps) - train(2 steps)`` over N outer steps, after a first call that
compiles (its seconds reported; lopt's persistent compilation cache is switched off); configurations alternate
over repeats in one process so that load on the shared machine hits them alike.

    .venv/bin/python benchmarks/two_moons_meta_training.py           # ~5 min on 2 cores
    .venv/bin/python benchmarks/two_moons_meta_training.py --quick   # smoke run (not for reporting)

Writes a table to stdout and JSON to ``benchmarks/results/two_moons_meta_training.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("LOPT_COMPILATION_CACHE", "off")  # compile times are part of what we measure

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402  benchmarks/machine.py

from lopt import estimators, outer, tasks  # noqa: E402
from lopt.learned import GRUOptimizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# notebook 10's two-moons settings at `cpu` (params.yaml: nb10.cpu): GRU, scales, unroll, meta-optimizer
GRU = {"hidden": 16, "input_scale": 10.0, "output_scale": 0.1}
META = {"clip_value": 5.0, "l2": 1.0e-5, "decay_every": 500, "decay_factor": 0.8}
UNROLL, META_BATCH, META_LR = 200, 4, 0.001


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", nargs="+", default=["16x16x16", "64x64x64"], help="MLP hidden layers, e.g. 64x64x64")
    p.add_argument("--steps", type=int, default=10, help="timed outer steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="2 steps, 1 repeat, 3x8 only")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.hidden, args.steps, args.repeats = ["8x8x8"], 2, 1
    try:
        args.hidden = [tuple(int(x) for x in h.split("x")) for h in args.hidden]
    except ValueError:
        p.error(f"--hidden takes sizes like 64x64x64, got {args.hidden}")
    if args.steps < 1 or args.repeats < 1 or any(min(h) < 1 for h in args.hidden):
        p.error("--steps, --repeats and the hidden sizes must be >= 1")
    if args.out is None:
        args.out = RESULTS / ("two_moons_meta_training_quick.json" if args.quick else "two_moons_meta_training.json")
    return args


def configuration(hidden: tuple[int, ...], remat: bool):
    family = tasks.TwoMoonsFamily(hidden=hidden)
    gru = GRUOptimizer(**GRU)
    est = estimators.FullUnroll(gru, family, UNROLL, META_BATCH, remat=remat)
    theta = gru.init(jax.random.PRNGKey(0))
    opt = outer.meta_optimizer(META_LR, **META)
    return lambda n: outer.train(est, theta, opt, n, jax.random.PRNGKey(1), progress=False)


def main(argv=None) -> None:
    args = parse(argv)
    info = describe()
    print(f"machine: {info['processor']}, {info['cpu_count']} cores, load {info['load_average_1min_at_start']:.2f}")
    configs = {(h, r): configuration(h, r) for h in args.hidden for r in (False, True)}
    first, times = {}, {k: [] for k in configs}
    for k, run in configs.items():
        t0 = time.perf_counter()
        run(2)
        first[k] = time.perf_counter() - t0
    for _ in range(args.repeats):
        for k, run in configs.items():
            t0 = time.perf_counter()
            run(2)
            t1 = time.perf_counter()
            run(args.steps + 2)
            times[k].append((time.perf_counter() - t1 - (t1 - t0)) / args.steps)
    rows = {}
    print(f"{'MLP':>10} {'remat':>6} {'s/outer step':>13} {'min..max':>14} {'first call s':>13}")
    for (h, r), ts in times.items():
        name = f"{'x'.join(map(str, h))}/{'remat' if r else 'plain'}"
        rows[name] = {"hidden": list(h), "remat": r, "s_per_outer_step_median": statistics.median(ts),
                      "s_per_outer_step": ts, "first_call_s": first[h, r]}
        print(f"{'x'.join(map(str, h)):>10} {str(r):>6} {statistics.median(ts):13.3f} "
              f"{min(ts):6.3f}..{max(ts):6.3f} {first[h, r]:13.1f}")
    out = {"machine": describe(load_average_1min_at_end=os.getloadavg()[0]),
           "config": {"gru": GRU, "meta": META, "unroll": UNROLL, "meta_batch": META_BATCH, "meta_lr": META_LR,
                      "steps": args.steps, "repeats": args.repeats, "quick": args.quick},
           "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
