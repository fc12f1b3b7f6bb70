"""Benchmark: B small DLN fine-tuning runs as one batched job vs one by one, in one process.

    python scripts/bench_dln.py [--runs 50] [--dim 100] [--alpha 0.3]

Both go through the real pipeline (`run_job`: run store, trainer, result.json) with wandb disabled,
each in a fresh temporary store. Prints both wall times and their ratio, and checks that the
per-seed results agree.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from ptft import app
from ptft.dln.main import run_job


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = [f"dln.dim={a.dim}", f"dln.alpha={a.alpha}", "wandb.mode=disabled"]
    seeds = list(range(a.runs))
    with tempfile.TemporaryDirectory() as root:
        run_job(app.compose("dln", [f"store.root={root}/warm", *base]))  # warm-up (imports, allocator)
        t0 = time.perf_counter()
        single = [run_job(app.compose("dln", [f"store.root={root}/single", *base, f"seed={s}"]))[1] for s in seeds]
        t_single = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, batched = run_job(app.compose("dln", [f"store.root={root}/batched", *base, f"dln.seeds={seeds}"]))
        t_batched = time.perf_counter() - t0
    worst = max(abs(s["test_mse"] - m["test_mse"]) / max(abs(s["test_mse"]), 1e-12)
                for s, m in zip(single, batched["members"]))
    print(f"{a.runs} runs, D={a.dim}, n={round(a.alpha * a.dim)}, threads={a.threads}")
    print(f"one by one : {t_single:8.2f} s  ({sum(s['steps'] for s in single)} steps in all)")
    print(f"batched    : {t_batched:8.2f} s  ({max(m['steps'] for m in batched['members'])} steps, B={a.runs})")
    print(f"speed-up   : {t_single / t_batched:8.1f}x   (largest relative test_mse difference {worst:.1e})")


if __name__ == "__main__":
    main()
