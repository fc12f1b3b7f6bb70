"""Lippl & Lindsey's DLN weight-rescaling experiment (docs/paper.md section 7; preset dln/ll_rescale).

    python scripts/study_ll_dln.py --store runs/ll_dln --workers 2      # every job, then CSV + figure
    (rerunning it skips every finished job: it then only rewrites the CSVs and the figure)

Arms: the pretrained first layer multiplied by s with the readout set to 1e-3 * s, s in {1, 1e-1, 1e-2,
1e-3} (LL's pairs), and STL from the same 1e-3 init; n_FT in {16, 32, 64, 128}; 6 seeds; two FT tasks:
nested (k_ft = 5, all shared with PT) and new features (k_ft = 5, overlap 0). Every job is one
`ptft-dln experiment=dln/ll_rescale ...` in-process with the six seeds batched; PT is trained once per
seed and shared by every job through the PT store (the first job trains it).

Outputs (--out, default results/ll_dln_rescale_v1/): ll_dln_rescale.csv (one row per task, arm, n_ft and seed: FT test
MSE, status, steps, restarts, the lr that finished, PT status / steps / final train MSE),
ll_dln_rescale_summary.csv (per task, arm and n_ft: mean and 95% CI (Student t over seeds) of the test
MSE, and of log10 of it), ll_dln_rescale_paired.csv (each arm against s = 1, paired by seed: mean and 95% CI
of log10(error ratio), seeds where the arm is lower) and ll_dln_rescale.png (FT test MSE vs n_FT, one line per s, STL dashed, log y,
one panel per task). The suite's replica theory is not drawn: it assumes an exact (infinitely
trained) PT, the paper's "sum" re-initialisation (w+ = w-) and Gaussian teacher values, and none of the
three holds here (see results/ll_dln_rescale_v1/README.md).
"""
from __future__ import annotations

import argparse
import csv
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ptft.analysis.dln_sims import _timed_group, ci95, worker_init

ARMS = [("s=1", 1.0), ("s=0.1", 0.1), ("s=0.01", 0.01), ("s=0.001", 0.001), ("STL", None)]
TASKS = {"nested": 5, "new": 0}  # dln.overlap of the k_ft = 5 FT coordinates with the PT support
N_FT = (16, 32, 64, 128)
SEEDS = [0, 1, 2, 3, 4, 5]
HALVES = ([0, 1, 2], [3, 4, 5])  # how the first points of the study were run (two jobs per point)


def arm_overrides(s: float | None) -> list[str]:
    if s is None:
        return ["dln.mode=stl"]
    return [f"dln.w_rescale={s!r}", f"dln.readout_const={1e-3 * s!r}"]


def jobs(store: str) -> list[tuple[tuple, list[str]]]:
    """(key, overrides) of every job: one job per point with the 6 seeds batched (a step costs about the
    same for 3 or 6 members at these sizes), or the point's two 3-seed jobs where both already finished."""
    from ptft import app
    from ptft.dln.main import scientific
    from ptft.train.store import RunDir

    out = []
    for task, overlap in TASKS.items():
        for n in N_FT:
            for arm, s in ARMS:
                base = ["experiment=dln/ll_rescale", f"dln.overlap={overlap}", f"dln.n_ft={n}", f"store.root={store}",
                        "wandb.mode=disabled", *arm_overrides(s)]
                halves = [[*base, f"dln.seeds={h}"] for h in HALVES]
                if all(RunDir(store, "dln", scientific(app.compose("dln", h))).finished for h in halves):
                    out += [((task, arm, n, tuple(h)), ov) for h, ov in zip(HALVES, halves)]
                else:
                    out.append(((task, arm, n, tuple(SEEDS)), [*base, f"dln.seeds={SEEDS}"]))
    return out


def run(store: str, workers: int) -> list[dict]:
    rows = []
    t0 = time.time()
    todo = jobs(store)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=worker_init) as ex:
        futs = {ex.submit(_timed_group, ov): key for key, ov in todo}
        for i, f in enumerate(as_completed(futs), 1):
            (task, arm, n, _), (res, cpu) = futs[f], f.result()
            (r,) = res
            for m in r.get("members", [r]):
                rows.append({"task": task, "arm": arm, "n_ft": n, **{k: m.get(k) for k in COLS}})
            print(f"[{time.time() - t0:7.0f} s] {i}/{len(todo)} {task} {arm} n={n}: "
                  f"test_mse {np.mean([m['test_mse'] for m in r.get('members', [r])]):.3g} ({cpu:.0f} CPU s)",
                  flush=True)
    return rows


COLS = ("seed", "test_mse", "status", "steps", "restarts", "lr_final", "pt_status", "pt_steps", "pt_train_mse")


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for task in TASKS:
        for arm, _ in ARMS:
            for n in N_FT:
                sel = [r for r in rows if r["task"] == task and r["arm"] == arm and r["n_ft"] == n]
                if not sel:
                    continue
                x = np.array([float(r["test_mse"]) for r in sel])
                lx = np.log10(x)
                out.append({"task": task, "arm": arm, "n_ft": n, "seeds": len(x), "mean": x.mean(), "ci95": ci95(x),
                            "log10_mean": lx.mean(), "log10_ci95": ci95(lx), "median": float(np.median(x)),
                            "n_ok": sum(r["status"] == "ok" for r in sel),
                            "restarts": sum(int(r["restarts"] or 0) for r in sel)})
    return out


def paired(rows: list[dict]) -> list[dict]:
    """Each arm against s = 1, paired by seed (same PT, same FT data): the mean of log10(err_arm / err_s=1)
    over seeds with its 95% CI, and how many seeds the arm has the lower error."""
    err = {(r["task"], r["arm"], r["n_ft"], r["seed"]): float(r["test_mse"]) for r in rows}
    out = []
    for task in TASKS:
        for arm, _ in ARMS[1:]:
            for n in N_FT:
                seeds = [sd for (t, a, m, sd) in err if (t, a, m) == (task, arm, n) and (task, "s=1", n, sd) in err]
                if not seeds:
                    continue
                d = np.array([np.log10(err[(task, arm, n, sd)] / err[(task, "s=1", n, sd)]) for sd in seeds])
                out.append({"task": task, "arm": arm, "minus": "s=1", "n_ft": n, "seeds": len(d),
                            "log10_ratio_mean": d.mean(), "log10_ratio_ci95": ci95(d), "n_lower": int((d < 0).sum())})
    return out


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")


def figure(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 3.8), sharey=True)
    for ax, task in zip(axes, TASKS):
        for arm, s in ARMS:
            sel = [r for r in summary if r["task"] == task and r["arm"] == arm]
            if not sel:
                continue
            n = [r["n_ft"] for r in sel]
            # geometric mean with its 95% CI (the errors span orders of magnitude across seeds)
            m = np.array([r["log10_mean"] for r in sel])
            h = np.array([r["log10_ci95"] for r in sel])
            ax.errorbar(n, 10**m, yerr=[10**m - 10 ** (m - h), 10 ** (m + h) - 10**m], marker="o", capsize=3,
                        ls="--" if s is None else "-", color="k" if s is None else None, label=arm)
        ax.set(xscale="log", yscale="log", xlabel="n_FT", title=f"{task} FT task (k_ft = 5, overlap "
                                                                  f"{TASKS[task]})")
        ax.set_xticks(N_FT, [str(n) for n in N_FT])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].set_ylabel("FT test MSE (geometric mean, 95% CI)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"LL DLN rescaling: D = 1000, PT on 1024 samples, {summary[0]['seeds']} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default="runs/ll_dln")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/ll_dln_rescale_v1"))
    a = ap.parse_args()
    rows = run(a.store, a.workers)
    rows.sort(key=lambda r: (list(TASKS).index(r["task"]), [x for x, _ in ARMS].index(r["arm"]), r["n_ft"], r["seed"]))
    a.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, a.out / "ll_dln_rescale.csv")
    summary = summarise(rows)
    write_csv(summary, a.out / "ll_dln_rescale_summary.csv")
    write_csv(paired(rows), a.out / "ll_dln_rescale_paired.csv")
    figure(summary, a.out / "ll_dln_rescale.png")


if __name__ == "__main__":
    main()
