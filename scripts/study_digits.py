"""The knob study on sklearn's handwritten digits (issue #14): runs, tidy CSV, figures, verdicts.

    OMP_NUM_THREADS=1 python scripts/study_digits.py            # runs (skips finished ones), then the report
    python scripts/study_digits.py --report-only                 # report from the store only

Runs: the four presets conf/experiment/digits/*.yaml (10 seeds each, n_ft 4, 10, 20, 50) and STL, as two
chains of `ptft-finetune -m` jobs in two processes (one CPU thread each), all in ONE store (--store), so
the pretraining of a (kappa, scale, seed) is trained once and found by hash by every FT-side value.
Report (results/digits_knobs_v1/): `ptft-aggregate` -> digits_runs.csv; `ptft-plot` per knob -> digits_<knob>.png (+ .csv, .md);
verdicts -> digits_verdict.md / .csv: per knob and n_ft, the paired difference (same seed: same class split,
same FT images) between a knob value and the reference value 1, mean and 95% t-interval over seeds.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# (knob key, figure name, preset)
KNOBS = [("init.kappa", "kappa", "digits/relative_scale"), ("init.scale", "scale", "digits/absolute_scale"),
         ("ft.readout_scale", "readout", "digits/readout_scale"), ("ft.rescale", "rescale", "digits/rescale")]
REFERENCE = {"init.kappa": 1.0, "init.scale": 1.0, "ft.readout_scale": 1.0, "ft.rescale": 1.0}
# the paper's direction for each knob: (value, sign of (value - reference) predicted, n_ft where it is claimed)
CLAIMS = {"init.kappa": ("kappa < 1 helps", {0.25: +1, 0.5: +1, 2.0: -1}, None),
          "init.scale": ("larger absolute scale hurts", {0.5: +1, 2.0: -1}, None),
          "ft.readout_scale": ("smaller gamma helps at intermediate n", {0.1: +1, 3.0: -1}, (10, 20)),
          "ft.rescale": ("LL: s < 1 helps", {0.25: +1}, None)}


def chains(store: str, root: str) -> list[list[list[str]]]:
    """Two chains of commands of about equal cost, most important first (the reference runs: chain A);
    together they run the presets' full grids and STL."""
    common = [f"store.root={store}", f"data.root={root}", "wandb.mode=disabled"]
    ft = [str(BIN / "ptft-finetune"), "-m"]
    a = [ft + ["experiment=digits/relative_scale", f"init.kappa={v}"] + common for v in ("1", "0.25", "2")]
    a.append(ft + ["experiment=digits/absolute_scale", "init.scale=2"] + common)
    a.append(ft + ["experiment=digits/relative_scale", "init.kappa=0.5"] + common)
    b = [ft + ["experiment=digits/relative_scale", "ft.mode=stl", "init.kappa=1"] + common,
         ft + ["experiment=digits/rescale", "ft.rescale=0.25"] + common,
         ft + ["experiment=digits/readout_scale", "ft.readout_scale=0.1"] + common,
         ft + ["experiment=digits/readout_scale", "ft.readout_scale=3"] + common,
         ft + ["experiment=digits/absolute_scale", "init.scale=0.5"] + common]
    return [a, b]


def run_chain(cmds: list[list[str]], log: Path, failures: list) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    with log.open("a") as f:
        for cmd in cmds:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            if subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode:
                failures.append(" ".join(cmd))
                return


def run_study(store: str, root: str) -> float:
    if not (REPO / root / "train_32x32.mat").exists():
        subprocess.run([str(BIN / "ptft-data"), "digits", "--root", root], cwd=REPO, check=True)
    logs = REPO / store / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    failures: list = []
    t0 = time.time()
    threads = [threading.Thread(target=run_chain, args=(c, logs / f"chain{i}.log", failures))
               for i, c in enumerate(chains(store, root))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    print(f"[study] runs done in {wall:.0f} s wall (logs: {logs})", flush=True)
    if failures:
        sys.exit("[study] failed: " + "; ".join(failures))
    return wall


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def t95(k: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, k - 1)) if k > 1 else math.nan


def mean_ci(x) -> tuple[float, float, int]:
    import numpy as np

    x = np.asarray(x, dtype=float)
    k = len(x)
    half = t95(k) * x.std(ddof=1) / math.sqrt(k) if k > 1 else math.nan
    return float(x.mean()), half, k


def fmt(m: float, h: float) -> str:
    return f"{m:+.3f} [{m - h:+.3f}, {m + h:+.3f}]"


def slice_of(df, knob: str):
    """The fine-tuning rows of one knob's sweep: every other knob at its reference value."""
    keep = df["stage"].isin(["finetune", "stl"]) if "stage" in df else df["mode"].notna()
    for other, ref in REFERENCE.items():
        if other != knob:
            keep &= df[other].astype(float) == ref
    return df[keep & (df["status"] == "ok")]


def verdict(sign_ok: int, m: float, h: float) -> str:
    if math.isnan(h) or abs(m) <= h:
        return "not resolved (CI contains 0)"
    return "holds" if (m > 0) == (sign_ok > 0) else "OPPOSITE"


def report(store: str, out: Path) -> None:
    import numpy as np

    from ptft.analysis.aggregate import collect, to_csv, to_frame

    out.mkdir(parents=True, exist_ok=True)
    rows = collect([REPO / store])
    to_csv(rows, out / "digits_runs.csv")
    df = to_frame(rows)
    from ptft.analysis.plot import main as ptft_plot  # = the `ptft-plot` command

    for knob, short, _ in KNOBS:
        where = [a for o, r in REFERENCE.items() if o != knob for a in ("--where", f"{o}={r:g}")]
        if ptft_plot([str(REPO / store), "--hue", knob, *where, "--out", str(out / f"digits_{short}.png")]):
            sys.exit(f"[study] ptft-plot failed for {knob}")

    ft = df[df["mode"].isin(["finetune", "stl"]) & (df["status"] == "ok")].copy()
    for k in REFERENCE:
        ft[k] = ft[k].astype(float)
    lines, csv_rows = [], []
    # PT test accuracy per pretraining config
    pt = df[(df["stage"] == "pretrain")] if "stage" in df else df.iloc[0:0]
    lines.append("PT test accuracy (8 digits; mean [95% CI] over seeds, status):\n")
    lines.append("| init.kappa | init.scale | PT test acc | n | statuses |\n|---|---|---|---|---|")
    for (kap, sc), g in pt.groupby([pt["init.kappa"].astype(float), pt["init.scale"].astype(float)]):
        m, h, k = mean_ci(g.loc[g["status"] == "ok", "test_acc"])
        st = ", ".join(f"{s}: {c}" for s, c in g["status"].value_counts().items())
        lines.append(f"| {kap:g} | {sc:g} | {m:.3f} [{m - h:.3f}, {m + h:.3f}] | {k} | {st} |")
    # PT->FT (all knobs at 1) vs STL
    base = slice_of(ft, "init.kappa")
    lines.append("\nPT->FT (all knobs at 1) minus STL, paired by seed:\n")
    lines.append("| n_ft | PT->FT | STL | difference [95% CI] | verdict |\n|---|---|---|---|---|")
    for n, g in base.groupby("n_ft"):
        a = g[(g["mode"] == "finetune") & (g["init.kappa"] == 1)].set_index("seed")["test_acc"]
        b = g[g["mode"] == "stl"].set_index("seed")["test_acc"]
        d = (a - b).dropna()
        m, h, k = mean_ci(d)
        lines.append(f"| {int(n)} | {a.mean():.3f} | {b.mean():.3f} | {fmt(m, h)} (n={k}) | PT->FT beats STL: "
                     f"{verdict(+1, m, h)} |")
        csv_rows.append(dict(knob="pt_vs_stl", value="finetune", reference="stl", n_ft=int(n), mean_value=a.mean(),
                             mean_reference=b.mean(), diff=m, ci95=h, n_seeds=k, verdict=verdict(+1, m, h)))
    # per knob
    for knob, short, _ in KNOBS:
        claim, signs, where_n = CLAIMS[knob]
        s = slice_of(ft, knob)
        s = s[s["mode"] == "finetune"]
        lines.append(f"\n**{knob}** (paper: {claim}{'; claimed at n_ft ' + str(where_n) if where_n else ''}); "
                     f"value minus {knob}=1, paired by seed:\n")
        vals = sorted(v for v in signs if (s[knob] == v).any())  # the values that were run
        lines.append("| n_ft | " + " | ".join(f"{knob}={v:g}: acc" for v in [*vals, 1.0]) + " | "
                     + " | ".join(f"{v:g} - 1 [95% CI]" for v in vals) + " |")
        lines.append("|---" * (2 * len(vals) + 2) + "|")
        for n, g in s.groupby("n_ft"):
            ref = g[g[knob] == 1.0].set_index("seed")["test_acc"]
            accs, diffs = [], []
            for v in vals:
                x = g[g[knob] == v].set_index("seed")["test_acc"]
                m, h, k = mean_ci((x - ref).dropna())
                accs.append(f"{x.mean():.3f}")
                diffs.append(f"{fmt(m, h)}: {verdict(signs[v], m, h)}")
                csv_rows.append(dict(knob=knob, value=v, reference=1.0, n_ft=int(n), mean_value=x.mean(),
                                     mean_reference=ref.mean(), diff=m, ci95=h, n_seeds=k,
                                     verdict=verdict(signs[v], m, h)))
            lines.append(f"| {int(n)} | " + " | ".join(accs + [f"{ref.mean():.3f}"]) + " | " + " | ".join(diffs) + " |")
    # diagnostics: relative movement of the early stages, kappa = 0.25 vs 1
    s = slice_of(ft, "init.kappa")
    s = s[s["mode"] == "finetune"]
    lines.append("\nDiagnostics (kappa sweep): relative movement ||W_end - W_start|| / ||W_start|| per stage, "
                 "mean over seeds and n_ft:\n")
    stages = ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
    lines.append("| init.kappa | " + " | ".join(stages) + " |\n|---" * 1 + "|---" * len(stages) + "|")
    for v, g in s.groupby("init.kappa"):
        lines.append(f"| {v:g} | " + " | ".join(f"{g[f'diag/movement/{st}'].mean():.4f}" for st in stages) + " |")
    (out / "digits_verdict.md").write_text("\n".join(lines) + "\n")
    import csv

    with (out / "digits_verdict.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
        w.writeheader()
        w.writerows({k: (f"{v:.6g}" if isinstance(v, (float, np.floating)) else v) for k, v in r.items()}
                    for r in csv_rows)
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="runs/digits")
    p.add_argument("--data-root", default="data/digits")
    p.add_argument("--out", default="results/digits_knobs_v1")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args()
    if not a.report_only:
        run_study(a.store, a.data_root)
    report(a.store, REPO / a.out)


if __name__ == "__main__":
    main()
