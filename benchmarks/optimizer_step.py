"""Per-step cost of the MLP learned optimizer versus Adam on the same tasks, in one process.

Metz et al. 2019 sec. 4 / App. G compare optimizers in wall-clock: a learned optimizer's update
costs more than Adam's (a small MLP per parameter), so a fair comparison needs its per-step cost.
Here every optimizer trains the same Fashion-MNIST tasks (by default a CNN with 32 and 64 channels,
19k parameters, and MLPs 784-32-10, 784-128-10, 784-512-10 ReLU, 25k-407k parameters; minibatches
of 128): a ``jax.jit`` of a ``lax.scan`` of N inner steps (``lopt.unroll.unroll``: minibatch
sampling, loss and gradient, update) is compiled and warmed up for every (task, optimizer), then
the timed repeats are interleaved (repeat r runs every (task, optimizer) once, so load changes hit
all of them alike) with ``block_until_ready``; we report the median ms per step, the spread over
repeats (the noise) and the ratio to optax Adam on the same task. SGD gives the floor (loss +
gradient + sampling, almost no update cost). A PyTorch Adam step on the equivalent ``torch.nn``
MLP (same data, same batch size; eager, one thread by default) is a wall-clock reference.

    .venv/bin/python benchmarks/optimizer_step.py            # ~5 min on 2 cores
    .venv/bin/python benchmarks/optimizer_step.py --quick    # a few seconds (not for reporting)

Writes a table to stdout and JSON to ``benchmarks/results/optimizer_step.json``
(``optimizer_step_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import optimizers, tasks, unroll
from lopt.learned import MLPOptimizer
from machine import describe  # benchmarks/machine.py

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_TASKS = ("cnn-32-64", "mlp-32", "mlp-128", "mlp-512")


def parse_task(name: str) -> tuple[str, tuple[int, ...]]:
    """``"mlp-128"`` -> ("mlp", (128,)); ``"cnn-32-64"`` -> ("cnn", (32, 64))."""
    model, *sizes = name.split("-")
    if model not in ("mlp", "cnn") or not sizes or not all(s.isdigit() and int(s) > 0 for s in sizes):
        raise ValueError(f"bad task {name!r}: expected mlp-<hidden>[-<hidden>...] or cnn-<channels>[-<channels>...]")
    return model, tuple(int(s) for s in sizes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny run (a few seconds): smoke test of the script")
    p.add_argument("--steps", type=int, default=200, help="inner steps per timed lax.scan (default 200)")
    p.add_argument("--repeats", type=int, default=15, help="timed repeats per optimizer (default 15)")
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS),
                   help="tasks as MODEL-SIZES: mlp-128 (hidden sizes of the MLP, e.g. mlp-128-64) or cnn-32-64 "
                        f"(channels of the conv layers); default {' '.join(DEFAULT_TASKS)}")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch.set_num_threads (default 1: on a shared 2-core machine torch's 2 OpenMP threads "
                        "measured 1.5-90 ms/step, one thread a steady ~1.1 ms/step); 0 keeps torch's own choice")
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 20, 3
    for name in args.tasks:
        try:
            parse_task(name)
        except ValueError as e:
            p.error(str(e))
    if args.steps < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be >= 1")
    if args.torch_threads < 0:
        p.error("--torch-threads must be >= 0")
    if args.out is None:
        args.out = RESULTS / ("optimizer_step_quick.json" if args.quick else "optimizer_step.json")
    return args


def _torch_info() -> dict:
    import torch

    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def jax_optimizers(key: jax.Array) -> dict:
    lopt_mlp = MLPOptimizer()
    return {
        "sgd (floor)": optimizers.sgd(0.1),
        "optax.adam": optax.adam(1e-3),
        "lopt.optimizers.adam": optimizers.adam(1e-3),
        "MLPOptimizer (learned)": lopt_mlp.opt_fn(lopt_mlp.init(key)),
    }


def compile_jax(task: tasks.Task, opt, steps: int, key: jax.Array):
    """Compile (timed) and warm up a scan of ``steps`` inner steps; returns (timed fn, compile seconds)."""
    k_init, k_run = jax.random.split(key)
    state = unroll.init_state(task, opt, k_init)
    run = jax.jit(lambda s, k: unroll.unroll(task, opt, s, k, steps))
    t0 = time.perf_counter()
    jax.block_until_ready(run(state, k_run))  # compile + first run
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(run(state, k_run))  # warm-up
    return (lambda: jax.block_until_ready(run(state, k_run))), compile_s


def compile_torch(x: np.ndarray, y: np.ndarray, sizes: list[int], batch_size: int, steps: int):
    """torch.optim.Adam on the equivalent torch MLP: sampling, forward, backward, step (warmed up)."""
    import torch

    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for m, n in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(m, n), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xs = torch.from_numpy(np.array(x.reshape(len(x), -1)))  # a writable copy
    ys = torch.from_numpy(y.astype(np.int64))
    gen = torch.Generator().manual_seed(0)

    def run() -> None:
        for _ in range(steps):
            idx = torch.randint(0, len(xs), (batch_size,), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(xs[idx].float() / 255.0), ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    run()  # warm-up
    return run


def summarize(times: list[float], steps: int) -> dict:
    ms = [1e3 * t / steps for t in times]
    return {
        "ms_per_step_median": statistics.median(ms),
        "ms_per_step_min": min(ms),
        "ms_per_step_max": max(ms),
        "repeats": len(ms),
        "steps_per_repeat": steps,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    info = describe(**_torch_info())
    print(f"machine: {info['processor']}, {info['cpu_count']} CPU cores, jax devices {info['jax_devices']}, "
          f"load average {info['load_average_1min_at_start']:.2f} (other processes share the cores: timings are noisy)")
    key = jax.random.PRNGKey(0)
    fns, compile_s, task_info = {}, {}, {}
    for tname in args.tasks:
        model, hidden = parse_task(tname)
        task = tasks.fashion_mnist_task(model, hidden=hidden, batch_size=args.batch_size,
                                        max_examples=2000 if args.quick else None)
        num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(task.init(jax.random.PRNGKey(0))))
        sizes = [784, *hidden, 10] if model == "mlp" else [1, *hidden, 10]
        task_info[tname] = {"model": model, "sizes": sizes, "num_params": num_params, "batch_size": args.batch_size}
        print(f"task {tname}: Fashion-MNIST {model.upper()} {'-'.join(map(str, sizes))} ({num_params} parameters)")
        for oname, opt in jax_optimizers(key).items():
            fns[tname, oname], compile_s[tname, oname] = compile_jax(task, opt, args.steps, key)
        if model == "mlp" and not args.no_torch:
            x, y = np.asarray(task.images["train"]), np.asarray(task.labels["train"])
            fns[tname, "torch.optim.Adam"] = compile_torch(x, y, sizes, args.batch_size, args.steps)
    print(f"batch {args.batch_size}; {args.steps} steps per lax.scan, {args.repeats} timed repeats after compile and "
          f"warm-up, interleaved over {len(fns)} (task, optimizer) pairs")

    times: dict = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)

    results: dict = {t: {} for t in args.tasks}
    summary: dict = {}
    for (tname, oname), ts in times.items():
        results[tname][oname] = summarize(ts, args.steps)
        if (tname, oname) in compile_s:
            results[tname][oname]["compile_and_first_run_s"] = compile_s[tname, oname]
    for tname, res in results.items():
        adam = res["optax.adam"]["ms_per_step_median"]
        floor = res["sgd (floor)"]["ms_per_step_median"]
        for r in res.values():
            r["ratio_to_optax_adam"] = r["ms_per_step_median"] / adam
        learned = res["MLPOptimizer (learned)"]["ms_per_step_median"]
        n = task_info[tname]["num_params"]
        summary[tname] = {
            "learned_over_adam": learned / adam,
            "learned_update_overhead_ms": learned - floor,
            "adam_update_overhead_ms": adam - floor,
            "learned_update_overhead_ns_per_param": 1e6 * (learned - floor) / n,
        }
    info["load_average_1min_at_end"] = os.getloadavg()[0]

    for tname, res in results.items():
        print(f"\n{tname} ({task_info[tname]['num_params']} parameters)")
        print(f"{'optimizer':24s} {'ms/step':>9s} {'min':>8s} {'max':>8s} {'x Adam':>7s}")
        for name, r in res.items():
            print(f"{name:24s} {r['ms_per_step_median']:9.3f} {r['ms_per_step_min']:8.3f} {r['ms_per_step_max']:8.3f} "
                  f"{r['ratio_to_optax_adam']:7.2f}")
    print()
    for tname, sm in summary.items():
        print(f"{tname:10s} learned / optax Adam = {sm['learned_over_adam']:.2f}x per step; update cost above the SGD "
              f"floor: learned {sm['learned_update_overhead_ms']:.3f} ms "
              f"({sm['learned_update_overhead_ns_per_param']:.1f} ns/param), Adam {sm['adam_update_overhead_ms']:.3f} ms")
    print(f"load average {info['load_average_1min_at_start']:.2f} -> {info['load_average_1min_at_end']:.2f} "
          f"on {info['cpu_count']} cores; min..max over repeats shows the noise")

    out = {"machine": info, "tasks": task_info, "steps": args.steps, "quick": args.quick, "results": results,
           "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
