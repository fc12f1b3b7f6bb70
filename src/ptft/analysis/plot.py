"""`ptft-plot`: fine-tuning runs -> the paper's figure and LL's table.

    ptft-plot runs/ --hue ft.rescale --out outputs/rescale.png
    ptft-plot multirun/finetune/2026-... outputs/old.csv --hue init.kappa --where ft.readout_scale=1 --out k.png

PATH is a run store, a sweep directory or a `ptft-aggregate` CSV (any mix; read through
ptft.analysis.aggregate). Kept: fine-tuning rows (mode finetune | stl, or stage finetune); mode=stl rows
are the STL baseline. The figure: --metric (default test_acc) vs n_ft (log x), one line per value of
--hue, mean and 95% Student-t CI over seeds (status ok only), STL as a dashed black line, one panel per
value of --panel (auto: the first of data.ground_truth, data.ft_op, data.name that varies). The number
of seeds per point is in each panel's title (and next to the points that have fewer). A point with a
failed run (status not ok) or a missing seed (one seen elsewhere in the panel) gets a red X and a
console warning naming the runs. Next to FILE: FILE.csv (one row per point: n, mean, SEM, CI,
what is missing) and FILE.md (LL's table: mean +- SEM per n_ft and hue value, STL as a column).

A point pools the runs with the same (panel, hue value, n_ft) over seeds; if another config column
varies inside a point (other than seed and keys tied to it), the sweeps were mixed: the column is
named in a warning; restrict with --where KEY=VALUE.

Per-stage diagnostics against the knob (docs/diagnostics.md):

    ptft-plot results/modarith_knobs_v1/modarith_study.csv --hue init.kappa --stages diag/movement --out kappa_movement.png

--stages PREFIX: the metrics PREFIX/<stage> (one line per stage), x = the --hue value, one column of
panels per --panel value and one row per n_ft; mean and 95% CI over seeds as above, each stage's STL value
as a dashed horizontal line. FILE.csv holds every point with its stage.
"""
from __future__ import annotations

import argparse
import fnmatch
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ptft.analysis.aggregate import collect, to_csv

PANEL_AUTO = ("data.ground_truth", "data.ft_op", "data.name")
FT_MODES = ("finetune", "stl")
STL = "STL"
# config columns that may differ inside a point without mixing science (runtime, paths, labels)
IGNORE = ("runtime.*", "runs.*", "device", "name", "data.root", "data.download", "*.log_every",
          "*.eval_every", "*.ckpt_every_s")


class PlotError(Exception):
    """Bad input: reported as one line, exit status 2, nothing written."""


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
def canon(v: Any) -> Any:
    """One value as read from a CSV cell or a store: None for empty, float for numbers, else str."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    s = str(v).strip()
    if s == "" or s.lower() == "nan":
        return None
    if s in ("True", "False"):
        return s
    try:
        return float(s)
    except ValueError:
        return s


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else f"{v:g}"
    return str(v)


def load(paths: Sequence[str | Path]):
    """All rows under `paths` as a string DataFrame ("" where absent); runs seen twice kept once."""
    import pandas as pd

    frames, dirs = [], []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise PlotError(f"no such path: {p}")
        if path.is_dir():
            dirs.append(path)
        elif path.suffix == ".csv":
            try:
                frames.append(pd.read_csv(path, dtype=str, keep_default_na=False))
            except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
                raise PlotError(f"{p}: not a readable CSV ({type(e).__name__}: {e})") from None
        else:
            raise PlotError(f"{p}: not a directory or a .csv file")
    rows = collect(dirs) if dirs else []
    if rows:  # the store rows go through the same CSV text as ptft-aggregate writes
        frames.append(pd.read_csv(io.StringIO(to_csv(rows)), dtype=str, keep_default_na=False))
    frames = [f for f in frames if len(f)]
    if not frames:
        raise PlotError(f"no runs under {' '.join(map(str, paths))}")
    df = pd.concat(frames, ignore_index=True).fillna("")
    if "run_hash" in df:
        key = df[[c for c in ("stage", "run_hash", "member") if c in df]].astype(str).agg("/".join, axis=1)
        dup = key.duplicated() & (df["run_hash"] != "")
        df = df[~dup].reset_index(drop=True)
    return df


def _first(row: Any, cols: Sequence[str]) -> Any:
    for c in cols:
        v = canon(row.get(c))
        if v is not None:
            return v
    return None


def is_config(col: str) -> bool:
    """The config columns of a ptft-aggregate table (dotted keys, seed, name, device)."""
    return "." in col or col in ("seed", "name", "device")


# ------------------------------------------------------------------------------------------------
# points
# ------------------------------------------------------------------------------------------------
@dataclass
class Point:
    panel: Any
    hue: Any  # STL for the baseline
    n_ft: float
    values: list[float] = field(default_factory=list)  # the metric of the ok runs
    seeds: set = field(default_factory=set)  # every seed seen (any status)
    failed: list[str] = field(default_factory=list)  # "seed 3 (diverged)"
    missing: list[Any] = field(default_factory=list)  # seeds seen elsewhere in the panel

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def sem(self) -> float:
        return float(np.std(self.values, ddof=1) / math.sqrt(self.n)) if self.n > 1 else math.nan

    def ci95(self) -> tuple[float, float]:
        """Mean -+ t_{0.975, n-1} * SEM (Student t, ptft.analysis.stats); NaN below 2 seeds."""
        from ptft.analysis.stats import interval

        _, lo, hi = interval(self.values, 0.95)
        return lo, hi

    @property
    def incomplete(self) -> bool:
        return bool(self.failed or self.missing)

    def problems(self) -> str:
        out = []
        if self.missing:
            out.append("missing seed " + ", ".join(fmt(s) for s in self.missing))
        if self.failed:
            out.append("failed " + ", ".join(self.failed))
        return "; ".join(out)


@dataclass
class Summary:
    points: list[Point]
    hue: str
    panel: Optional[str]
    metric: str
    warnings: list[str]

    def panels(self) -> list[Any]:
        return _sorted({p.panel for p in self.points})

    def hues(self) -> list[Any]:
        return _sorted({p.hue for p in self.points if p.hue is not STL})


def _sorted(values: Any) -> list[Any]:
    """Numbers in order, then strings, then None."""
    return sorted(values, key=lambda v: (v is None, isinstance(v, str), v if isinstance(v, float) else 0.0, str(v)))


def _auto_panel(ft) -> Optional[str]:
    for c in PANEL_AUTO:
        if c in ft and len({canon(v) for v in ft[c]} - {None}) > 1:
            return c
    return None


def summarise(df, hue: str, *, metric: str = "test_acc", panel: Optional[str] = "auto",
              where: Sequence[str] = (), ok: Sequence[str] = ("ok",)) -> Summary:
    """Fine-tuning rows of `df` (strings, as from `load`) -> one Point per (panel, hue | STL, n_ft)."""
    warnings: list[str] = []
    for cond in where:
        key, sep, val = cond.partition("=")
        if not sep or key not in df:
            raise PlotError(f"--where {cond}: expected KEY=VALUE with KEY a column"
                            + ("" if not sep else f" ({key} is not one)"))
        df = df[[canon(v) == canon(val) for v in df[key]]]
    rows = df.to_dict("records")
    mode_cols = [c for c in ("mode", "ft.mode") if c in df]
    n_cols = ["n_ft"] * ("n_ft" in df) + sorted(c for c in df if c.endswith(".n_ft") and not c.startswith("runs."))
    ft = []
    for r in rows:
        mode = _first(r, mode_cols)
        if mode in FT_MODES or (r.get("stage") == "finetune" and mode is None):
            r["_stl"] = mode == "stl"
            ft.append(r)
    if not any(not r["_stl"] for r in ft):
        raise PlotError("no fine-tuning rows (mode=finetune, or stage finetune)"
                        + (f" with {', '.join(where)}" if where else ""))
    import pandas as pd

    ftdf = pd.DataFrame(ft)
    varying = sorted(c for c in ftdf if is_config(c) and len({canon(v) for v in ftdf[c]}) > 1)
    if hue not in ftdf or all(canon(r.get(hue)) is None for r in ft if not r["_stl"]):
        raise PlotError(f"--hue {hue}: no fine-tuning row has this column; config columns that vary: "
                        + (", ".join(varying) or "none"))
    if metric not in ftdf:
        raise PlotError(f"--metric {metric}: no such column in the fine-tuning rows")
    if panel == "auto":
        panel = _auto_panel(ftdf)
    elif panel == "none":
        panel = None
    elif panel not in ftdf:
        raise PlotError(f"--panel {panel}: no such column; config columns that vary: {', '.join(varying)}")
    if not n_cols:
        raise PlotError("no n_ft column (n_ft or *.n_ft) in the fine-tuning rows")

    points: dict[tuple, Point] = {}
    members: dict[tuple, list[dict]] = {}
    dropped = []
    for r in ft:
        h = STL if r["_stl"] else canon(r.get(hue))
        n = _first(r, n_cols)
        if h is None or not isinstance(n, float):
            dropped.append(r.get("run_dir") or r.get("job_dir") or "?")
            continue
        key = (canon(r.get(panel)) if panel else None, h, n)
        pt = points.setdefault(key, Point(*key))
        members.setdefault(key, []).append(r)
        seed = canon(r.get("seed"))
        pt.seeds.add(seed)
        y, status = canon(r.get(metric)), str(r.get("status") or "unknown")
        if status in ok and isinstance(y, float) and math.isfinite(y):
            pt.values.append(y)
        else:
            why = status if status not in ok else f"{metric}={r.get(metric) or 'empty'}"
            pt.failed.append(f"seed {fmt(seed)} ({why})")
    if dropped:
        warnings.append(f"{len(dropped)} fine-tuning rows without a value of {hue} or n_ft left out: "
                        + ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""))
    for pan in {k[0] for k in points}:
        expected = set().union(*(p.seeds for k, p in points.items() if k[0] == pan))
        for k, p in points.items():
            if k[0] == pan:
                p.missing = _sorted(expected - p.seeds)
    warnings += _mixed(ftdf, members, hue, panel, n_cols)
    hues = [*_sorted({k[1] for k in points if k[1] is not STL}), STL]
    pts = [points[k] for pan in _sorted({k[0] for k in points}) for h in hues
           for k in sorted((k for k in points if k[0] == pan and k[1] == h), key=lambda k: k[2])]
    for p in pts:
        if p.incomplete:
            warnings.append(f"incomplete point {_label(p, hue, panel)}: {p.problems()}")
    return Summary(pts, hue, panel, metric, warnings)


def _label(p: Point, hue: str, panel: Optional[str]) -> str:
    parts = [f"{panel}={fmt(p.panel)}"] if panel else []
    parts.append("STL" if p.hue is STL else f"{hue}={fmt(p.hue)}")
    return ", ".join(parts + [f"n_ft={fmt(p.n_ft)}"])


def _mixed(ftdf, members: dict[tuple, list[dict]], hue: str, panel: Optional[str],
           n_cols: Sequence[str]) -> list[str]:
    """Warnings naming config columns that vary inside a point, other than seed and keys tied to it."""
    skip = {"seed", panel, *n_cols}
    cols = [c for c in ftdf if is_config(c) and c not in skip and not any(fnmatch.fnmatch(c, g) for g in IGNORE)]
    seeds = [canon(v) for v in ftdf.get("seed", [None] * len(ftdf))]
    out = []
    for c in cols:
        vals = [canon(v) for v in ftdf[c]]
        per_seed: dict[Any, set] = {}
        for s, v in zip(seeds, vals):
            per_seed.setdefault(s, set()).add(v)
        if len(set(vals)) < 2 or all(len(v) == 1 for v in per_seed.values()):
            continue  # constant, or a function of the seed (data.split_seed: ${seed}, ...)
        where = [k for k, rs in members.items() if len({canon(r.get(c)) for r in rs}) > 1]
        if where:
            pan, h, n = where[0]
            ex = _label(Point(pan, h, n), hue, panel)
            out.append(f"{c} varies inside {len(where)} point(s) (e.g. {ex}: values "
                       f"{', '.join(fmt(v) for v in _sorted({canon(r.get(c)) for r in members[where[0]]}))}): "
                       f"different configs pooled (mixed sweeps?); restrict with --where {c}=VALUE")
    return out


# ------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------
def table_frame(s: Summary):
    """One row per point: panel, hue value (or STL), n_ft, n, mean, SEM, 95% CI, what is missing."""
    import pandas as pd

    recs = []
    for p in s.points:
        lo, hi = p.ci95()
        rec = {s.panel: fmt(p.panel)} if s.panel else {}
        rec.update({s.hue: fmt(p.hue), "n_ft": fmt(p.n_ft), "n_seeds": p.n, f"{s.metric}_mean": p.mean,
                    f"{s.metric}_sem": p.sem, "ci95_lo": lo, "ci95_hi": hi, "incomplete": p.problems()})
        recs.append(rec)
    return pd.DataFrame(recs)


def markdown(s: Summary) -> str:
    """LL's table per panel: rows n_ft, columns hue values and STL, cells mean +- SEM (n)."""
    lines = [f"{s.metric}: mean ± SEM over seeds (n = seeds with status ok); † = missing or failed runs "
             f"(listed in the .csv)", ""]
    hues = [*s.hues(), STL]
    for pan in s.panels():
        pts = [p for p in s.points if p.panel == pan]
        if s.panel:
            lines += [f"### {s.panel} = {fmt(pan)}", ""]
        cols = [h for h in hues if any(p.hue == h for p in pts)]
        lines.append("| n_ft | " + " | ".join(STL if h is STL else f"{s.hue}={fmt(h)}" for h in cols) + " |")
        lines.append("|---:|" + "---:|" * len(cols))
        for n in sorted({p.n_ft for p in pts}):
            cells = []
            for h in cols:
                p = next((q for q in pts if q.hue == h and q.n_ft == n), None)
                if p is None:
                    cells.append("")
                    continue
                c = "–" if p.n == 0 else f"{p.mean:.3f}" + (f" ± {p.sem:.3f}" if p.n > 1 else "")
                cells.append(f"{c} (n={p.n})" + (" †" if p.incomplete else ""))
            lines.append(f"| {fmt(n)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def figure(s: Summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    panels, hues = s.panels(), s.hues()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels) + 1.4, 3.8), squeeze=False, sharey=True,
                             layout="constrained")
    numeric = all(isinstance(h, float) for h in hues)
    cmap = plt.get_cmap("viridis" if numeric and len(hues) > 2 else "tab10")
    colors = {h: cmap(i / max(len(hues) - 1, 1) * 0.9) if cmap.name == "viridis" else cmap(i % 10)
              for i, h in enumerate(hues)}
    any_bad = False
    for ax, pan in zip(axes[0], panels):
        pts = [p for p in s.points if p.panel == pan]
        counts = [p.n for p in pts]
        top = max(counts)
        for h in [*hues, STL]:
            line = [p for p in pts if p.hue == h]
            if not line:
                continue
            stl = h is STL
            color = "black" if stl else colors[h]
            x = np.array([p.n_ft for p in line])
            m = np.array([p.mean for p in line])
            ci = np.array([p.ci95() for p in line]).reshape(-1, 2)
            ax.plot(x, m, "--" if stl else "-", marker="" if stl else "o", ms=4, color=color, lw=1.6,
                    label=STL if stl else f"{fmt(h)}", zorder=3)
            ax.fill_between(x, ci[:, 0], ci[:, 1], color=color, alpha=0.12 if stl else 0.2, lw=0)
            for p, xi, mi in zip(line, x, m):
                if p.incomplete:
                    any_bad = True
                    if p.n == 0:  # nothing to average: mark it on the x axis
                        ax.plot(xi, 0.02, "X", ms=9, color="red", transform=ax.get_xaxis_transform(), zorder=5)
                    else:
                        ax.plot(xi, mi, "X", ms=10, mfc="none", mec="red", mew=1.5, zorder=5)
                if p.n < top:
                    ax.annotate(f"n={p.n}", (xi, 0.02 if p.n == 0 else mi), xytext=(4, 4), fontsize=7,
                                textcoords="offset points", color="red" if p.incomplete else "0.3",
                                xycoords=ax.get_xaxis_transform() if p.n == 0 else "data")
        ax.set_xscale("log")
        ticks = sorted({p.n_ft for p in pts})
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        seeds = (f"n = {top} seeds per point" if min(counts) == top
                 else f"n = {min(counts)}–{top} seeds (shown where < {top})")
        ax.set_title((f"{s.panel} = {fmt(pan)}\n" if s.panel else "") + seeds, fontsize=9)
        ax.set_xlabel("n_ft (fine-tuning samples)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{s.metric} (mean, 95% CI)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:  # a hue value may appear only in later panels
        for hd, lb in zip(*ax.get_legend_handles_labels()):
            if lb not in labels:
                handles.append(hd)
                labels.append(lb)
    if any_bad:
        handles.append(Line2D([], [], ls="", marker="X", ms=9, mfc="none", mec="red", mew=1.5))
        labels.append("missing/failed runs")
    means = [p.mean for p in s.points if p.n]
    if means and 0 <= min(means) and max(means) <= 1:  # a fraction (accuracy): CI bands cut at [0, 1]
        lo, hi = axes[0][0].get_ylim()
        axes[0][0].set_ylim(max(lo, -0.02), min(hi, 1.02))
    fig.legend(handles, labels, title=s.hue, loc="outside right center", fontsize=8, title_fontsize=8,
               frameon=False)
    return fig


def stage_summaries(df, hue: str, prefix: str, **kw: Any) -> dict[str, Summary]:
    """One Summary per stage metric PREFIX/<stage> present in df (in column order)."""
    cols = [c for c in df if c.startswith(prefix.rstrip("/") + "/")]
    if not cols:
        raise PlotError(f"--stages {prefix}: no column {prefix.rstrip('/')}/<stage>; diagnostics columns: "
                        + ", ".join(sorted({c.rsplit('/', 1)[0] for c in df if c.startswith('diag/')})) or "none")
    return {c.rsplit("/", 1)[1]: summarise(df, hue, metric=c, **kw) for c in cols}


def stage_figure(stages: dict[str, Summary]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    any_s = next(iter(stages.values()))
    panels = any_s.panels()
    ns = _sorted({p.n_ft for p in any_s.points})
    fig, axes = plt.subplots(len(ns), len(panels), figsize=(4.2 * len(panels) + 1.4, 2.9 * len(ns)), squeeze=False,
                             sharex=True, layout="constrained")
    colors = plt.get_cmap("tab10")
    for j, pan in enumerate(panels):
        for i, n in enumerate(ns):
            ax = axes[i][j]
            for k, (stage, s) in enumerate(stages.items()):
                pts = [p for p in s.points if p.panel == pan and p.n_ft == n and p.hue is not STL and p.n]
                if pts:
                    x = np.array([p.hue for p in pts], dtype=float)
                    ci = np.array([p.ci95() for p in pts]).reshape(-1, 2)
                    ax.plot(x, [p.mean for p in pts], "-o", ms=4, color=colors(k % 10), label=stage)
                    ax.fill_between(x, ci[:, 0], ci[:, 1], color=colors(k % 10), alpha=0.15, lw=0)
                stl = [p for p in s.points if p.panel == pan and p.n_ft == n and p.hue is STL and p.n]
                if stl:
                    ax.axhline(stl[0].mean, ls="--", lw=1, color=colors(k % 10))
            if all(isinstance(h, float) and h > 0 for h in any_s.hues()):
                ax.set_xscale("log")
                ax.set_xticks(any_s.hues(), [fmt(h) for h in any_s.hues()])
                ax.minorticks_off()
            ax.set_title((f"{any_s.panel} = {fmt(pan)}, " if any_s.panel else "") + f"n_ft = {fmt(n)}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(ns) - 1:
                ax.set_xlabel(any_s.hue)
            if j == 0:
                ax.set_ylabel(any_s.metric.rsplit("/", 1)[0] + " (mean, 95% CI)", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, title="stage (dashed: STL)", loc="outside right center", fontsize=8,
               title_fontsize=8, frameon=False)
    return fig


def write_stages(stages: dict[str, Summary], out: Path) -> list[Path]:
    """FILE (the per-stage figure) and FILE.csv (every point with its stage), written atomically."""
    import pandas as pd

    from ptft.train.store import atomic_write_bytes, atomic_write_text

    import matplotlib.pyplot as plt

    fmt_ = figure_format(out)
    fig = stage_figure(stages)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt_, dpi=150)
    plt.close(fig)
    frames = []
    for stage, s in stages.items():
        t = table_frame(s)
        t = t.rename(columns={f"{s.metric}_mean": "mean", f"{s.metric}_sem": "sem"})
        t.insert(0, "stage", stage)
        frames.append(t)
    paths = [out, out.with_suffix(".csv")]
    atomic_write_bytes(paths[0], buf.getvalue())
    atomic_write_text(paths[1], pd.concat(frames).to_csv(index=False, lineterminator="\n"))
    return paths


def figure_format(out: Path) -> str:
    """The figure format FILE's suffix names (png, pdf, svg, ...); PlotError if matplotlib has none."""
    from matplotlib.figure import Figure

    fmt_ = out.suffix.lstrip(".").lower()
    if fmt_ not in Figure().canvas.get_supported_filetypes():
        raise PlotError(f"--out {out}: unknown figure format '{out.suffix}' (use .png, .pdf or .svg)")
    return fmt_


def check_outputs(outputs: Sequence[Path], inputs: Sequence[str | Path]) -> None:
    """PlotError if an output would overwrite an input (the same file, or a file inside an input directory)
    or is a directory: nothing is written then."""
    ins = [Path(p).resolve() for p in inputs]
    for o in map(Path, outputs):
        r = o.resolve()
        hit = next((i for i in ins if r == i or i in r.parents), None)
        if hit is not None:
            raise PlotError(f"--out would write {o}, which {'is' if r == hit else 'is inside'} the input {hit}; "
                            f"choose an --out whose FILE, FILE.csv and FILE.md are not inputs")
        if o.is_dir():
            raise PlotError(f"--out would write {o}, which is a directory; give a file name")


def write(s: Summary, out: Path) -> list[Path]:
    """FILE (the figure), FILE.csv and FILE.md, each written atomically, the figure rendered first."""
    from ptft.train.store import atomic_write_bytes, atomic_write_text

    import matplotlib.pyplot as plt

    fmt_ = figure_format(out)
    fig = figure(s)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt_, dpi=150)
    plt.close(fig)
    csv_text = table_frame(s).to_csv(index=False, lineterminator="\n")
    md_text = markdown(s)
    paths = [out, out.with_suffix(".csv"), out.with_suffix(".md")]
    atomic_write_bytes(paths[0], buf.getvalue())
    atomic_write_text(paths[1], csv_text)
    atomic_write_text(paths[2], md_text)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="ptft-plot", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", metavar="PATH", help="run store, sweep directory or ptft-aggregate CSV")
    ap.add_argument("--hue", required=True, metavar="KEY", help="the swept config key, e.g. init.kappa")
    ap.add_argument("--out", required=True, metavar="FILE", help="figure file (.png/.pdf/.svg); "
                    "the table goes to FILE.csv and FILE.md")
    ap.add_argument("--metric", default="test_acc", help="column on the y axis (default test_acc)")
    ap.add_argument("--panel", default="auto", metavar="KEY|auto|none",
                    help=f"one panel per value (auto: the first of {', '.join(PANEL_AUTO)} that varies)")
    ap.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                    help="keep only rows with KEY=VALUE (repeatable; applies to STL rows too)")
    ap.add_argument("--ok", default="ok", metavar="S1,S2", help="statuses counted in the mean (default ok)")
    ap.add_argument("--stages", metavar="PREFIX", help="per-stage diagnostics PREFIX/<stage> (e.g. diag/movement) "
                    "against the --hue value, one line per stage, one row of panels per n_ft")
    args = ap.parse_args(argv)
    from ptft.train.store import StoreError

    out = Path(args.out)
    try:
        check_outputs([out, out.with_suffix(".csv")] + ([] if args.stages else [out.with_suffix(".md")]), args.paths)
        figure_format(out)
        if args.stages:
            stages = stage_summaries(load(args.paths), args.hue, args.stages, panel=args.panel, where=args.where,
                                     ok=tuple(args.ok.split(",")))
            for w in dict.fromkeys(w for s in stages.values() for w in s.warnings):
                print(f"ptft-plot: warning: {w}", file=sys.stderr)
            paths = write_stages(stages, Path(args.out))
            print(f"ptft-plot: {len(stages)} stages of {args.stages} vs {args.hue} -> "
                  + ", ".join(map(str, paths)), file=sys.stderr)
            return 0
        s = summarise(load(args.paths), args.hue, metric=args.metric, panel=args.panel, where=args.where,
                      ok=tuple(args.ok.split(",")))
        for w in s.warnings:
            print(f"ptft-plot: warning: {w}", file=sys.stderr)
        paths = write(s, Path(args.out))
    except (PlotError, StoreError) as e:
        print(f"ptft-plot: error: {e}", file=sys.stderr)
        return 2
    n_stl = sum(p.n for p in s.points if p.hue is STL)
    print(f"ptft-plot: {len(s.points)} points ({len(s.hues())} values of {s.hue}"
          + (f", {len(s.panels())} panels by {s.panel}" if s.panel else "") + f", STL runs: {n_stl}) -> "
          + ", ".join(map(str, paths)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
