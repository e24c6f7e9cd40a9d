"""Where a training step's time goes: each XLA kernel's time per step, named by the source line it computes.

``optimizer_step.py`` gives the ratio of whole steps; this says which parts of a step make it. The same 200-step
``lax.scan`` (minibatch sampling, loss and gradient, update) is compiled for each optimizer and run under
``jax.profiler.trace`` with XLA's per-kernel trace events on (``--xla_cpu_enable_xprof_traceme``; the CPU
runtime then records every fusion, dot and reduction it runs). Each kernel's time is summed and divided by the
steps, and named by the innermost source line of its root operation (the compiled program's metadata), e.g.
``lopt/learned/mlp.py:142 direction_fused``; ``--by line`` adds up the kernels of one line (the five moving
averages are five kernels of one line). Tracing slows each kernel down (about 1.3x in total here), so read
shares and differences between optimizers from this, ratios of whole steps from ``optimizer_step.py``.

    .venv/bin/python benchmarks/step_profile.py                       # mlp-128: optax Adam and the learned optimizer
    .venv/bin/python benchmarks/step_profile.py --task cnn-32-64 --by line
    .venv/bin/python benchmarks/step_profile.py --quick               # a few seconds (not for reporting)

Writes a table to stdout and JSON to ``benchmarks/results/step_profile.json`` (``step_profile_quick.json``).
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # before JAX starts its CPU backend (not on import: the flag is part of every cache key)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lopt import tasks, unroll  # noqa: E402
from machine import describe  # noqa: E402  (benchmarks/machine.py)
from optimizer_step import RESULTS, jax_optimizers, parse_task  # noqa: E402

# kernels that contain others (loops, calls) or are the runtime's own bookkeeping: not counted
_CONTAINERS = ("while", "call", "conditional")


def sources(hlo: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (opcode, "file:line function") from a compiled program's text. The source is the
    innermost stack frame of the instruction's metadata (JAX keeps the user's frames); for a fusion, the source
    most of its operations have."""
    def table(header: str) -> dict[int, str]:
        m = re.search(rf"^{header}\n(.*?)(?:\n\n|\Z)", hlo, re.S | re.M)
        return {int(k): v for k, v in re.findall(r"^(\d+) (.*)$", m.group(1), re.M)} if m else {}

    files = {k: v.strip('"') for k, v in table("FileNames").items()}
    funcs = {k: v.strip('"') for k, v in table("FunctionNames").items()}
    locs = {k: dict(re.findall(r"(\w+)=(\d+)", v)) for k, v in table("FileLocations").items()}
    frames = {k: dict(re.findall(r"(\w+)=(\d+)", v)) for k, v in table("StackFrames").items()}

    def where(frame_id: int) -> str:
        loc = locs.get(int(frames.get(frame_id, {}).get("file_location_id", 0)), {})
        if not loc:
            return "?"
        path = files.get(int(loc["file_name_id"]), "?")
        short = path.split("/src/", 1)[-1] if "/src/" in path else Path(path).name
        return f"{short}:{loc['line']} {funcs.get(int(loc['function_name_id']), '?')}"

    def instructions(text: str) -> list[tuple[str, str, str, str]]:
        """(name, opcode, source, the rest of its line) of each instruction in ``text``."""
        out = []
        for name, rest in re.findall(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$", text, re.M):
            opcode = re.search(r"([a-z][a-z\-]*)\(", rest)
            frame = re.search(r"stack_frame_id=(\d+)", rest)
            out.append((name, opcode.group(1) if opcode else "?", where(int(frame.group(1))) if frame else "?", rest))
        return out

    # a fusion is named by the line most of its operations come from (its root is often a later, cheap step:
    # the learned update's fusion ends in optax's apply_updates)
    bodies = dict(re.findall(r"^%([\w.\-]+) \(.*?\{\n(.*?)\n\}", hlo, re.M | re.S))
    out = {}
    for name, opcode, source, rest in instructions(hlo):
        called = re.search(r"calls=%([\w.\-]+)", rest) if opcode == "fusion" else None
        if called and called.group(1) in bodies:
            lines = collections.Counter(src for _, op, src, _ in instructions(bodies[called.group(1)])
                                        if src != "?" and op not in ("parameter", "constant", "broadcast", "bitcast"))
            source = lines.most_common(1)[0][0] if lines else source
        out[name] = (opcode, source)
    return out


def kernel_times(trace_dir: Path, calls: int) -> dict[str, float]:
    """Kernel name -> total microseconds per call, summed over the trace's complete events."""
    path = next(trace_dir.rglob("*.trace.json.gz"))
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    total: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X":
            total[e["name"]] += e.get("dur", 0.0)
    return {k: v / calls for k, v in total.items()}


def profile(task: tasks.Task, opt, steps: int, repeats: int, key: jax.Array) -> dict:
    """Compile the scan of ``steps`` steps, warm it up, trace ``repeats`` runs; per-kernel us per step."""
    k_init, k_run = jax.random.split(key)
    state = unroll.init_state(task, opt, k_init)
    compiled = jax.jit(lambda s, k: unroll.unroll(task, opt, s, k, steps)).lower(state, k_run).compile()
    names = sources(compiled.as_text())
    for _ in range(2):
        jax.block_until_ready(compiled(state, k_run))
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(repeats):
                jax.block_until_ready(compiled(state, k_run))
        times = kernel_times(Path(tmp), repeats * steps)
    kernels = {n: {"us_per_step": t, "opcode": names[n][0], "source": names[n][1]}
               for n, t in times.items() if n in names and names[n][0] not in _CONTAINERS}
    wall = times.get("ThunkExecutor::Execute (wait for completion)", float("nan"))
    return {"kernels": dict(sorted(kernels.items(), key=lambda kv: -kv[1]["us_per_step"])),
            "kernel_us_per_step": sum(k["us_per_step"] for k in kernels.values()), "traced_us_per_step": wall}


def by_line(kernels: dict) -> dict:
    """Kernels added up per source line: line -> {us_per_step, kernels}."""
    out: dict = collections.defaultdict(lambda: {"us_per_step": 0.0, "kernels": 0})
    for k in kernels.values():
        out[k["source"]]["us_per_step"] += k["us_per_step"]
        out[k["source"]]["kernels"] += 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["us_per_step"]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="mlp-128", help="MODEL-SIZES as in optimizer_step.py (default mlp-128)")
    p.add_argument("--optimizers", nargs="+", default=["optax.adam", "MLPOptimizer (learned)"],
                   help="names from optimizer_step.py (default: optax.adam and the learned optimizer)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3, help="traced runs of the scan (default 3)")
    p.add_argument("--by", choices=("kernel", "line"), default="kernel", help="one row per kernel or per source line")
    p.add_argument("--top", type=int, default=12, help="rows per optimizer (default 12)")
    p.add_argument("--quick", action="store_true", help="tiny run (a few seconds): smoke test of the script")
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = p.parse_args(argv)
    key = jax.random.PRNGKey(0)
    known = jax_optimizers(key)
    unknown = [o for o in args.optimizers if o not in known]
    if unknown:
        p.error(f"unknown optimizer(s) {unknown}; allowed values: {', '.join(map(repr, known))}")
    model, hidden = parse_task(args.task)
    if args.quick:
        args.steps, args.repeats = 10, 1
    args.out = args.out or RESULTS / ("step_profile_quick.json" if args.quick else "step_profile.json")

    info = describe()
    task = tasks.fashion_mnist_task(model, hidden=hidden, batch_size=128, max_examples=2000 if args.quick else None)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(task.init(key)))
    print(f"task {args.task} ({n} parameters), {args.steps} steps per scan, {args.repeats} traced runs; "
          f"load average {info['load_average_1min_at_start']:.2f}")
    results = {}
    for name in args.optimizers:
        r = results[name] = profile(task, known[name], args.steps, args.repeats, key)
        rows = r["kernels"] if args.by == "kernel" else by_line(r["kernels"])
        print(f"\n{name}: kernels {r['kernel_us_per_step']:.1f} us per step (traced; the scan took "
              f"{r['traced_us_per_step']:.1f})")
        for label, row in list(rows.items())[: args.top]:
            what = f"{row['opcode']:10s} {row['source']}" if args.by == "kernel" else f"{row['kernels']:3d} kernels"
            print(f"  {row['us_per_step']:8.1f} us {100 * row['us_per_step'] / r['kernel_us_per_step']:5.1f}%  "
                  f"{label[:60]:60s} {what}")
    info["load_average_1min_at_end"] = os.getloadavg()[0]
    out = {"machine": info, "task": args.task, "num_params": n, "steps": args.steps, "repeats": args.repeats,
           "quick": args.quick, "results": {k: {**v, "by_line": by_line(v["kernels"])} for k, v in results.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return out


if __name__ == "__main__":
    main()
