#!/usr/bin/env python
"""20 small fine-tunings as ONE `ptft-finetune` job (runs.n_ft x runs.seeds in-process) vs 20 separate
`ptft-finetune` processes; wall times include process start-up (imports of torch, hydra, ...).

    python scripts/bench_finetune_inprocess.py [--width 8] [--n 20]

Both variants start from the same pretrained model (trained once before the timing, then copied
into both stores), on a synthetic CIFAR-100 written in a temp dir, CPU, one thread per process.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def ptft(*args: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    p = subprocess.run([str(BIN / "ptft-finetune"), *args], cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"ptft-finetune {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--n", type=int, default=20, help="number of fine-tunings (even: 2 FT sizes x n/2 seeds)")
    args = ap.parse_args()
    seeds = list(range(args.n // 2))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from ptft.vision.synthetic import generate

        generate(tmp / "data", "cifar100", n_train_per_class=20, n_test_per_class=50, seed=0, distractors=1)
        common = [f"data.root={tmp / 'data'}", f"model.width={args.width}", "runtime.device=cpu",
                  "pretrain.train.max_epochs=4", "pretrain.train.lr=0.05", "train.lr=0.01", "train.max_epochs=40"]
        ptft(*common, "store.root=warm", "data.n_ft=10", cwd=tmp)  # pretrain once, outside the timing
        for store in ("one", "many"):
            shutil.copytree(tmp / "warm" / "pretrain", tmp / store / "pretrain")

        t0 = time.perf_counter()
        out = ptft(*common, "store.root=one", "runs.n_ft=[10,20]", f"runs.seeds=[{','.join(map(str, seeds))}]",
                   cwd=tmp)
        one = time.perf_counter() - t0
        assert "[ptft] pretraining" not in out

        t0 = time.perf_counter()
        for n_ft in (10, 20):
            for s in seeds:
                ptft(*common, "store.root=many", f"data.n_ft={n_ft}", f"seed={s}", cwd=tmp)
        many = time.perf_counter() - t0
        n_runs = len(list((tmp / "one" / "finetune").glob("*/result.json")))
        assert n_runs == len(list((tmp / "many" / "finetune").glob("*/result.json"))) == 2 * len(seeds)
    print(f"{n_runs} fine-tunings (width {args.width}, CPU, 1 thread)")
    print(f"one job, in-process:   {one:7.1f} s  ({one / n_runs:.2f} s per fine-tuning)")
    print(f"{n_runs} separate jobs:      {many:7.1f} s  ({many / n_runs:.2f} s per fine-tuning)")
    print(f"saving: {many - one:.1f} s ({many / one:.1f}x faster in-process)")


if __name__ == "__main__":
    main()
