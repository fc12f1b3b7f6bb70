"""Steps to the pretraining criterion per arm of the arithmetic track's PT-side knobs (issue 22):
results/arith_calibration/.

    python scripts/calibrate_arith.py --store runs/arith_calibration --seeds 0 1 2 --workers 2
    python scripts/calibrate_arith.py --store runs/arith_calibration --preset arith/grokking_nanda \\
        --arms baseline --seeds 0 --out results/arith_calibration/grokking_nanda.csv

Each (arm, seed) is one `ptft-pretrain` process of one thread on the preset (default arith/modarith_criterion:
trains until the held-out accuracy of the PT op is >= 0.99, or its step budget is spent). Arms: the knobs one
at a time around kappa = c = 1. Finished runs are found in the store and not retrained, so a killed calibration
resumes by running the same command. Writes one CSV row per run (arm, seed, status: ok = criterion met, steps,
quality reached, steps_to_95, wall_s and cpu_s of the process that trained it: cpu_s empty for a run that was
resumed) and prints per arm: met / runs, steps. --curves PATH also writes every run's evaluations (step, train
and held-out accuracy and loss): the grokking curves.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BIN = Path(sys.executable).parent
ARMS = {"baseline": [], **{f"kappa={v}": [f"init.kappa={v}"] for v in (0.25, 0.5, 2)},
        **{f"scale={v}": [f"init.scale={v}"] for v in (0.5, 2)}}
COLS = ("preset", "arm", "seed", "status", "steps", "quality", "criterion", "steps_to_95", "wall_s", "cpu_s",
        "run_hash")
CURVE = ("eval/test_acc", "eval/train_acc", "eval/test_loss", "eval/train_loss_eval")


def pretrain(preset: str, arm: str, seed: int, store: Path, extra: list[str]) -> dict:
    """Train (or find) one pretraining; its CSV row."""
    args = [f"experiment={preset}", f"seed={seed}", *ARMS[arm], f"store.root={store}", "wandb.mode=disabled",
            *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    p = subprocess.run([str(BIN / "ptft-pretrain"), *args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"ptft-pretrain {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    run = Path(p.stdout.strip().splitlines()[-1])
    res = json.loads((run / "result.json").read_text())
    timing = json.loads((run / "timing.json").read_text())
    wall, cpu = timing["wall_s"], timing.get("cpu_s")
    row = {"preset": preset, "arm": arm, "seed": seed, "wall_s": round(wall, 1), "run_hash": run.name,
           "cpu_s": None if cpu is None or timing["resumed"] else round(cpu, 1),
           **{k: res.get(k) for k in ("status", "steps", "quality", "criterion", "steps_to_95")}}
    print(f"{arm:>11} seed {seed}: {row['status']} after {row['steps']} steps (quality {row['quality']:.4f}, "
          f"{wall:.0f} s wall, {row['cpu_s']} s CPU)", flush=True)
    return row


def write_csv(path: Path, cols: tuple, rows: list[dict]) -> None:
    from ptft.train.store import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="arith/modarith_criterion")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--store", type=Path, default=Path("runs/arith_calibration"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/arith_calibration/calibration.csv"))
    ap.add_argument("--curves", type=Path, help="also write every run's evaluations to this CSV")
    ap.add_argument("overrides", nargs="*", help="more overrides of every run (e.g. pretrain.train.max_steps=30000)")
    a = ap.parse_args(argv)
    jobs = [(arm, s) for s in a.seeds for arm in a.arms]
    with ThreadPoolExecutor(a.workers) as pool:
        rows = list(pool.map(lambda j: pretrain(a.preset, j[0], j[1], a.store.absolute(), a.overrides), jobs))
    write_csv(a.out, COLS, rows)
    if a.curves:
        evals = [{"arm": r["arm"], "seed": r["seed"], "step": e["step"], **{k[5:]: e[k] for k in CURVE}}
                 for r in rows for e in map(json.loads, (a.store / "pretrain" / r["run_hash"] / "metrics.jsonl")
                                            .read_text().splitlines()) if CURVE[0] in e]
        write_csv(a.curves, ("arm", "seed", "step", *(k[5:] for k in CURVE)), evals)
    for arm in a.arms:
        mine = [r for r in rows if r["arm"] == arm]
        met = [r["steps"] for r in mine if r["status"] == "ok"]
        print(f"{arm:>11}: met {len(met)}/{len(mine)}; steps {sorted(r['steps'] for r in mine)}; "
              f"quality min {min(r['quality'] for r in mine):.4f}")
    print(a.out)


if __name__ == "__main__":
    main()
