"""The CPU knob study of the deep track on synthetic ground truths (issue #9 part 2; results/vision_knobs_v1/).

    python scripts/study_vision.py --store runs/vision_knobs --workers 2                    # jobs, then report
    python scripts/study_vision.py --store runs/vision_knobs --report-only                # CSV/figures from the store

Preset `vision/synthetic_knobs` (resnet18_cifar width 4, SVHN-format synthetic set, FT classes 8 and 9 built by
`ptft-data synthetic --ground-truth subset|new|dense`, one data root per ground truth: data/vknobs_<gt>;
--ground-truths picks them, default all three). Knobs one
at a time around the baseline (kappa = scale = gamma = s = 1): init.kappa, init.scale, ft.readout_scale,
LL's ft.rescale (run with ft.bn_recalibrate=true, s = 1 included, since FT lr 0.01 converges in tens of
steps and would otherwise be evaluated with stale BatchNorm statistics, docs/vision.md), and STL. Each job
is one `ptft-finetune` process running every (n_ft, seed) of its setting in-process; a seed's pretraining is
found by hash in the store (trained by the first job that needs it, under a lock).

Jobs run in PRIORITY order (JOBS below: the most informative comparison first, pretraining jobs before the
FT-side jobs that reuse their pretrainings). With --budget-min, no job starts after that many minutes and a
job still running 5 minutes later is killed (its finished runs stay in the store, the rest are missing and
reported as such). Finished runs are skipped: rerunning the command resumes an interrupted study.

Also the bn_recalibrate measurement (issue #9 part 5) on the case documented in docs/vision.md: preset
vision/demo_synthetic (data/synthetic, `ptft-data synthetic --root data/synthetic --format cifar100
--n-train-per-class 30 --n-test-per-class 100 --distractors 1`), n = 10, s = 0.25, train.lr=0.01,
bn_recalibrate false / true, and s = 1 as reference.

Outputs (--out, default results/vision_knobs_v1/): vision_knobs.csv (ptft-aggregate of the store, one row per run,
pretrainings included), vision_knobs_<knob>.png/.csv/.md (ptft-plot, one panel per ground truth),
vision_knobs_summary.csv (per knob value, ground truth and n_ft: mean, 95% CI, seeds, PT test accuracy,
per-stage movement / CKA), vision_knobs_verdict.csv/.md (per prediction of the paper, ground truth and n_ft: the
paired difference with its 95% CI and the verdict) and vision_knobs_bn.csv (the bn_recalibrate measurement).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BIN = Path(sys.executable).parent
GTS = ("subset", "new", "dense")
KNOBS = {"init.kappa": (0.25, 0.5, 1, 2), "init.scale": (0.5, 1, 2), "ft.readout_scale": (0.1, 1, 3),
         "ft.rescale": (0.25, 1)}
RECAL = "ft.bn_recalibrate=true"  # with every ft.rescale job (see docstring)
BN_CASE = ["experiment=vision/demo_synthetic", "name=vision_knobs_bn", "train.lr=0.01", "runs.n_ft=[10]",
           "runs.seeds=[0,1,2,3,4]"]


def _gt(gt: str, root: str) -> list[str]:
    return [f"data.root={root}/vknobs_{gt}"]


def jobs(n_ft: list[int], seeds: list[int], data_dir: str = "data", gts=GTS, bn: bool = True) -> list[list[str]]:
    """One ptft-finetune argument list per job, in priority order (see module docstring)."""
    common = ["experiment=vision/synthetic_knobs", "name=vision_knobs", f"runs.n_ft=[{','.join(map(str, n_ft))}]",
              f"runs.seeds=[{','.join(map(str, seeds))}]"]
    first = [["init.kappa=1"], ["init.kappa=0.25"], ["ft.mode=stl"], ["ft.readout_scale=0.1"],
             ["ft.rescale=0.25", RECAL], ["ft.rescale=1", RECAL]]
    second = [["init.scale=2"], ["ft.readout_scale=3"], ["init.kappa=0.5"], ["init.kappa=2"], ["init.scale=0.5"]]
    def both(settings):
        return [[*common, *_gt(gt, data_dir), *s] for s in settings for gt in gts]
    out = both(first[:2])  # the pretraining jobs of the baseline and kappa = 0.25
    bn_jobs = [[*BN_CASE, "ft.rescale=0.25", "ft.bn_recalibrate=false"],
               [*BN_CASE, "ft.rescale=0.25", "ft.bn_recalibrate=true"], [*BN_CASE, "ft.rescale=1"]] if bn else []
    out += bn_jobs[:1] + both(first[2:3]) + bn_jobs[1:] + both(first[3:])
    return out + both(second)


def run_all(store: Path, workers: int, todo: list[list[str]], extra: list[str], budget_min: float | None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    t0 = time.time()
    deadline = None if budget_min is None else t0 + 60 * budget_min

    def one(i_args: tuple[int, list[str]]) -> None:
        i, args = i_args
        label = " ".join(a for a in args if not a.startswith(("experiment=", "name=", "runs.")))
        if deadline is not None and time.time() > deadline:
            print(f"[{time.time() - t0:7.0f} s] job {i + 1}/{len(todo)} NOT STARTED (budget): {label}", flush=True)
            return
        cmd = [str(BIN / "ptft-finetune"), *args, f"store.root={store}", *extra]
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        try:
            _, err = p.communicate(timeout=None if deadline is None else max(1.0, deadline + 300 - time.time()))
            status = "ok" if p.returncode == 0 else f"FAILED ({p.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGTERM)
            _, err = p.communicate()
            status, err = "KILLED (budget; finished runs kept)", ""
        print(f"[{time.time() - t0:7.0f} s] job {i + 1}/{len(todo)} {status}: {label}", flush=True)
        if p.returncode not in (0, None) and err:
            print(err[-2000:], file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, enumerate(todo)))
    print(f"study: {len(todo)} jobs in {time.time() - t0:.0f} s with {workers} workers", flush=True)


def _ci(acc):
    import numpy as np
    from scipy import stats
    if len(acc) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(acc) - 1) * acc.std(ddof=1) / np.sqrt(len(acc)))


def report(store: Path, out: Path, prefix: str = "vision_knobs") -> None:
    import numpy as np
    import pandas as pd

    from ptft.analysis.aggregate import collect, to_csv
    from ptft.analysis.plot import main as plot_main

    out.mkdir(parents=True, exist_ok=True)
    rows = collect([store])
    df = pd.DataFrame(rows)
    df["ground_truth"] = df["data.root"].astype(str).map(lambda r: Path(r).name.replace("vknobs_", ""))
    main_rows = df["name"] == "vision_knobs"
    to_csv([r for r, m in zip(rows, main_rows) if m], out / f"{prefix}.csv")
    for key in KNOBS:
        where = [a for k in KNOBS if k != key for a in ("--where", f"{k}=1")]
        # the rescale jobs (s = 0.25 and 1) alone carry bn_recalibrate=true (so that figure has no STL line)
        where += ["--where", f"ft.bn_recalibrate={key == 'ft.rescale'}"]
        plot_main([str(out / f"{prefix}.csv"), "--hue", key, "--panel", "data.root", *where,
                   "--out", str(out / f"{prefix}_{key.split('.')[-1]}.png")])
    ft = df[main_rows & (df["stage"] == "finetune")]
    stages = [c.split("/")[-1] for c in df.columns if c.startswith("diag/movement/") and c != "diag/movement/all"]
    lines = []
    for key, vals in [*KNOBS.items(), ("ft.mode", ("stl",))]:
        for v in vals:
            if key == "ft.mode":
                sel = ft[ft["ft.mode"] == "stl"]
            else:
                sel = ft[(ft["ft.mode"] == "finetune") & np.isclose(ft[key].astype(float), v)
                         & np.all([np.isclose(ft[k].astype(float), 1) for k in KNOBS if k != key], axis=0)
                         & (ft["ft.bn_recalibrate"].astype(str).str.lower() == str(key == "ft.rescale").lower())]
            for (gt, n), g in sel.groupby(["ground_truth", "n_ft"]):
                ok = g[g["status"] == "ok"]
                acc = ok["test_acc"].astype(float).to_numpy()
                row = {"knob": key, "value": v, "ground_truth": gt, "n_ft": int(n), "seeds": len(acc),
                       "runs": len(g), "mean": acc.mean() if len(acc) else np.nan, "ci95": _ci(acc),
                       "pt_test_acc_mean": g["pt_test_acc"].astype(float).mean() if "pt_test_acc" in g else np.nan}
                for s in stages:
                    row[f"movement_{s}"] = g[f"diag/movement/{s}"].astype(float).mean()
                    row[f"cka_debiased_{s}"] = g[f"diag/cka_debiased/{s}"].astype(float).mean()
                row["pr_start_layer4"] = g["diag/pr_start/layer4"].astype(float).mean()
                row["pr_end_layer4"] = g["diag/pr_end/layer4"].astype(float).mean()
                lines.append(row)
    pt = df[main_rows & (df["stage"] == "pretrain")]
    for (gt, kappa, scale), g in pt.groupby(["ground_truth", "init.kappa", "init.scale"]):
        acc = g["test_acc"].astype(float).to_numpy()
        lines.append({"knob": "PT", "value": f"kappa={kappa},scale={scale}", "ground_truth": gt, "n_ft": 0,
                      "seeds": len(acc), "runs": len(g), "mean": acc.mean(), "ci95": _ci(acc)})
    pd.DataFrame(lines).to_csv(out / f"{prefix}_summary.csv", index=False, float_format="%.4g")
    verdict(ft, out / f"{prefix}_verdict")
    bn = df[(df["name"] == "vision_knobs_bn") & (df["stage"] == "finetune")]
    if len(bn):
        cols = ["ft.rescale", "ft.bn_recalibrate", "train.lr", "n_ft", "seed", "status", "epochs", "test_acc"]
        bn[cols].sort_values(cols[:5]).to_csv(out / f"{prefix}_bn.csv", index=False, float_format="%.4g")
    print(f"wrote {out}/{prefix}.csv, {prefix}_summary.csv, {prefix}_bn.csv and the figures", flush=True)


# (knob, value the paper predicts is better, value it is compared with); "holds": the paired 95% CI of
# acc(better) - acc(other) lies above 0, "opposite": below 0, "not resolved": it contains 0.
PREDICTIONS = [("init.kappa", 0.25, 1), ("init.kappa", 0.5, 1), ("init.kappa", 1, 2), ("init.scale", 0.5, 1),
               ("init.scale", 1, 2), ("ft.readout_scale", 0.1, 1), ("ft.readout_scale", 1, 3),
               ("ft.rescale", 0.25, 1)]


def _arm(ft, key: str, v: float):
    import numpy as np
    keep = (ft["ft.mode"] == "finetune") & (ft["status"] == "ok") & np.isclose(ft[key].astype(float), v)
    for k in KNOBS:
        if k != key:
            keep &= np.isclose(ft[k].astype(float), 1)
    keep &= ft["ft.bn_recalibrate"].astype(str).str.lower() == str(key == "ft.rescale").lower()
    return ft[keep].set_index(["ground_truth", "n_ft", "seed"])["test_acc"].astype(float)


def verdict(ft, path: Path) -> None:
    """Per prediction, ground truth and n_ft (and 'all': per seed the mean over n_ft): both arms' means with
    95% CIs, the paired difference (same seed: same FT draw and head seed) with its 95% CI, and the verdict."""
    import numpy as np
    import pandas as pd
    rows = []
    for key, better, other in PREDICTIONS:
        a, b = _arm(ft, key, better), _arm(ft, key, other)
        pair = pd.concat({"a": a, "b": b}, axis=1).dropna()
        if pair.empty:
            continue
        for gt, g in pair.groupby(level="ground_truth"):
            groups = [(int(n), h) for n, h in g.groupby(level="n_ft")]
            per_seed = g.groupby(level="seed")  # seeds with every n_ft only
            full = [s for s, h in per_seed if len(h) == g.index.get_level_values("n_ft").nunique()]
            groups.append(("all", per_seed.mean().loc[full]))
            for n, h in groups:
                d = (h["a"] - h["b"]).to_numpy()
                lo, hi = d.mean() - _ci(d), d.mean() + _ci(d)
                rows.append({"knob": key, "better": better, "other": other, "ground_truth": gt, "n_ft": n,
                             "pairs": len(d), "mean_better": h["a"].mean(), "ci_better": _ci(h["a"].to_numpy()),
                             "mean_other": h["b"].mean(), "ci_other": _ci(h["b"].to_numpy()), "diff": d.mean(),
                             "diff_lo": lo, "diff_hi": hi,
                             "verdict": "holds" if lo > 0 else "opposite" if hi < 0 else "not resolved"})
    df = pd.DataFrame(rows)
    df.to_csv(path.with_suffix(".csv"), index=False, float_format="%.4g")
    with open(path.with_suffix(".md"), "w") as f:
        f.write("| prediction | ground truth | n_ft | better arm | other arm | paired diff [95% CI] | verdict |\n")
        f.write("|---|---|---|---|---|---|---|\n")
        for r in df.itertuples():
            f.write(f"| {r.knob} {r.better} > {r.other} | {r.ground_truth} | {r.n_ft} | {r.mean_better:.3f} ± "
                    f"{r.ci_better:.3f} | {r.mean_other:.3f} ± {r.ci_other:.3f} | {r.diff:+.3f} "
                    f"[{r.diff_lo:+.3f}, {r.diff_hi:+.3f}] (n={r.pairs}) | {r.verdict} |\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path("runs/vision_knobs"))
    ap.add_argument("--out", type=Path, default=Path("results/vision_knobs_v1"))
    ap.add_argument("--data", default="data", help="folder holding vknobs_subset/, vknobs_new/")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-ft", type=int, nargs="+", default=[10, 20, 40, 80])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--budget-min", type=float, default=None, help="start no job after this many minutes")
    ap.add_argument("--ground-truths", nargs="+", default=list(GTS), choices=("subset", "new", "dense"),
                    help="the FT ground truths to run (data: DATA/vknobs_<gt>, see results/vision_knobs_v1/README.md)")
    ap.add_argument("--no-bn", action="store_true", help="skip the bn_recalibrate measurement jobs")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra ptft-finetune overrides for every job")
    a = ap.parse_args()
    if not a.report_only:
        missing = [gt for gt in a.ground_truths if not (Path(a.data) / f"vknobs_{gt}").is_dir()]
        if missing:
            ap.error("no data for " + ", ".join(missing) + ": make it with " + "; ".join(
                f"ptft-data synthetic --root {a.data}/vknobs_{gt} --format svhn --n-train-per-class 150 "
                f"--n-test-per-class 50 --distractors 1 --ground-truth {gt} --seed 0" for gt in missing))
        run_all(a.store.resolve(), a.workers, jobs(a.n_ft, a.seeds, a.data, a.ground_truths, bn=not a.no_bn),
                a.overrides, a.budget_min)
    report(a.store.resolve(), a.out)


if __name__ == "__main__":
    main()
