"""Variable truncation lengths: bucketed traced programs versus one compiled chunk (``lopt.chunked``).

Metz et al. 2019 sec. 4.3 grow the truncation length linearly over outer-training and jitter it by
+-20 %, so nearly every outer step has a new length. The traced path of ``lopt.estimators``
compiles one program per bucketed length (``lopt.truncation.bucket``, < 12.5 % padding); with
``chunk=K`` the truncation is a host loop over one compiled chunk of K steps (a forward kernel and a
checkpointed VJP kernel, whatever the lengths), stopped at the episode end.

Both sides train the same ``lopt.estimators.Merged`` estimator (MLP learned optimizer, a small
Fashion-MNIST CNN, ``truncation.curriculum(start, end, steps)`` lengths, horizon 100) with
``lopt.outer.train`` from the same theta and key, so they draw the same lengths; "before" is
``chunk=None``, "after" ``chunk=K``, one after the other in one process (persistent compilation
cache off). Reported per side: compilations (XLA backend compiles during the run, all of them and
those over 1 s, with their total seconds), total wall time, mean seconds per outer step excluding
the first, and the steady-state seconds per outer step at a fixed length after a warm-up call.

    .venv/bin/python benchmarks/truncations.py            # 15-45 min on 2 cores (the traced side compiles ~20 programs)
    .venv/bin/python benchmarks/truncations.py --quick    # smoke run (not for reporting)

Writes a table to stdout and JSON to ``benchmarks/results/truncations.json``
(``truncations_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import os

os.environ.setdefault("LOPT_COMPILATION_CACHE", "off")  # compile times are part of what we measure

import argparse
import json
import time
from pathlib import Path

import jax
import jax.monitoring
import numpy as np
import optax

from lopt import estimators, outer, tasks, truncation
from lopt.learned import MLPOptimizer
from machine import describe  # benchmarks/machine.py

RESULTS = Path(__file__).resolve().parent / "results"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny run: smoke test of the script")
    p.add_argument("--pairs", type=int, default=2, help="antithetic pairs (Merged num_tasks)")
    p.add_argument("--steps", type=int, default=24, help="outer steps of the curriculum run")
    p.add_argument("--start", type=int, default=10, help="curriculum: first truncation length")
    p.add_argument("--end", type=int, default=100, help="curriculum: last truncation length (reached at --steps)")
    p.add_argument("--horizon", type=int, default=100)
    p.add_argument("--chunk", type=int, default=10, help="steps per compiled chunk (after)")
    p.add_argument("--fixed-length", type=int, default=50, help="truncation length of the steady-state measurement")
    p.add_argument("--fixed-steps", type=int, default=4, help="timed outer steps at the fixed length (after a warm-up step)")
    p.add_argument("--hidden", type=int, default=32, help="hidden units of the MLP learned optimizer")
    p.add_argument("--channels", type=int, nargs="+", default=[16, 16, 16], help="CNN channels")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-examples", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-3, help="outer Adam learning rate")
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.start, args.end, args.horizon, args.chunk = 5, 3, 12, 12, 4
        args.fixed_length, args.fixed_steps, args.hidden, args.channels, args.max_examples = 8, 2, 8, [4, 4], 500
    if min(args.pairs, args.steps, args.start, args.end, args.horizon, args.chunk, args.fixed_length, args.fixed_steps) < 1:
        p.error("counts and lengths must be >= 1")
    if args.out is None:
        args.out = RESULTS / ("truncations_quick.json" if args.quick else "truncations.json")
    return args


class Compiles:
    """XLA backend compilations (count, seconds) seen while active."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, duration: float, **_) -> None:
        if self.active and event == COMPILE_EVENT:
            self.durations.append(float(duration))

    def __enter__(self) -> "Compiles":
        self.durations, self.active = [], True
        return self

    def __exit__(self, *exc) -> None:
        self.active = False

    def summary(self) -> dict:
        d = self.durations
        return {"compiles": len(d), "compile_s": sum(d), "compiles_over_1s": sum(x > 1.0 for x in d),
                "compile_over_1s_s": sum(x for x in d if x > 1.0)}


def estimator_programs(est) -> int:
    """The estimator's own compiled programs: outer steps and per-length estimates (before), chunk
    kernels, particles/combine and the outer step's finish (after)."""
    fns = list(getattr(est, "_outer_cache", {}).values()) + list(est._compiled.values())
    if est.chunked is not None:
        fns += [est.chunked.forward, est.chunked.backward, *getattr(est, "_chunk_fns", ())]
    return sum(f._cache_size() for f in fns)


def run_side(name, args, family, cfg, theta0, compiles) -> dict:
    chunk = None if name == "before" else args.chunk
    outer_opt = optax.adam(args.lr)
    key = jax.random.PRNGKey(1)
    sched = truncation.curriculum(args.start, args.end, args.steps)
    est = estimators.Merged(cfg, family, args.horizon, sched, args.pairs, chunk=chunk)
    stamps: list[float] = []

    def track(theta, grad, info):  # called once per outer step, after its results reached the host
        stamps.append(time.perf_counter())
        return {}

    with compiles:
        t0 = time.perf_counter()
        res = outer.train(est, theta0, outer_opt, args.steps, key, progress=False, track=track)
        jax.block_until_ready(res.theta)
        total = time.perf_counter() - t0
    per_step = np.diff([t0, *stamps])
    out = {"chunk": chunk, "total_s": total, "first_step_s": float(per_step[0]),
           "mean_step_s_excluding_first": float(np.mean(per_step[1:])) if len(per_step) > 1 else None,
           "step_s": per_step.tolist(), "lengths": res.history["length"].astype(int).tolist(),
           "distinct_lengths": len(set(res.history["length"].tolist())), "loss": res.history["loss"].tolist(),
           "skipped": res.num_skipped, "estimator_programs": estimator_programs(est), **compiles.summary()}

    # steady state: a fresh estimator at one fixed length, a warm-up call, then timed steps
    fixed = estimators.Merged(cfg, family, args.horizon, args.fixed_length, args.pairs, chunk=chunk)
    t0 = time.perf_counter()
    outer.train(fixed, theta0, outer_opt, 1, key, progress=False)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = outer.train(fixed, theta0, outer_opt, args.fixed_steps, jax.random.PRNGKey(2), progress=False)
    jax.block_until_ready(res.theta)
    out.update(fixed_length=args.fixed_length, fixed_warmup_s=warm,
               fixed_step_s=(time.perf_counter() - t0) / args.fixed_steps)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    info = describe()
    print(f"machine: {info['processor']}, {info['cpu_count']} CPU cores, jax {info['jax']} {info['jax_devices']}, "
          f"load average {info['load_average_1min_at_start']:.2f} (other processes share the cores: timings are noisy)")
    task = tasks.fashion_mnist_task(model="cnn", hidden=tuple(args.channels), batch_size=args.batch_size,
                                    max_examples=args.max_examples)
    family = tasks.SingleTask(task)
    cfg = MLPOptimizer(hidden=args.hidden)
    theta0 = cfg.init(jax.random.PRNGKey(0))
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(task.init(jax.random.PRNGKey(0))))
    print(f"task: Fashion-MNIST CNN {'-'.join(map(str, args.channels))} ({num_params} parameters), batch "
          f"{args.batch_size}; MLPOptimizer(hidden={args.hidden}); Merged, {args.pairs} pairs, horizon {args.horizon}, "
          f"curriculum({args.start}, {args.end}, {args.steps}); {args.steps} outer steps; chunk {args.chunk}")
    compiles = Compiles()
    results = {}
    for name in ("before", "after"):
        results[name] = run_side(name, args, family, cfg, theta0, compiles)
        r = results[name]
        print(f"{name}: {r['total_s']:.1f} s, {r['compiles']} compiles ({r['compile_s']:.1f} s; "
              f"{r['compiles_over_1s']} over 1 s), {r['distinct_lengths']} distinct lengths", flush=True)
    b, a = results["before"], results["after"]
    results["same_lengths"] = b["lengths"] == a["lengths"]
    results["max_abs_loss_difference"] = float(np.max(np.abs(np.subtract(b["loss"], a["loss"]))))
    info["load_average_1min_at_end"] = os.getloadavg()[0]

    rows = [("compiles (all / over 1 s)", lambda r: f"{r['compiles']} / {r['compiles_over_1s']}"),
            ("compile seconds", lambda r: f"{r['compile_s']:.1f}"),
            ("estimator programs", lambda r: f"{r['estimator_programs']}"),
            (f"total wall s ({args.steps} outer steps)", lambda r: f"{r['total_s']:.1f}"),
            ("mean s / outer step, excl. first", lambda r: f"{r['mean_step_s_excluding_first']:.2f}"),
            (f"steady s / outer step at length {args.fixed_length}", lambda r: f"{r['fixed_step_s']:.2f}")]
    print(f"\n{'':42s} {'before':>12s} {'after':>12s}")
    for label, fmt in rows:
        print(f"{label:42s} {fmt(b):>12s} {fmt(a):>12s}")
    print(f"lengths {min(b['lengths'])}..{max(b['lengths'])}, same on both sides: {results['same_lengths']}; "
          f"max |loss difference| {results['max_abs_loss_difference']:.2e}")
    print(f"load average {info['load_average_1min_at_start']:.2f} -> {info['load_average_1min_at_end']:.2f} on "
          f"{info['cpu_count']} cores")
    out = {"machine": info, "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "task": {"channels": args.channels, "num_params": num_params}, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
