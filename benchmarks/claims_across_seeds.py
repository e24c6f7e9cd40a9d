"""Run the notebooks at several seeds and print the table claim x seed (lopt.seeds).

Each seed runs every notebook with papermill (``-p profile P -p seed N``) into its own output folder
(``.seeds/seedN``, via ``LOPT_OUTPUT_DIR``): notebook 10 first, whose GRU weights notebooks 11-14 of the same
seed then read.  A notebook whose claims fail still writes its metrics before its last cell, so its claims are
recorded; a notebook that fails earlier is recorded as an error.  The table, with a fingerprint of each
notebook's inputs (so that a test can tell it is stale), goes to ``benchmarks/results/seeds/NN.json``, one file
per notebook; each notebook reads its own to name its fragile claims, so rerun the pipeline (``make repro``)
afterwards: only the stages whose entry changed rerun.

    .venv/bin/python benchmarks/claims_across_seeds.py                     # seeds 1 2 at cpu, 2 seeds in parallel
    .venv/bin/python benchmarks/claims_across_seeds.py --notebooks 11 13   # only these (the rest of the table kept)
    .venv/bin/python benchmarks/claims_across_seeds.py --collect           # rebuild the table from .seeds/ only

Seed 0 is the pipeline's own run (``figures/*_metrics.json``), shown beside the others in the printed table.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lopt import config, seeds  # noqa: E402


def order(notebooks: list[str]) -> list[str]:
    """Notebooks 05 and 10 (they train the MLP and GRU optimizers) before the notebooks that read their weights."""
    return sorted(notebooks, key=lambda nb: (nb not in ("05", "10"), nb))


def run_one(nb: str, seed: int, profile: str, out: Path) -> dict:
    stage = seeds.stages(ROOT)[nb]
    src = next(d for d in stage["deps"] if d.startswith("notebooks/"))
    (out / "executed").mkdir(parents=True, exist_ok=True)
    metrics = out / "figures" / f"{nb}_metrics.json"
    metrics.unlink(missing_ok=True)
    env = {**os.environ, config.OUTPUT_ENV: str(out), config.INPUT_ENV: str(out), "MPLBACKEND": "Agg",
           "TQDM_MININTERVAL": "60"}
    env.pop(config.PROFILE_ENV, None)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", "-k", "python3", "--cwd", "notebooks", "--log-level", "ERROR",
         "-p", "profile", profile, "-p", "seed", str(seed), src, str(out / "executed" / Path(src).name)],
        cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = round(time.perf_counter() - start, 1)
    record = {"seconds": seconds, "claims": None, "error": None}
    if metrics.is_file():
        data = json.loads(metrics.read_text())
        record["claims"] = data["claims"]
        record["metrics_seed"] = data.get("seed")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        record["error"] = " / ".join(tail)[-400:]
    status = "ok" if proc.returncode == 0 else ("claims failed" if record["claims"] else "ERROR")
    print(f"seed {seed} nb{nb}: {status} in {seconds:.0f} s", flush=True)
    return record


def run_seed(seed: int, notebooks: list[str], profile: str, base: Path) -> dict[str, dict]:
    return {nb: run_one(nb, seed, profile, base / f"seed{seed}") for nb in order(notebooks)}


def collect(seed: int, nb: str, base: Path) -> dict | None:
    path = base / f"seed{seed}" / "figures" / f"{nb}_metrics.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return {"seconds": data.get("seconds"), "claims": data["claims"], "error": None, "metrics_seed": data.get("seed")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--notebooks", nargs="+", default=None, help="notebook numbers (default: every stage)")
    ap.add_argument("--profile", default="cpu", choices=config.PROFILES)
    ap.add_argument("--jobs", type=int, default=2, help="seeds run in parallel")
    ap.add_argument("--out", type=Path, default=ROOT / ".seeds")
    ap.add_argument("--collect", action="store_true", help="only rebuild the table from --out")
    ap.add_argument("--table", type=Path, default=ROOT / seeds.TABLE, help="folder of the per-notebook files")
    args = ap.parse_args()

    all_nbs = list(seeds.stages(ROOT))
    notebooks = args.notebooks or all_nbs
    unknown = [nb for nb in notebooks if nb not in all_nbs]
    if unknown:
        ap.error(f"unknown notebooks {unknown}; known: {' '.join(all_nbs)}")
    if any(nb in ("11", "12", "13", "14") for nb in notebooks) and "10" not in notebooks and not args.collect:
        missing = [s for s in args.seeds if not (args.out / f"seed{s}" / "data" / "learned").is_dir()]
        if missing:
            ap.error(f"notebooks 11-14 read notebook 10's weights of the same seed; none in {args.out} for seeds {missing}: add 10")
    config.check_file(ROOT / "params.yaml")
    prints = {nb: seeds.fingerprint(nb, args.profile, ROOT) for nb in notebooks}

    if args.collect:
        runs = {s: {nb: collect(s, nb, args.out) for nb in notebooks} for s in args.seeds}
    else:
        start = time.perf_counter()
        with cf.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {s: pool.submit(run_seed, s, notebooks, args.profile, args.out) for s in args.seeds}
            runs = {s: f.result() for s, f in futures.items()}
        print(f"all runs: {time.perf_counter() - start:.0f} s")
        changed = [nb for nb in notebooks if seeds.fingerprint(nb, args.profile, ROOT) != prints[nb]]
        if changed:
            print(f"inputs of notebooks {changed} changed during the run: not recording them", file=sys.stderr)
            notebooks = [nb for nb in notebooks if nb not in changed]

    for nb in notebooks:
        seeds.write_entry(nb, args.profile, args.seeds, prints[nb],
                          {str(s): runs[s][nb] for s in args.seeds if runs[s][nb] is not None}, args.table)
    table = seeds.read_table(args.table)

    seed0 = {}
    for nb in table["notebooks"]:
        path = ROOT / "figures" / f"{nb}_metrics.json"
        if path.is_file() and json.loads(path.read_text())["profile"] == args.profile:
            seed0[nb] = json.loads(path.read_text())["claims"]
    print(seeds.render(table, seed0))
    print(f"wrote {args.table}/NN.json for notebooks {' '.join(notebooks)}; rerun the pipeline (make repro) so that the notebooks name their fragile claims")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
