"""Simulations behind the theory-vs-simulation figure (docs/paper.md section 7), through `ptft-dln` jobs.

    python -m ptft.analysis.dln_sims --scale cpu --workers 2     # D = 1000, 5 seeds (this machine)
    python -m ptft.analysis.dln_sims --scale paper --workers 32  # D = 5000, 14 seeds (GPU or cluster)

Every alpha is one multi-configuration `ptft-dln` job (`dln.configs` = the panels' curves at that alpha,
times the seeds): all its members at one seed share the inputs X, so the shared-X engine steps them
with matrix products (ptft.dln.sharedx). Each (curve, alpha) still has its own run directory in the
run store (`--store`), the one of the single-configuration job, so an interrupted driver picks up where
it stopped and finished points are never rerun. Writes a tidy CSV with one row per (curve, alpha): the
dln.* values, D, seeds, the mean test error and its 95% CI.
"""
from __future__ import annotations

import argparse
import csv
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Optional

import numpy as np

from ptft.analysis.panels import (CONFIG_KEYS, PANELS, SCALES, SIM_ALPHAS, curve_config,  # noqa: F401
                                  group_overrides, job_overrides)

_DRIVER: Optional[int] = None  # pid of the driver that started this pool worker (worker_init)


def worker_init() -> None:
    """Pool workers die with their driver: on Linux the kernel sends them SIGTERM when the driver exits
    (killed included), and the trainer checkpoints on SIGTERM, so an interrupted study resumes where it
    stopped instead of leaving orphans that train on. The trainer then raises Preempted, and
    `_timed_group` ends the orphaned worker (a pool worker would otherwise wait for work forever)."""
    import ctypes
    import signal
    import sys

    global _DRIVER
    _DRIVER = os.getppid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def _run(overrides: list[str]) -> dict:
    return _run_group(overrides)[0]


def _timed_group(overrides: list[str]) -> tuple[list[dict], float]:
    """_run_group and the CPU seconds the worker spent on it (the wall time on a shared machine is not)."""
    from ptft.train.trainer import Preempted

    t0 = time.process_time()
    try:
        res = _run_group(overrides)
    except Preempted:
        if _DRIVER is not None and os.getppid() != _DRIVER:  # the driver is gone: the checkpoint is written
            os._exit(143)
        raise
    return res, time.process_time() - t0


def _run_group(overrides: list[str]) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    from ptft import app
    from ptft.dln.cli import run_jobs

    return [res for _, res in run_jobs(app.compose("dln", overrides))]


def ci95(x: np.ndarray) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t; ptft.analysis.stats)."""
    from ptft.analysis.stats import ci95_half

    return ci95_half(x)


def jobs_for(panels: str) -> list[tuple[dict, float]]:
    """(curve, alpha) pairs of the given panels, panel by panel, each only once."""
    seen, jobs = set(), []
    for p in panels:
        if p not in PANELS:
            raise ValueError(f"unknown panel {p!r}; choose from {''.join(PANELS)}")
        for c in PANELS[p][1]:
            cfg = curve_config(c)
            for a in SIM_ALPHAS[::-1]:
                key = (tuple(sorted(cfg.items())), float(a))
                if key not in seen:
                    seen.add(key)
                    jobs.append((cfg, float(a)))
    return sorted(jobs, key=lambda j: is_slow(j[0]))


def groups_for(panels: str) -> list[tuple[list[dict], float]]:
    """The points of jobs_for(panels) grouped by alpha, largest alpha (most work) first."""
    by_alpha: dict[float, list[dict]] = {}
    for c, a in jobs_for(panels):
        by_alpha.setdefault(a, []).append(c)
    return [(by_alpha[a], a) for a in sorted(by_alpha, reverse=True)]


def is_slow(curve: dict) -> bool:
    """Rich fine-tuning onto new features (a tiny c_FT = 2 c (1 + lam) + gamma^2 / 2 off the PT
    support, omega < 1) needs 10-100x more GD steps than the rest: such jobs run last."""
    c_off = 2 * curve["c_pt"] * (1 + curve["lam_pt"]) + curve["gamma"] ** 2 / 2
    return curve["omega"] < 1 and c_off < 1e-4


def simulate(scale: str, store: str, workers: int = 1, device: str = "cpu", out: Path | None = None,
             panels: str = "".join(PANELS), alphas: list[float] | None = None,
             seeds: int | None = None) -> list[dict]:
    """Run (or find finished) every point of `panels`; `alphas` / `seeds` restrict the scale's grid
    (e.g. a paper-scale slice: scale paper, one alpha, 2 seeds)."""
    sc = dict(SCALES[scale])
    if seeds is not None:
        sc["seeds"] = seeds
    groups = [(cs, a) for cs, a in groups_for(panels) if alphas is None or any(abs(a - x) < 1e-9 for x in alphas)]
    rows = []
    t0, cpu_total = time.time(), 0.0
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=worker_init) as pool:
        futs = {pool.submit(_timed_group, group_overrides(cs, a, sc["dim"], sc["seeds"], store, device)): (cs, a)
                for cs, a in groups}
        for i, f in enumerate(as_completed(futs), 1):
            curves, alpha = futs[f]
            results, cpu_s = f.result()
            cpu_total += cpu_s
            for curve, res in zip(curves, results):
                members = res.get("members", [res])
                err = np.array([m["test_mse"] for m in members])
                rows.append({**{k: curve[k] for k in CONFIG_KEYS}, "alpha": alpha, "dim": sc["dim"],
                             "seeds": len(err), "error_mean": float(err.mean()), "error_ci95": ci95(err),
                             "status": res["status"], "steps_max": max(m["steps"] for m in members)})
            bad = sum(r["status"] != "ok" for r in rows[-len(curves):])
            print(f"[{i}/{len(groups)} {time.time() - t0:7.0f}s] alpha={alpha:.3f}: {len(curves)} curves x "
                  f"{sc['seeds']} seeds done ({bad} not ok), {cpu_s:.0f} CPU s (all jobs so far: {cpu_total:.0f})",
                  flush=True)
            if out is not None:  # rewritten after every job: an interrupted driver leaves a usable table
                write_csv(rows, out)
    rows.sort(key=lambda r: tuple(r[k] for k in CONFIG_KEYS) + (r["alpha"],))
    return rows


def write_csv(rows: list[dict], out: Path) -> None:
    import io

    from ptft.train.store import atomic_write_text

    rows = sorted(rows, key=lambda r: tuple(r[k] for k in CONFIG_KEYS) + (r["alpha"],))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out, buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description="Run the DLN simulations of the six-panel figure.")
    ap.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    ap.add_argument("--store", default="runs", help="run store root (finished jobs are skipped)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--panels", default="".join(PANELS), help="which panels to simulate, e.g. acf (default all)")
    ap.add_argument("--out", type=Path, default=None, help="CSV (default results/dln_panels/dln_sims_<scale>.csv)")
    ap.add_argument("--alphas", default=None, help="only these of the 11 simulation alphas, e.g. 0.059,0.5")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per point (default: the scale's)")
    a = ap.parse_args()
    if a.workers < 1:
        ap.error("--workers must be >= 1")
    if any(p not in PANELS for p in a.panels):
        ap.error(f"--panels takes letters from {''.join(PANELS)}")
    alphas = None
    if a.alphas is not None:
        try:
            alphas = [float(x) for x in a.alphas.split(",")]
        except ValueError:
            ap.error(f"--alphas takes comma-separated numbers, got {a.alphas!r}")
        unknown = [x for x in alphas if not any(abs(x - s) < 1e-9 for s in SIM_ALPHAS)]
        if unknown:
            ap.error(f"--alphas {unknown} not among the simulation alphas {list(SIM_ALPHAS)}")
    if a.seeds is not None and a.seeds < 1:
        ap.error("--seeds must be >= 1")
    out = a.out or Path(f"results/dln_panels/dln_sims_{a.scale}.csv")
    simulate(a.scale, a.store, a.workers, a.device, out, a.panels, alphas, a.seeds)


def study_report(df, spec, out: Path) -> None:
    """Hook of the dln_panels study (conf/study/dln_panels.yaml): its runs table -> the per-point table of
    `simulate` (dln_sims_<scale>.csv: per (curve, alpha) the mean test error over seeds, its 95% CI, the status
    of the point's job (the first non-ok member status by seed, as result.json) and the most steps), then the
    six-panel figure with the replica theory (ptft.analysis.dln_figures.panels)."""
    from ptft.analysis.dln_figures import panels as draw_panels

    dim = int(df["dln.dim"].iloc[0])
    scale = next((k for k, v in SCALES.items() if v["dim"] == dim and v["seeds"] == df["seed"].nunique()), None)
    rows = []
    for (arm, alpha), g in df.groupby(["arm", "x"], sort=False):
        g = g.sort_values("seed")
        err = g["test_mse"].astype(float).to_numpy()
        statuses = [str(v) for v in g["status"]]
        rows.append({**{k: float(g[f"dln.{k}"].iloc[0]) for k in CONFIG_KEYS}, "alpha": float(alpha), "dim": dim,
                     "seeds": len(err), "error_mean": float(err.mean()), "error_ci95": ci95(err),
                     "status": next((v for v in statuses if v != "ok"), "ok"),
                     "steps_max": int(g["steps"].astype(int).max())})
    name = f"dln_sims_{scale or 'custom'}.csv"
    write_csv(rows, out / name)
    if scale is not None:
        draw_panels(out, out / name, scale=scale)


if __name__ == "__main__":
    main()
