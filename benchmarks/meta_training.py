"""Meta-training throughput: the library's estimators and ``lopt.outer.train`` versus a pure-JAX loop.

The reference is written from scratch here in the shape of learned_optimization's "no dependency"
tutorial: one jitted outer step (antithetic ES, PES or truncated backprop over ``vmap``-ed
truncated unrolls of ``num_tasks`` inner runs, then an optax Adam step on theta) called from a
Python loop that never waits for the device. Its learned optimizer is the per-parameter MLP of
``lopt.learned.MLPOptimizer`` (same features, normalisation, architecture and step rule: the two
start from the same theta), re-implemented here in plain JAX; only the task (a Fashion-MNIST MLP,
``lopt.tasks.fashion_mnist_task``: init, minibatch, loss) is shared. The reference skips what the
library adds on top: variable truncation lengths, non-finite checks and restarts, per-step
history, keys per outer step, checkpoints.

The library side is ``lopt.estimators.ES`` / ``PES`` / ``TruncatedBPTT`` with the same task,
optimizer, truncation length, number of tasks and sigma, trained by ``lopt.outer.train`` (a fresh
call per timed repeat, as a user would call it; no progress bar, no checkpoint).

Reference and library repeats alternate (ref, lib, ref, lib, ...) in one process so that load on
the shared machine hits both alike. Reported: outer steps per second (median over repeats, min..max),
the library/reference ratio (> 1: the library is faster), the seconds of the first call (compilation
+ one step; the persistent compilation cache of ``lopt`` is switched off) and, with ``--memory``, the
peak resident memory of a subprocess per configuration that compiles and runs a few steps.

    .venv/bin/python benchmarks/meta_training.py            # ~3 min on 2 cores
    .venv/bin/python benchmarks/meta_training.py --quick    # smoke run (not for reporting)

Writes a table to stdout and JSON to ``benchmarks/results/meta_training.json``
(``meta_training_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import os

os.environ.setdefault("LOPT_COMPILATION_CACHE", "off")  # compile times are part of what we measure

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import estimators, outer, tasks
from machine import describe  # benchmarks/machine.py
from lopt.learned import MLPOptimizer

RESULTS = Path(__file__).resolve().parent / "results"
ESTIMATORS = ("es", "pes", "tbptt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny run (a few seconds after compilation): smoke test")
    p.add_argument("--estimators", nargs="+", choices=ESTIMATORS, default=list(ESTIMATORS))
    p.add_argument("--tasks", type=int, default=8, help="inner runs per outer step (antithetic pairs for ES/PES)")
    p.add_argument("--length", type=int, default=10, help="truncation length (inner steps per outer step)")
    p.add_argument("--horizon", type=int, default=100, help="inner steps per run before a task restarts")
    p.add_argument("--hidden", type=int, nargs="+", default=[32], help="hidden sizes of the Fashion-MNIST MLP")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=16, help="outer steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per side and estimator")
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-3, help="outer Adam learning rate")
    p.add_argument("--memory", action="store_true",
                   help="also measure peak RSS in one subprocess per configuration (adds ~compile time x 6)")
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    p.add_argument("--_memory-child", dest="memory_child", nargs=2, metavar=("SIDE", "ESTIMATOR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.steps, args.repeats, args.hidden, args.horizon = 2, 4, 2, [8], 20
        args.estimators = args.estimators if "--estimators" in (argv or sys.argv) else ["es"]
    if min(args.tasks, args.length, args.horizon, args.steps, args.repeats) < 1:
        p.error("--tasks, --length, --horizon, --steps and --repeats must be >= 1")
    if args.out is None:
        args.out = RESULTS / ("meta_training_quick.json" if args.quick else "meta_training.json")
    return args


# ---------------------------------------------------------------------------------------------
# the reference: plain JAX


class Inner(NamedTuple):
    params: Any  # the task's parameters
    emas: Any  # per parameter, the gradient's moving averages (..., len(decays))
    step: jax.Array
    key: jax.Array  # drives the run: init and minibatches


def make_reference(task: tasks.Task, cfg: MLPOptimizer, horizon: int, length: int, num_tasks: int,
                   sigma: float, outer_opt: optax.GradientTransformation):
    """``init(key, theta)`` and ``step(kind)(theta, opt_state, carry, key)`` for kind es/pes/tbptt."""
    decays = jnp.asarray(cfg.decays)
    scales = jnp.asarray(cfg.time_scales)

    def mlp_update(theta, g, p, m, t):
        x = jnp.concatenate([g[..., None], p[..., None], m], axis=-1)
        x = x * jax.lax.rsqrt(jnp.mean(x**2, axis=tuple(range(x.ndim - 1)), keepdims=True) + 1e-12)
        tf = jnp.broadcast_to(jnp.tanh(t / scales - 1.0), (*p.shape, scales.size))
        h = jax.nn.relu(jnp.concatenate([x, tf], axis=-1) @ theta["w1"] + theta["b1"])
        out = h @ theta["w2"] + theta["b2"]
        return p + cfg.step_mult * out[..., 0] * jnp.exp(cfg.exp_mult * out[..., 1])

    def fresh(key):
        params = task.init(jax.random.fold_in(key, 1))
        emas = jax.tree.map(lambda p: jnp.zeros((*p.shape, decays.size)), params)
        return Inner(params, emas, jnp.zeros((), jnp.int32), key)

    def unroll(theta, s: Inner):
        """``length`` inner steps (restart first at the horizon); mean loss after each update."""
        new_key = jax.random.fold_in(s.key, 4)
        s = jax.tree.map(lambda a, b: jnp.where(s.step >= horizon, a, b), fresh(new_key), s)

        def body(s: Inner, _):
            loss, g = jax.value_and_grad(task.loss)(s.params, task.batch(jax.random.fold_in(s.key, s.step), "train"))
            emas = jax.tree.map(lambda m, gg: decays * m + (1.0 - decays) * gg[..., None], s.emas, g)
            t = s.step.astype(jnp.float32)
            params = jax.tree.map(lambda gg, p, m: mlp_update(theta, gg, p, m, t), g, s.params, emas)
            return Inner(params, emas, s.step + 1, s.key), loss

        s, losses = jax.lax.scan(body, s, None, length=length)
        last = task.loss(s.params, task.batch(jax.random.fold_in(s.key, s.step), "train"))
        return (jnp.sum(losses[1:]) + last) / length, s

    batched = jax.vmap(unroll)  # theta per run

    def noise(key, theta):
        leaves, tdef = jax.tree.flatten(theta)
        ks = jax.random.split(key, len(leaves))
        return tdef.unflatten([jax.random.normal(k, (num_tasks, *x.shape)) for k, x in zip(ks, leaves)])

    def stack(theta, n):
        return jax.tree.map(lambda t: jnp.broadcast_to(t, (n, *t.shape)), theta)

    def adam(theta, opt_state, grad):
        updates, opt_state = outer_opt.update(grad, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state

    def es(theta, opt_state, runs, key):
        e = noise(key, theta)
        pos = jax.tree.map(lambda t, n: t + sigma * n, theta, e)
        neg = jax.tree.map(lambda t, n: t - sigma * n, theta, e)
        lp, new_runs = batched(pos, runs)
        ln, _ = batched(neg, runs)
        w = (lp - ln) / (2 * sigma)
        grad = jax.tree.map(lambda n: jnp.tensordot(w, n, 1) / num_tasks, e)
        return (*adam(theta, opt_state, grad), new_runs, jnp.mean(lp + ln) / 2)

    def pes(theta, opt_state, carry, key):
        runs, accum = carry  # runs: 2 * num_tasks (+ then -), accum: per pair
        e = jax.tree.map(lambda n: sigma * n, noise(key, theta))
        restart = runs.step[:num_tasks] >= horizon
        accum = jax.tree.map(lambda a, n: jnp.where(restart.reshape((-1,) + (1,) * (a.ndim - 1)), 0.0, a) + n, accum, e)
        thetas = jax.tree.map(lambda t, n: jnp.concatenate([t + n, t - n]), theta, e)
        losses, runs = batched(thetas, runs)
        w = (losses[:num_tasks] - losses[num_tasks:]) / (2 * sigma**2)
        grad = jax.tree.map(lambda a: jnp.tensordot(w, a, 1) / num_tasks, accum)
        return (*adam(theta, opt_state, grad), (runs, accum), jnp.mean(losses))

    def tbptt(theta, opt_state, runs, key):
        def f(th):
            losses, new = batched(stack(th, num_tasks), runs)
            return jnp.mean(losses), new

        (loss, runs), grad = jax.value_and_grad(f, has_aux=True)(theta)
        return (*adam(theta, opt_state, grad), runs, loss)

    def init(kind, key, theta):
        runs = jax.vmap(fresh)(jax.random.split(key, num_tasks))
        if kind != "pes":
            return runs
        both = jax.tree.map(lambda x: jnp.concatenate([x, x]), runs)
        return both, jax.tree.map(lambda t: jnp.zeros((num_tasks, *t.shape)), theta)

    return init, {"es": es, "pes": pes, "tbptt": tbptt}


# ---------------------------------------------------------------------------------------------
# the two sides


def setup(args):
    task = tasks.fashion_mnist_task(hidden=args.hidden, batch_size=args.batch_size,
                                    max_examples=2000 if args.quick else None)
    cfg = MLPOptimizer()
    theta0 = cfg.init(jax.random.PRNGKey(0))
    return task, cfg, theta0


def library_estimator(kind, task, cfg, args):
    family = tasks.SingleTask(task)
    common = dict(horizon=args.horizon, length=args.length, num_tasks=args.tasks)
    if kind == "es":
        return estimators.ES(cfg, family, sigma=args.sigma, **common)
    if kind == "pes":
        return estimators.PES(cfg, family, sigma=args.sigma, **common)
    return estimators.TruncatedBPTT(cfg, family, **common)


class Sides:
    """One callable per (side, estimator): ``run(num_steps)`` trains from theta0 and blocks."""

    def __init__(self, args, task, cfg, theta0):
        self.args, self.theta0 = args, theta0
        self.outer_opt = optax.adam(args.lr)
        self.ref_init, ref_steps = make_reference(task, cfg, args.horizon, args.length, args.tasks, args.sigma,
                                                  self.outer_opt)
        self.ref_steps = {k: jax.jit(f) for k, f in ref_steps.items()}
        self.lib = {k: library_estimator(k, task, cfg, args) for k in args.estimators}

    def reference(self, kind, num_steps, key=jax.random.PRNGKey(1)):
        step = self.ref_steps[kind]
        theta, opt_state = self.theta0, self.outer_opt.init(self.theta0)
        carry = self.ref_init(kind, jax.random.fold_in(key, -1 % 2**31), theta)
        losses = []
        for i in range(num_steps):  # no host round trip inside the loop, as in the tutorial
            theta, opt_state, carry, loss = step(theta, opt_state, carry, jax.random.fold_in(key, i))
            losses.append(loss)
        jax.block_until_ready((theta, losses))
        return theta

    def library(self, kind, num_steps, key=jax.random.PRNGKey(1)):
        res = outer.train(self.lib[kind], self.theta0, self.outer_opt, num_steps, key, progress=False)
        jax.block_until_ready(res.theta)
        return res.theta

    def run(self, side, kind, num_steps):
        return (self.reference if side == "reference" else self.library)(kind, num_steps)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _status_mib(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0: ``clear_refs`` value 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(args) -> None:
    """In a subprocess: build one configuration, then reset the peak RSS, compile and run a few steps, print the peak
    (MiB). Without the reset, loading the data set the peak (2.5 GB) and the steps never showed above it."""
    side, kind = args.memory_child
    task, cfg, theta0 = setup(args)
    gc.collect()
    reset = _reset_peak_rss()
    before = _status_mib("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Sides(args, task, cfg, theta0).run(side, kind, min(args.steps, 4))
    peak = _status_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": peak, "rss_after_setup_mib": before, "peak_rss_above_setup_mib": peak - before,
                      "peak_reset_after_setup": reset}))


def measure_memory(argv: list[str], side: str, kind: str) -> dict:
    cmd = [sys.executable, __file__, *argv, "--_memory-child", side, kind]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return {}
    info = describe()
    print(f"machine: {info['processor']}, {info['cpu_count']} CPU cores, jax {info['jax']} {info['jax_devices']}, "
          f"load average {info['load_average_1min_at_start']:.2f} (other processes share the cores: timings are noisy)")
    task, cfg, theta0 = setup(args)
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(task.init(jax.random.PRNGKey(0))))
    print(f"task: Fashion-MNIST MLP {'-'.join(map(str, [784, *args.hidden, 10]))} ({num_params} parameters), batch "
          f"{args.batch_size}; MLPOptimizer; {args.tasks} tasks, truncation {args.length}, horizon {args.horizon}; "
          f"{args.steps} outer steps per repeat, {args.repeats} repeats per side")
    sides = Sides(args, task, cfg, theta0)
    names = ("reference", "library")
    results: dict[str, dict] = {k: {s: {} for s in names} for k in args.estimators}
    for kind in args.estimators:  # first call: compilation + one step
        for side in names:
            results[kind][side]["first_call_s"] = timed(lambda: sides.run(side, kind, 1))
            sides.run(side, kind, 2)  # warm-up (the library's scan chunk, the reference's dispatch)
    times = {k: {s: [] for s in names} for k in args.estimators}
    for _ in range(args.repeats):  # interleaved
        for kind in args.estimators:
            for side in names:
                times[kind][side].append(timed(lambda: sides.run(side, kind, args.steps)))
    for kind in args.estimators:
        for side in names:
            rates = [args.steps / t for t in times[kind][side]]
            results[kind][side].update(steps_per_s_median=statistics.median(rates), steps_per_s_min=min(rates),
                                       steps_per_s_max=max(rates), seconds=times[kind][side])
            if args.memory:
                results[kind][side].update(measure_memory([a for a in argv if a != "--memory"], side, kind))
        r = results[kind]
        r["ratio_library_over_reference"] = r["library"]["steps_per_s_median"] / r["reference"]["steps_per_s_median"]
    info["load_average_1min_at_end"] = os.getloadavg()[0]

    mem = " peak RSS above setup MiB (ref/lib)" if args.memory else ""
    print(f"\n{'estimator':9s} {'ref steps/s':>14s} {'lib steps/s':>14s} {'lib/ref':>8s} {'first call s (ref/lib)':>23s}{mem}")
    for kind in args.estimators:
        ref, lib = results[kind]["reference"], results[kind]["library"]
        line = (f"{kind:9s} {ref['steps_per_s_median']:7.2f} ({ref['steps_per_s_min']:.1f}-{ref['steps_per_s_max']:.1f})"
                f" {lib['steps_per_s_median']:7.2f} ({lib['steps_per_s_min']:.1f}-{lib['steps_per_s_max']:.1f})"
                f" {results[kind]['ratio_library_over_reference']:8.2f} {ref['first_call_s']:11.1f} / {lib['first_call_s']:.1f}")
        if args.memory:
            line += f"   {ref['peak_rss_above_setup_mib']:.0f} / {lib['peak_rss_above_setup_mib']:.0f}"
        print(line)
    print(f"load average {info['load_average_1min_at_start']:.2f} -> {info['load_average_1min_at_end']:.2f} on "
          f"{info['cpu_count']} cores; (min-max) over repeats shows the noise")
    out = {"machine": info, "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                        if k != "memory_child"},
           "task": {"sizes": [784, *args.hidden, 10], "num_params": num_params}, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
