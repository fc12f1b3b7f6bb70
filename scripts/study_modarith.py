"""The CPU knob study of the arithmetic track (issue: Transformers on modular arithmetic; results/modarith_knobs_v1/).

    python scripts/study_modarith.py --store runs/modarith_study --workers 2      # all jobs, then the figures
    python scripts/study_modarith.py --store runs/modarith_study --report-only   # figures/CSV from the store

Preset `arith/modarith_cpu` (p = 47, d_model 64, PT on add with 40% of the pairs, AdamW). Fine-tuning pairs:
`perm_add` (reuses every PT feature, only the readout changes) and `mul` (needs new features). Knobs, one
at a time around the baseline (kappa = scale = gamma = 1): init.kappa in {0.25, 0.5, 1, 2}, init.scale in
{0.5, 1, 2}, ft.readout_scale in {0.1, 1, 3}, and STL (no pretraining, default init). Each job is one
`ptft-finetune` process running every n_ft of one (setting, seed) in-process, seed after seed; a seed's pretraining is found
by hash in the store (trained by the first job that needs it, under a lock). Jobs that train a new
pretraining go first, so two workers never wait on each other's lock. Finished runs are skipped: rerunning
the command resumes an interrupted study.

Outputs (--out, default results/modarith_knobs_v1/): modarith_study.csv (ptft-aggregate of the store: one row per run,
pretrainings included), modarith_<knob>.png / .csv / .md (ptft-plot: FT test accuracy vs n_ft, 95% CI over
seeds, STL dashed, one panel per FT op), modarith_<knob>_movement.png / _cka.png (+ .csv: ptft-plot
--stages: each stage's relative movement / CKA start-vs-end against the knob, one row per n_ft, STL dashed),
modarith_study_summary.csv (per knob value, op and n_ft:
mean, 95% CI, seeds; plus PT test accuracy and steps_to_95 per PT setting) and modarith_paired.csv (each
arm minus the baseline, paired by seed, op and n_ft: mean difference and its 95% CI).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BIN = Path(sys.executable).parent
OPS = ("perm_add", "mul")
KNOBS = {"init.kappa": (0.25, 0.5, 1, 2), "init.scale": (0.5, 1, 2), "ft.readout_scale": (0.1, 1, 3)}


def jobs(n_ft: list[int], seeds: list[int]) -> list[list[str]]:
    """One argument list per ptft-finetune job (one seed, every n_ft in-process), seed by seed, so an
    interrupted study has complete seeds; within a seed the jobs that pretrain something new come first."""
    settings: list[list[str]] = []
    for key, vals in KNOBS.items():
        for v in vals:
            if v != 1 or key == "init.kappa":  # the baseline (all 1) once
                settings.append([f"{key}={v}"])
    settings.append(["ft.mode=stl"])
    pt_side = [s for s in settings if s[0].startswith("init.")]
    ft_side = [s for s in settings if not s[0].startswith("init.")]
    out = []
    for seed in seeds:
        common = ["experiment=arith/modarith_cpu", "name=modarith_study", f"runs.n_ft=[{','.join(map(str, n_ft))}]",
                  f"runs.seeds=[{seed}]"]
        out += [[*common, f"data.ft_op={OPS[0]}", *s] for s in pt_side]      # each trains its pretraining
        out += [[*common, f"data.ft_op={op}", *s] for s in pt_side for op in OPS[1:]]
        out += [[*common, f"data.ft_op={op}", *s] for s in ft_side for op in OPS]
    return out


def run_all(store: Path, workers: int, n_ft: list[int], seeds: list[int], extra: list[str]) -> None:
    todo = jobs(n_ft, seeds)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    t0 = time.time()

    def one(i_args: tuple[int, list[str]]) -> None:
        i, args = i_args
        cmd = [str(BIN / "ptft-finetune"), *args, f"store.root={store}", *extra]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        status = "ok" if p.returncode == 0 else f"FAILED ({p.returncode})"
        print(f"[{time.time() - t0:7.0f} s] job {i + 1}/{len(todo)} {status}: {' '.join(args[3:])}", flush=True)
        if p.returncode != 0:
            print(p.stderr[-2000:], file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, enumerate(todo)))
    print(f"study: {len(todo)} jobs in {time.time() - t0:.0f} s with {workers} workers", flush=True)


def report(store: Path, out: Path, seeds: list[int]) -> None:
    import numpy as np
    import pandas as pd
    from scipy import stats

    from ptft.analysis.aggregate import collect, to_csv
    from ptft.analysis.plot import main as plot_main

    out.mkdir(parents=True, exist_ok=True)
    def seed_of(r: dict) -> int:  # a fine-tuning's seed, a pretraining's pretrain.seed (the same in this preset)
        v = r.get("seed") if r.get("stage") == "finetune" else r.get("pretrain.seed")
        return int(v) if v not in (None, "") else -1

    rows = [r for r in collect([store]) if seed_of(r) in seeds]  # the requested seeds only
    df = pd.DataFrame(rows)
    # one run per setting: a store that outlived a change of the run identity can hold an older twin of a
    # setting (seed 1's baseline and kappa = 2 PT here); keep the most recent run of each
    n0 = len(df)
    df["_when"] = pd.to_datetime(df.get("prov_end"), errors="coerce", utc=True)
    ft_key, pt_key = ["ft.mode", *KNOBS, "data.ft_op", "n_ft", "seed"], ["init.kappa", "init.scale", "pretrain.seed"]
    df = pd.concat([df[df["stage"] == st].sort_values("_when", na_position="first").drop_duplicates(key, keep="last")
                    for st, key in (("finetune", ft_key), ("pretrain", pt_key))])
    if len(df) < n0:
        print(f"{n0 - len(df)} older duplicate run(s) of the same setting left out", flush=True)
    keep = set(df["run_dir"])
    to_csv([r for r in rows if r["run_dir"] in keep], out / "modarith_study.csv")
    for key, vals in KNOBS.items():
        where = [a for k in KNOBS if k != key for a in ("--where", f"{k}=1")]
        plot_main([str(out / "modarith_study.csv"), "--hue", key, "--panel", "data.ft_op", *where,
                   "--out", str(out / f"modarith_{key.split('.')[-1]}.png")])
        for diag in ("movement", "cka"):  # per-stage diagnostics against the knob (docs/diagnostics.md)
            plot_main([str(out / "modarith_study.csv"), "--hue", key, "--panel", "data.ft_op", *where,
                       "--stages", f"diag/{diag}", "--out", str(out / f"modarith_{key.split('.')[-1]}_{diag}.png")])
    ft = df[df["stage"] == "finetune"]
    lines = []
    for key, vals in [*KNOBS.items(), ("ft.mode", ("stl",))]:
        for v in vals:
            sel = ft[ft["ft.mode"] == "stl"] if key == "ft.mode" else ft[(ft["ft.mode"] == "finetune") & np.isclose(
                ft[key].astype(float), v) & np.all([np.isclose(ft[k].astype(float), 1) for k in KNOBS if k != key],
                                                   axis=0)]
            for (op, n), g in sel.groupby(["data.ft_op", "n_ft"]):
                acc = g.loc[g["status"] == "ok", "test_acc"].astype(float).to_numpy()
                half = stats.t.ppf(0.975, len(acc) - 1) * acc.std(ddof=1) / np.sqrt(len(acc)) if len(acc) > 1 else np.nan
                lines.append({"knob": key, "value": v, "ft_op": op, "n_ft": int(n), "seeds": len(acc),
                              "mean": acc.mean(), "ci95": half, "pt_test_acc_mean": g["pt_test_acc"].astype(float).mean()
                              if key != "ft.mode" else np.nan,
                              "movement_embed": g["diag/movement/embed"].astype(float).mean(),
                              "movement_attn": g["diag/movement/attn"].astype(float).mean(),
                              "movement_mlp": g["diag/movement/mlp"].astype(float).mean(),
                              "cka_mlp": g["diag/cka/mlp"].astype(float).mean()})
    summary = pd.DataFrame(lines)
    pt = df[df["stage"] == "pretrain"]
    pts = []
    for key in ("init.kappa", "init.scale"):
        for v, g in pt.groupby(key):
            other = [k for k in ("init.kappa", "init.scale") if k != key][0]
            g = g[np.isclose(g[other].astype(float), 1)]
            pts.append({"knob": f"PT {key}", "value": v, "ft_op": "add (PT)", "n_ft": 0, "seeds": len(g),
                        "mean": g["test_acc"].astype(float).mean(),
                        "ci95": np.nan, "steps_to_95_mean": g["steps_to_95"].astype(float).mean(),
                        "grokked": int((g["test_acc"].astype(float) >= 0.95).sum())})
    pd.concat([summary, pd.DataFrame(pts)]).to_csv(out / "modarith_study_summary.csv", index=False,
                                                   float_format="%.4g")
    paired(ft).to_csv(out / "modarith_paired.csv", index=False, float_format="%.4g")
    print(f"wrote {out}/modarith_study.csv, modarith_study_summary.csv, modarith_paired.csv and the figures",
          flush=True)


def paired(ft):
    """Each arm minus the baseline (kappa = c = gamma = 1; PT -> FT minus STL for the baseline itself),
    paired by (seed, op, n_ft): same split, same FT pairs. Mean difference of test accuracy, its 95% CI
    (Student t over seeds) and the seeds."""
    import numpy as np
    import pandas as pd
    from scipy import stats

    ok = ft[ft["status"] == "ok"]
    ones = np.all([np.isclose(ok[k].astype(float), 1) for k in KNOBS], axis=0)
    key = ["seed", "data.ft_op", "n_ft"]
    base = ok[(ok["ft.mode"] == "finetune") & ones].set_index(key)["test_acc"].astype(float)
    arms = [("PT -> FT", "STL", base, ok[ok["ft.mode"] == "stl"].set_index(key)["test_acc"].astype(float))]
    for k, vals in KNOBS.items():
        others = np.all([np.isclose(ok[o].astype(float), 1) for o in KNOBS if o != k], axis=0)
        for v in vals:
            if v != 1:
                sel = ok[(ok["ft.mode"] == "finetune") & others & np.isclose(ok[k].astype(float), v)]
                arms.append((f"{k}={v}", f"{k}=1", sel.set_index(key)["test_acc"].astype(float), base))
    rows = []
    for arm, ref, a, b in arms:
        d = (a - b).dropna()
        for (op, n), g in d.groupby(level=["data.ft_op", "n_ft"]):
            x = g.to_numpy()
            half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else np.nan
            rows.append({"arm": arm, "minus": ref, "ft_op": op, "n_ft": int(n), "seeds": len(x), "diff_mean": x.mean(),
                         "ci_low": x.mean() - half, "ci_high": x.mean() + half,
                         "resolved": bool(len(x) > 1 and abs(x.mean()) > half)})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path("runs/modarith_study"))
    ap.add_argument("--out", type=Path, default=Path("results/modarith_knobs_v1"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-ft", type=int, nargs="+", default=[100, 200, 400, 800])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra ptft-finetune overrides for every job")
    a = ap.parse_args()
    if not a.report_only:
        run_all(a.store.resolve(), a.workers, a.n_ft, a.seeds, a.overrides)
    report(a.store.resolve(), a.out, a.seeds)


if __name__ == "__main__":
    main()
