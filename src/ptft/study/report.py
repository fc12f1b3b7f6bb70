"""A study's outputs from its runs table: summary.csv, verdicts.csv, README.md and figure.png.

Only runs with status ok (and, where the table has pt_status, whose pretraining met its criterion) enter
the statistics; the README says how many runs each arm lost and why.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ptft.analysis import stats
from ptft.study.spec import StudySpec, looks
from ptft.train.store import atomic_write_text


def usable(df, spec: StudySpec):
    """The rows that enter the statistics: status ok, a finite metric (> 0 on a log scale), PT criterion met."""
    import pandas as pd

    v = pd.to_numeric(df.get(spec.metric.name), errors="coerce") if spec.metric.name in df else None
    if v is None:
        return df.iloc[0:0]
    ok = (df["status"].astype(str) == "ok") & np.isfinite(v)
    if spec.metric.scale == "log":
        ok &= v > 0
    if spec.pt.status in df:
        ok &= df[spec.pt.status].isna() | (df[spec.pt.status].astype(str).isin(["ok", ""]))
    out = df[ok].copy()
    out["_y"] = stats.effect(v[ok], spec.metric.scale, spec.metric.better)
    return out


def panels(spec: StudySpec) -> list[str]:
    """The panel values as they appear in the table ("" when the study has no panel axis)."""
    return [str(v) for v in spec.panel.values] if spec.panel.key else [""]


def _at(df, arm: str, panel: str, x: float):
    p = df["panel"].fillna("").astype(str) if "panel" in df else ""
    return df[(df["arm"] == arm) & (p == panel) & np.isclose(df["x"].astype(float), x)]


def _series(df, arm: str, panel: str, x: float):
    sel = _at(df, arm, panel, x)
    rep = sel["replicate"].fillna("").astype(str) if "replicate" in sel else ""
    return sel.assign(_rep=rep).set_index(["seed", "_rep"])["_y"]


def level(spec: StudySpec) -> float:
    return stats.look_level(spec.alpha, len(looks(spec.seeds)))


def verdict_rows(df, spec: StudySpec) -> list[dict]:
    """One row per (prediction, x): the paired difference arm - baseline (positive = arm better, in the scale
    of the metric's differences) with its sequential interval, delta and verdict."""
    use = usable(df, spec)
    lev = level(spec)
    out = []
    for pr in spec.predictions:
        base = pr.baseline or spec.baseline
        xs = [x for x in spec.x.values if (pr.x_min is None or x >= pr.x_min) and (pr.x_max is None or x <= pr.x_max)]
        pans = [p for p in panels(spec) if pr.panels is None or p in {str(v) for v in pr.panels}]
        for panel, x in ((p, x) for p in pans for x in xs):
            d = stats.paired_per_seed(_series(use, pr.arm, panel, x), _series(use, base, panel, x))
            j = stats.judge(d.to_numpy(), pr.delta, pr.expect, lev)
            reps = _at(use, pr.arm, panel, x).groupby("seed").size()
            out.append({"prediction": f"{pr.arm} {pr.expect} than {base}", "arm": pr.arm, "baseline": base,
                        "panel": panel, "x": x, "diff": j["diff"], "lo": j["lo"], "hi": j["hi"], "delta": pr.delta,
                        "seeds": j["seeds"], "replicates": int(reps.max()) if len(reps) else 0,
                        "level": lev, "detectable": j["detectable"], "scale": spec.metric.scale,
                        "verdict": j["verdict"]})
    return out


def summary_rows(df, spec: StudySpec) -> list[dict]:
    """One row per (arm, x): runs planned-and-present, usable runs, seeds, the mean over seeds of the metric with
    its 95% interval (over per-seed means), and the variance split between seeds and between replicates."""
    import pandas as pd

    use = usable(df, spec)
    out = []
    for panel, arm, x in ((p, a, x) for p in panels(spec) for a in spec.arms for x in spec.x.values):
        allr, sel = _at(df, arm, panel, x), _at(use, arm, panel, x)
        y = pd.to_numeric(sel[spec.metric.name], errors="coerce")
        log = spec.metric.scale == "log"  # geometric mean and its interval, from the logs
        yv = np.log(y) if log else y
        per_seed = yv.groupby(sel["seed"]).mean()
        m, lo, hi = (np.exp(v) if log else v for v in stats.interval(per_seed.to_numpy(), 0.95))
        between, within = stats.variance_split(yv.to_numpy(), sel["seed"].to_numpy())
        row = {"arm": arm, "panel": panel, "x": x, "runs": len(allr), "usable": len(sel), "seeds": len(per_seed),
               "mean": m, "ci95_lo": lo, "ci95_hi": hi, "var_between_seeds": between,
               "var_between_replicates": within}
        if spec.pt.status in allr:
            row["pt_met"] = int(allr[spec.pt.status].astype(str).eq("ok").sum())
        out.append(row)
    return out


def pt_rows(df, spec: StudySpec) -> list[dict]:
    """Per (arm, panel): the pretrainings behind the fine-tunings (one per seed): how many met the criterion,
    steps taken (mean and 95% interval over seeds) and the quality reached. Empty without PT columns."""
    import pandas as pd

    if spec.pt.status not in df:
        return []
    out = []
    for panel, arm in ((p, a) for p in panels(spec) for a in spec.arms):
        p = df["panel"].fillna("").astype(str) if "panel" in df else ""
        sel = df[(df["arm"] == arm) & (p == panel)].drop_duplicates("seed")
        sel = sel[sel[spec.pt.status].notna() & (sel[spec.pt.status].astype(str) != "")]
        if sel.empty:
            continue
        steps = pd.to_numeric(sel.get(spec.pt.steps), errors="coerce") if spec.pt.steps in sel else None
        qual = pd.to_numeric(sel.get(spec.pt.quality), errors="coerce") if spec.pt.quality in sel else None
        m, lo, hi = stats.interval(steps.dropna().to_numpy()) if steps is not None else (math.nan,) * 3
        out.append({"arm": arm, "panel": panel, "pt_seeds": len(sel),
                    "pt_met": int(sel[spec.pt.status].astype(str).eq("ok").sum()),
                    "pt_steps_mean": m, "pt_steps_ci95_lo": lo, "pt_steps_ci95_hi": hi,
                    "pt_quality_mean": float(qual.mean()) if qual is not None else math.nan,
                    "pt_quality_min": float(qual.min()) if qual is not None else math.nan})
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def md_table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def figure(df, spec: StudySpec, verdicts: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summary_rows(df, spec)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    for arm, panel in ((a, p) for p in panels(spec) for a in spec.arms):
        r = [s for s in summ if s["arm"] == arm and s["panel"] == panel and s["seeds"]]
        if not r:
            continue
        label = arm + (" (baseline)" if arm == spec.baseline else "") + (f", {spec.panel.key}={panel}" if panel else "")
        x = np.array([s["x"] for s in r])
        m = np.array([s["mean"] for s in r])
        lo = np.array([s["ci95_lo"] for s in r])
        hi = np.array([s["ci95_hi"] for s in r])
        err = np.nan_to_num(np.vstack([m - lo, hi - m]))
        ax.errorbar(x, m, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xlabel(spec.x.key)
    mean = "geometric mean" if spec.metric.scale == "log" else "mean"
    ax.set_ylabel(f"{spec.metric.name} ({mean} over seeds, 95% CI)")
    if spec.metric.scale == "log":
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax = axes[1]
    for name, panel in dict.fromkeys((v["prediction"], v["panel"]) for v in verdicts):
        r = [v for v in verdicts if v["prediction"] == name and v["panel"] == panel]
        x = np.array([v["x"] for v in r])
        m = np.array([v["diff"] for v in r])
        err = np.nan_to_num(np.vstack([m - np.array([v["lo"] for v in r]), np.array([v["hi"] for v in r]) - m]))
        ax.errorbar(x, m, yerr=err, marker="s", capsize=3, label=name + (f", {spec.panel.key}={panel}" if panel else ""))
    deltas = {v["delta"] for v in verdicts}
    for d in deltas:
        ax.axhspan(-d, d, color="0.9", zorder=0)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel(spec.x.key)
    scale = "log " if spec.metric.scale == "log" else ""
    ax.set_ylabel(f"paired {scale}difference, + = arm better")
    ax.set_title(f"{100 * level(spec):.2f}% intervals (grey: +-delta)", fontsize=9)
    if verdicts:
        ax.legend(fontsize=7)
    fig.suptitle(spec.description, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def pt_section(df, spec: StudySpec) -> list[str]:
    rows = pt_rows(df, spec)
    if not rows:
        return []
    return ["## Pretraining", "",
            f"One pretraining per (arm, seed): `pt_met` = how many met the PT criterion (`{spec.pt.status}` = ok); "
            "only fine-tunings from those enter the comparisons above. Steps to the criterion: mean and 95% interval "
            "over seeds; a knob that slows pretraining is a finding, not a confound.", "",
            md_table(rows, list(rows[0])), ""]


def write(df, spec: StudySpec, out: Path, command: str, runtime: Optional[str] = None) -> list[Path]:
    """Write summary.csv, verdicts.csv, figure.png and README.md into `out`; returns the paths."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    verdicts = verdict_rows(df, spec)
    summ = summary_rows(df, spec)
    paths = [out / "summary.csv", out / "verdicts.csv", out / "figure.png", out / "README.md"]
    atomic_write_text(paths[0], pd.DataFrame(summ).to_csv(index=False, lineterminator="\n", float_format="%.6g"))
    vcols = ["prediction", "arm", "baseline", "panel", "x", "diff", "lo", "hi", "delta", "seeds", "replicates", "level",
             "detectable", "scale", "verdict"]
    atomic_write_text(paths[1], pd.DataFrame(verdicts, columns=vcols).to_csv(
        index=False, lineterminator="\n", float_format="%.6g"))
    figure(df, spec, verdicts, paths[2])
    decided = sum(v["verdict"] in stats.DECIDED for v in verdicts)
    scale = " of the log" if spec.metric.scale == "log" else ""
    text = [f"# Study `{spec.name}`", "", spec.description, "",
            f"Command: `{command}`" + (f" ({runtime})" if runtime else ""), "",
            f"Metric: `{spec.metric.name}` ({spec.metric.better} is better); x: `{spec.x.key}`; baseline arm: "
            f"`{spec.baseline}`; seeds planned {spec.seeds.first} first, +{spec.seeds.batch} per look, at most "
            f"{spec.seeds.max}.", "",
            f"## Verdicts ({decided} of {len(verdicts)} decided)", "",
            f"`diff` = mean over seeds of the paired difference{scale} of the metric, arm - baseline, signed so that "
            f"+ means the arm is better; [lo, hi] its Student-t interval at level {100 * level(spec):.2f}% (5% split "
            f"over {len(looks(spec.seeds))} planned looks, Bonferroni); `detectable` = the smallest effect these seeds "
            f"would detect with 80% power. Verdict words: docs/studies.md.", "",
            md_table(verdicts, ["prediction", *(["panel"] if spec.panel.key else []), "x", "diff", "lo", "hi", "delta", "seeds", "replicates", "detectable",
                                "verdict"]), "",
            "## Per arm", "",
            f"{'Geometric mean' if spec.metric.scale == 'log' else 'Mean'} of `{spec.metric.name}` over seeds (95% t "
            f"interval over per-seed means{', of the logs' if spec.metric.scale == 'log' else ''}); runs = rows in the table, "
            f"usable = status ok" + (" and PT criterion met" if "pt_status" in df else "") + "; variance split: "
            "between PT seeds vs between FT replicates of a seed" + (" (of the logs)" if spec.metric.scale == "log"
                                                                     else "") + ".", "",
            md_table(summ, list(summ[0]) if summ else []), "",
            *pt_section(df, spec),
            "![figure](figure.png)", "",
            *([f"More on this study (what the hook writes, history, timings): [NOTES.md](NOTES.md).", ""]
              if (out / "NOTES.md").is_file() else [])]
    atomic_write_text(paths[3], "\n".join(text))
    if spec.hook:
        run_hook(spec.hook, df, spec, out)
    return paths


def run_hook(hook: str, df, spec: StudySpec, out: Path) -> None:
    import importlib

    from ptft import ConfigError

    mod, _, fn = hook.partition(":")
    try:
        f = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"study {spec.name}: hook={hook!r} cannot be loaded ({e}); give module:function") from None
    f(df, spec, out)
