"""Benchmark of the DLN simulations, in one run: step throughput and the shared-X speed-up.

    python scripts/bench_dln.py [--dim 1000] [--alpha 0.3] [--members 28] [--grid-dim 300] [--device cpu]

1. GFLOP/s of one gradient step (4 n D flops per member: two products with X), next to the bare
   matrix-matrix and matrix-vector speed of this core on the same X:
     single   - one member through the trainer (DLNTask, B = 1),
     batched  - B = --members members with their own X through the trainer (today's seeds job),
     shared-X - the same number of members sharing one X (ptft.dln.sharedx, what a multi-configuration
                job does for the members at one seed);
   on CPU also the one-pass step over X, and a job's tail (1 member at each of 5 seeds) stepped in
   lockstep vs in blocks of 64 iterations per X (the engine's CPU default).
2. A panel-like grid: every curve of the six panels (28) at one alpha, --grid-seeds seeds, through the
   real pipeline (run store, result.json), as one batched job per curve (before) and as one
   multi-configuration job (dln.configs); prints both wall times, the speed-up and the largest
   relative test_mse difference between the two.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch


# CPU seconds of this (single-threaded) process on CPU: on a shared machine the wall clock also
# counts the other processes' turns; the wall clock on a GPU (the host waits for the device)
CLOCK = time.process_time


def _rate(fn, flops: float, min_s: float = 1.0) -> float:
    fn()  # warm-up
    reps, t = 0, 0.0
    t0 = CLOCK()
    while t < min_s:
        fn()
        reps += 1
        t = CLOCK() - t0
    return flops * reps / t / 1e9


def step_rates(dim: int, alpha: float, K: int, device: str, steps: int) -> None:
    from ptft.dln.model import init_state
    from ptft.dln.sharedx import Member, SharedXEngine
    from ptft.dln.task import DLNTask
    from ptft.train.trainer import TrainConfig, Trainer

    n = int(round(alpha * dim))
    rng = np.random.default_rng(0)
    X = rng.normal(0, dim**-0.5, (n, dim))
    beta_star = rng.normal(0, 1, (K, dim))
    Y = beta_star @ X.T
    st = init_state(1e-3, 0.0, (K, dim))
    kw = dict(dtype=torch.float64, device=device)
    Xd = torch.as_tensor(X, **kw)
    Bm, Rm = torch.randn(K, dim, **kw), torch.randn(K, n, **kw)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def mm():
        Bm @ Xd.T, Rm @ Xd
        sync()

    def mv():
        Bm[:1] @ Xd.T, Rm[:1] @ Xd
        sync()

    cfg = TrainConfig(lr=0.1, threshold=0.0, max_steps=steps, log_every=10**9, ckpt_every_s=0)

    def trainer(B: int, own_x: bool):
        Xs = [X + (1e-3 * b if own_x else 0) for b in range(B)]  # distinct arrays: nothing shared
        task = DLNTask(Xs, list(Y[:B]), type(st)(*(f[:B] for f in st)), device)

        def go():
            Trainer(task, cfg).run()
            sync()
        return go

    def shared(k: int = K, fused: float = 16e6):
        members = [Member(0, Y[b], type(st)(*(f[b] for f in st))) for b in range(k)]

        def go():
            SharedXEngine({0: X}, members, lr=0.1, threshold=0.0, max_steps=steps, device=device,
                          fused_min_bytes=fused).run()
            sync()
        return go

    f1 = 4.0 * n * dim
    print(f"step throughput, n={n}, D={dim}, {K} members, {steps} steps per timing, float64, {device}, "
          f"{torch.get_num_threads()} thread(s):")
    rows = [("bare matrix-vector (1 column)", _rate(mv, f1)),
            (f"bare matrix-matrix ({K} columns)", _rate(mm, f1 * K)),
            ("single member (trainer)", _rate(trainer(1, True), f1 * steps)),
            (f"batched, {K} members with own X (trainer)", _rate(trainer(K, True), f1 * K * steps)),
            (f"shared-X, {K} members (engine)", _rate(shared(), f1 * K * steps))]
    if device == "cpu":  # the one-pass step over row blocks of X (used when X exceeds the cache)
        k = min(K, 4)
        rows += [(f"engine, {k} members, two products", _rate(shared(k, float("inf")), f1 * k * steps)),
                 (f"engine, {k} members, one fused pass over X", _rate(shared(k, 0.0), f1 * k * steps))]
    if device == "cpu":  # a job's tail: one slow member left at each of 5 seeds (5 inputs X, 5x the cache
        # of one); lockstep streams all five X from memory every iteration, blocks keep one in cache
        G, t_steps = 5, max(steps, 256)
        Xs = {g: X + 1e-3 * g for g in range(G)}
        tail = [Member(g, Y[0], type(st)(*(f[0] for f in st))) for g in range(G)]

        def blocked(block: int):
            def go():
                SharedXEngine(Xs, tail, lr=0.1, threshold=0.0, max_steps=t_steps, block=block).run()
            return go
        rows += [(f"engine, {G} X x 1 member, lockstep", _rate(blocked(1), f1 * G * t_steps)),
                 (f"engine, {G} X x 1 member, blocks of 64 steps", _rate(blocked(64), f1 * G * t_steps))]
    for name, r in rows:
        print(f"  {name:44s} {r:7.2f} GFLOP/s")
    print(f"  shared-X / batched: {rows[4][1] / rows[3][1]:.1f}x   shared-X / single: {rows[4][1] / rows[2][1]:.1f}x   "
          f"shared-X / bare matrix-matrix: {rows[4][1] / rows[1][1]:.2f}")


def grid(dim: int, alpha: float, seeds: int, device: str) -> None:
    from ptft import app
    from ptft.analysis.dln_sims import group_overrides, job_overrides
    from ptft.analysis.panels import unique_curves
    from ptft.dln.cli import run_jobs
    from ptft.dln.main import run_job

    curves = unique_curves()
    with tempfile.TemporaryDirectory() as root:
        run_job(app.compose("dln", job_overrides(curves[0], alpha, 50, 1, f"{root}/warm", device)))  # warm-up
        t0 = CLOCK()
        per_curve = [run_job(app.compose("dln", job_overrides(c, alpha, dim, seeds, f"{root}/a", device)))[1]
                     for c in curves]
        t_before = CLOCK() - t0
        t0 = CLOCK()
        multi = [r for _, r in run_jobs(app.compose("dln", group_overrides(curves, alpha, dim, seeds, f"{root}/b",
                                                                           device)))]
        t_multi = CLOCK() - t0
    worst, steps = 0.0, 0
    for a, b in zip(per_curve, multi):
        assert [m["status"] for m in a["members"]] == [m["status"] for m in b["members"]]
        for x, y in zip(a["members"], b["members"]):
            steps += x["steps"]
            if np.isfinite(x["test_mse"]):
                worst = max(worst, abs(x["test_mse"] - y["test_mse"]) / abs(x["test_mse"]))
    print(f"panel-like grid: {len(curves)} curves x {seeds} seeds at alpha={alpha}, D={dim} "
          f"({steps} member-steps in all):")
    unit = "CPU s" if CLOCK is time.process_time else "s"
    print(f"  one batched job per curve  : {t_before:8.2f} {unit}")
    print(f"  one multi-configuration job: {t_multi:8.2f} {unit}")
    print(f"  speed-up: {t_before / t_multi:.1f}x   (largest relative test_mse difference {worst:.1e})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1000)
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--members", type=int, default=28)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--grid-dim", type=int, default=300)
    ap.add_argument("--grid-alpha", type=float, default=0.3)
    ap.add_argument("--grid-seeds", type=int, default=3)
    ap.add_argument("--no-grid", action="store_true", help="only the step throughput")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    global CLOCK
    if a.device != "cpu" or a.threads != 1:
        CLOCK = time.perf_counter
    step_rates(a.dim, a.alpha, a.members, a.device, a.steps)
    if not a.no_grid:
        grid(a.grid_dim, a.grid_alpha, a.grid_seeds, a.device)


if __name__ == "__main__":
    main()
