"""The DLN figures and tables of docs/paper.md sections 6-7: regime map, replica theory, theory vs simulation.

    python -m ptft.analysis.dln_figures regime-map            # results/dln_theory/regime_map.{png,csv}
    python -m ptft.analysis.dln_figures theory                # results/dln_theory/dln_theory.csv
    python -m ptft.analysis.dln_figures panels --sims results/dln_panels/dln_sims_cpu.csv --scale cpu  # results/dln_panels/
    python -m ptft.analysis.dln_figures regimes               # results/dln_theory/dln_regimes.{png,csv}
    python -m ptft.analysis.dln_figures all --sims results/dln_panels/dln_sims_cpu.csv

Theory comes from `ptft.dln.replica` (quadrature, Newton fixed point) and `ptft.dln.theory`; simulations
come from the tidy CSV of `ptft.analysis.dln_sims` (optionally completed from the finished jobs of its run
store, `--store`, without training anything). A replica point whose fixed point did not converge is never
drawn as part of a line: it is dropped from the line, drawn as a red x and counted on the figure and the
console. Every CSV is tidy (one row per point) and uses the sims CSV's config column names (CONFIG_KEYS).
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ptft import ConfigError  # noqa: E402
from ptft.analysis.panels import (CONFIG_KEYS, GROUND_TRUTHS, PANELS, PAPER_DEFAULTS, REGIMES, SCALES,  # noqa: E402
                                  SIM_ALPHAS, THEORY_ALPHAS, curve_config, job_overrides, unique_curves)
from ptft.dln.replica import ReplicaResult, generalization_error  # noqa: E402
from ptft.dln.theory import L_SPLIT, PD_SPLIT, l_order, pt_dependence, regime_of  # noqa: E402

SIM_COLUMNS = CONFIG_KEYS + ["alpha", "dim", "seeds", "error_mean", "error_ci95", "status", "steps_max"]
THEORY_COLUMNS = CONFIG_KEYS + ["alpha", "error", "residual", "converged", "iters"]
POINT_COLUMNS = ["panel"] + CONFIG_KEYS + ["alpha", "kind", "error", "residual", "converged", "ci95", "status",
                                           "dim", "seeds"]
AGREE_COLUMNS = ["panel"] + CONFIG_KEYS + [
    "alpha", "dim", "seeds", "status", "sim_mean", "sim_ci95", "theory", "theory_residual", "theory_converged",
    "abs_dev", "rel_dev", "within_ci", "within_10pct", "agree"]
REGIME_MAP_COLUMNS = ["beta_pt", "lam", "l_order", "pd", "regime"]
REGIMES_COLUMNS = ["ground_truth", "regime"] + THEORY_COLUMNS
ERROR_FLOOR = 1e-2  # agreement is judged only where the simulated error (status ok, finite) exceeds this
REL_TOL = 0.10      # ... and a point agrees if within its 95% CI of the theory or within 10% relative
Y_FLOOR = 1e-6      # lower end of the log error axes (lines below it leave the axes)
SIM_JITTER = 0.004  # horizontal offset between sim markers of curves sharing an alpha (CSV alphas are exact)

LABELS = {"c_pt": "c", "lam_pt": r"$\tilde\lambda$", "gamma": r"$\gamma$", "rho_ft": r"$\rho_{FT}$",
          "omega": r"$\omega$"}
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D"]


# ----------------------------------------------------------------------------------------------
# small helpers


def _key(cfg: dict) -> tuple:
    """Hashable identity of a curve (config values rounded to 10 significant digits)."""
    return tuple(float(f"{float(cfg[k]):.10g}") for k in CONFIG_KEYS)


def _g8(x: float) -> float:
    """8 significant digits (keeps the regime-map CSV small)."""
    return float(f"{float(x):.8g}")


def _akey(alpha: float) -> float:
    return float(f"{float(alpha):.6g}")


def _fmt(v: float) -> str:
    return f"{float(v):g}"


def _write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Atomic tidy CSV (temp file + rename), columns in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    tmp.replace(path)


def _save(fig, path: Path, pdf: bool = False) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [path]
    fig.savefig(path, dpi=130)
    if pdf:
        out.append(path.with_suffix(".pdf"))
        fig.savefig(out[-1])
    plt.close(fig)
    return out


def _check_alphas(alphas: Sequence[float]) -> np.ndarray:
    a = np.asarray(alphas, dtype=np.float64).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ConfigError(f"alphas={a.tolist()} must be a non-empty list of finite values > 0")
    return a


def theory(cfg: dict, alphas: Sequence[float], **replica_kw: Any) -> ReplicaResult:
    """Replica generalisation error of one curve (a full config dict) at the given alphas."""
    return generalization_error(_check_alphas(alphas), **{k: float(cfg[k]) for k in CONFIG_KEYS}, **replica_kw)


def theory_rows(cfg: dict, res: ReplicaResult) -> list[dict]:
    return [{**{k: cfg[k] for k in CONFIG_KEYS}, "alpha": float(a), "error": float(e), "residual": float(r),
             "converged": bool(c), "iters": int(i)}
            for a, e, r, c, i in zip(res.alphas, res.error, res.residual, res.converged, res.iters)]


def plot_theory(ax, res: ReplicaResult, **line_kw: Any) -> int:
    """Draw a replica curve from its converged points only; mark unconverged ones (red x). Returns their count.

    An unconverged point with a non-finite error is drawn at the bottom of the axes."""
    ok = np.asarray(res.converged, dtype=bool) & np.isfinite(res.error) & (res.error > 0)
    ax.plot(res.alphas[ok], res.error[ok], **line_kw)
    bad = ~np.asarray(res.converged, dtype=bool)
    if bad.any():
        fin = bad & np.isfinite(res.error) & (res.error > 0)
        ax.plot(res.alphas[fin], res.error[fin], "x", color="red", ms=7, mew=2, zorder=5)
        inf = bad & ~fin
        if inf.any():
            ax.plot(res.alphas[inf], np.zeros(inf.sum()), "x", color="red", ms=7, mew=2, zorder=5, clip_on=False,
                    transform=ax.get_xaxis_transform())
    return int(bad.sum())


UNCONVERGED_HANDLE = Line2D([], [], ls="none", marker="x", color="red", mew=2)


# ----------------------------------------------------------------------------------------------
# regime map (section 6 / section 7, first figure)


def regime_map(out_dir: Path, n_beta: int = 200, n_lam: int = 121, c: float = 0.1, gamma: float = 0.0,
               beta_ft: float = 1.0, beta_range: tuple[float, float] = (5e-4, 2e3)) -> dict[str, Any]:
    """l-order and PD over |beta_PT| (log grid) x lam (linear, -1..1) at fixed c, gamma, beta_FT.

    Writes regime_map.csv (beta_pt, lam, l_order, pd, regime) and regime_map.png (two heat maps, the
    regime_of boundaries l-order = L_SPLIT and PD = PD_SPLIT as contours, regions labelled I..IV)."""
    if n_beta < 2 or n_lam < 2:
        raise ConfigError(f"regime map grid {n_beta} x {n_lam} must be at least 2 x 2")
    if not (0 < beta_range[0] < beta_range[1]):
        raise ConfigError(f"beta_range={beta_range} must be 0 < low < high")
    t0 = time.time()
    b = np.geomspace(*beta_range, n_beta)
    lam = np.linspace(-1.0, 1.0, n_lam)
    B, L = np.meshgrid(b, lam)  # shape (n_lam, n_beta)
    lo = l_order(beta_ft, B, c, L, gamma)
    pd = pt_dependence(beta_ft, B, c, L, gamma)
    reg = regime_of(lo, pd)
    rows = [{"beta_pt": _g8(bb), "lam": _g8(ll), "l_order": _g8(x), "pd": _g8(y), "regime": str(r)}
            for bb, ll, x, y, r in zip(B.ravel(), L.ravel(), lo.ravel(), pd.ravel(), reg.ravel())]
    out_dir = Path(out_dir)
    _write_csv(out_dir / "regime_map.csv", rows, REGIME_MAP_COLUMNS)

    from scipy.ndimage import distance_transform_edt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    for ax, val, name, cmap, lim in [(axes[0], lo, "l-order", "viridis", (1, 2)), (axes[1], pd, "PD", "magma", (-1, 0))]:
        m = ax.pcolormesh(B, L, val, cmap=cmap, vmin=lim[0], vmax=lim[1], shading="auto", rasterized=True)
        fig.colorbar(m, ax=ax, label=name)
        ax.contour(B, L, lo, levels=[L_SPLIT], colors="white", linewidths=1.8)
        ax.contour(B, L, pd, levels=[PD_SPLIT], colors="cyan", linewidths=1.8, linestyles="--")
        for rg in ("I", "II", "III", "IV"):
            mask = reg == rg
            if mask.any():  # label at the point of the region farthest from its boundary
                dist = distance_transform_edt(np.pad(mask, 1), sampling=(1.0 / n_lam, 1.0 / n_beta))[1:-1, 1:-1]
                i, j = np.unravel_index(np.argmax(dist), dist.shape)
                ax.text(B[i, j], L[i, j], rg, ha="center", va="center", fontsize=15, fontweight="bold",
                        color="black", bbox=dict(boxstyle="round", fc="white", alpha=0.8))
        ax.set_xscale("log")
        ax.set_xlabel(r"$|\beta_{PT}|$")
        ax.set_ylabel(r"$\tilde\lambda = \lambda / c$")
        ax.set_title(f"{name} of the FT penalty at $\\beta_{{FT}}$ = {_fmt(beta_ft)}")
    axes[1].legend([Line2D([], [], color="white", lw=1.8), Line2D([], [], color="cyan", lw=1.8, ls="--")],
                   [f"l-order = {L_SPLIT} (rich | lazy)", f"PD = {PD_SPLIT} (PT-indep. | PT-dep.)"],
                   loc="upper right", fontsize=8, facecolor="grey", framealpha=0.6)
    fig.suptitle(f"Fine-tuning regimes (c = {_fmt(c)}, $\\gamma$ = {_fmt(gamma)}): I rich PT-indep., "
                 "II lazy PT-dep., III lazy PT-indep., IV rich PT-dep.")
    _save(fig, out_dir / "regime_map.png")
    counts = {rg: int((reg == rg).sum()) for rg in ("I", "II", "III", "IV")}
    print(f"regime-map: {n_beta} x {n_lam} grid, regime cell counts {counts}; l-order in "
          f"[{lo.min():.3f}, {lo.max():.3f}], PD in [{pd.min():.3f}, {pd.max():.3f}]; {time.time() - t0:.1f}s")
    return {"l_order": lo, "pd": pd, "regime": reg, "beta_pt": b, "lam": lam, "counts": counts}


# ----------------------------------------------------------------------------------------------
# replica theory for every curve of every panel


def theory_all(curves: Iterable[dict], alphas: Sequence[float] = THEORY_ALPHAS,
               **replica_kw: Any) -> dict[tuple, ReplicaResult]:
    """ReplicaResult per (unique) curve, keyed by `_key`."""
    out: dict[tuple, ReplicaResult] = {}
    for cfg in curves:
        cfg = curve_config(cfg)
        if _key(cfg) not in out:
            out[_key(cfg)] = theory(cfg, alphas, **replica_kw)
    return out


def theory_table(out_dir: Path, alphas: Sequence[float] = THEORY_ALPHAS, curves: Iterable[dict] | None = None,
                 **replica_kw: Any) -> tuple[list[dict], dict[tuple, ReplicaResult]]:
    """dln_theory.csv: replica error of every unique panel curve at every alpha (with residual, converged)."""
    t0 = time.time()
    curves = list(unique_curves() if curves is None else curves)
    res = theory_all(curves, alphas, **replica_kw)
    rows: list[dict] = []
    cfgs = {_key(curve_config(c)): curve_config(c) for c in curves}
    for k, r in res.items():
        rows += theory_rows(cfgs[k], r)
    _write_csv(Path(out_dir) / "dln_theory.csv", rows, THEORY_COLUMNS)
    bad = [r for r in rows if not r["converged"]]
    print(f"theory: {len(res)} curves x {len(_check_alphas(alphas))} alphas = {len(rows)} points, "
          f"{len(bad)} unconverged, max residual {max(r['residual'] for r in rows):.2e}; "
          f"total {time.time() - t0:.2f}s")
    for r in bad:
        print(f"  UNCONVERGED: alpha={r['alpha']:.4g} residual={r['residual']:.3g} "
              f"{ {k: r[k] for k in CONFIG_KEYS} }")
    return rows, res


# ----------------------------------------------------------------------------------------------
# simulations: the sims CSV, completed from the run store


def _parse_sim_row(r: dict) -> dict:
    out = {k: float(r[k]) for k in CONFIG_KEYS}
    out.update(alpha=float(r["alpha"]), dim=int(float(r["dim"])), seeds=int(float(r["seeds"])),
               error_mean=float(r["error_mean"]), error_ci95=float(r["error_ci95"] or "nan"),
               status=str(r["status"]), steps_max=int(float(r["steps_max"])) if r.get("steps_max") else -1)
    return out


def load_sims(path: Path | None) -> list[dict]:
    """Rows of a dln_sims CSV ([] if path is None or missing); raises ConfigError on a malformed file."""
    if path is None or not Path(path).exists():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in SIM_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"--sims {path} lacks columns {missing}; it must come from ptft.analysis.dln_sims")
        return [_parse_sim_row(r) for r in reader]


def sims_from_store(store: Path, scale: str, curves: Iterable[dict] | None = None,
                    alphas: Sequence[float] = SIM_ALPHAS) -> list[dict]:
    """Rows (sims CSV format) of the dln_sims jobs already finished in a run store; trains nothing."""
    from ptft import app
    from ptft.analysis.stats import ci95_half as ci95
    from ptft.dln.main import scientific
    from ptft.train.store import RunDir

    sc = SCALES[scale]
    rows = []
    for cfg in (unique_curves() if curves is None else [curve_config(c) for c in curves]):
        for a in alphas:
            conf = app.compose("dln", job_overrides(cfg, float(a), sc["dim"], sc["seeds"], str(store)))
            run = RunDir(app.store_root(conf), "dln", scientific(conf))
            if not run.finished:
                continue
            res = run.load_result()
            members = res.get("members", [res])
            err = np.array([m["test_mse"] for m in members], dtype=float)
            rows.append({**{k: cfg[k] for k in CONFIG_KEYS}, "alpha": float(a), "dim": sc["dim"], "seeds": len(err),
                         "error_mean": float(err.mean()), "error_ci95": ci95(err), "status": res["status"],
                         "steps_max": max(int(m["steps"]) for m in members)})
    return rows


def sims_index(rows: list[dict], dim: int, seeds: int) -> tuple[dict[tuple, dict], list[str]]:
    """{(curve key, alpha key): row} for rows at this D (and seed count), plus notes on rows left out."""
    idx: dict[tuple, dict] = {}
    notes = []
    other = [r for r in rows if r["dim"] != dim or r["seeds"] != seeds]
    if other:
        found = sorted({(r["dim"], r["seeds"]) for r in other})
        notes.append(f"{len(other)} sim rows at (D, seeds) = {found} left out (expected D = {dim}, {seeds} seeds)")
    for r in rows:
        if r["dim"] == dim and r["seeds"] == seeds:
            idx[(_key(r), _akey(r["alpha"]))] = r
    return idx, notes


# ----------------------------------------------------------------------------------------------
# the six-panel figure and the agreement table


def _curve_label(curve: dict, keys: Sequence[str]) -> str:
    return ", ".join(f"{LABELS[k]} = {_fmt(curve[k])}" for k in keys)


def _panel_axes(curves: list[dict]) -> tuple[str, str | None, list, list]:
    """The panel's varied knob (colour) and its second varied key (line style / marker), with their values."""
    k1 = next(iter(curves[0]))
    vals1 = sorted({c[k1] for c in curves}, key=float)
    rest = [k for k in curves[0] if k != k1 and len({c[k] for c in curves}) > 1]
    k2 = rest[0] if rest else None
    vals2 = sorted({c[k2] for c in curves}, key=float) if k2 else [None]
    return k1, k2, vals1, vals2


def agreement(sim: dict, th: float, th_res: float, th_conv: bool, panel: str) -> dict:
    """One row of the agreement table: is the simulated mean within its 95% CI of the theory, or within 10%?"""
    dev = sim["error_mean"] - th
    rel = dev / th if th > 0 else math.inf
    ci = sim["error_ci95"]
    within_ci = bool(np.isfinite(ci) and abs(dev) <= ci)
    within_rel = bool(abs(rel) <= REL_TOL)
    return {"panel": panel, **{k: sim[k] for k in CONFIG_KEYS}, "alpha": sim["alpha"], "dim": sim["dim"],
            "seeds": sim["seeds"], "status": sim["status"], "sim_mean": sim["error_mean"], "sim_ci95": ci,
            "theory": th, "theory_residual": th_res, "theory_converged": bool(th_conv), "abs_dev": dev,
            "rel_dev": rel, "within_ci": within_ci, "within_10pct": within_rel,
            "agree": bool(th_conv and (within_ci or within_rel))}


def panels(out_dir: Path, sims_csv: Path | None, scale: str = "cpu", store: Path | None = None,
           alphas: Sequence[float] = THEORY_ALPHAS, panel_spec: dict | None = None,
           **replica_kw: Any) -> dict[str, Any]:
    """The six-panel theory-vs-simulation figure of docs/paper.md section 7, its points CSV and the agreement table.

    Simulations: rows of `sims_csv` at the scale's D and seed count, completed (if `store` is given) by the
    finished jobs of that run store. Missing or incomplete simulations are reported and what exists is plotted.
    Agreement is judged against the replica computed exactly at each simulated alpha."""
    t0 = time.time()
    if scale not in SCALES:
        raise ConfigError(f"--scale={scale} must be one of {sorted(SCALES)}")
    spec = PANELS if panel_spec is None else panel_spec
    out_dir = Path(out_dir)
    dim, n_seeds = SCALES[scale]["dim"], SCALES[scale]["seeds"]
    msgs: list[str] = []
    if sims_csv is not None and not Path(sims_csv).exists():
        msgs.append(f"sims CSV {sims_csv} does not exist")
    sim_rows = load_sims(sims_csv)
    idx, notes = sims_index(sim_rows, dim, n_seeds)
    msgs += notes
    if store is not None:
        distinct = {_key(curve_config(c)): curve_config(c) for _, cs in spec.values() for c in cs}
        found = sims_from_store(Path(store), scale, list(distinct.values()))
        extra = {(_key(r), _akey(r["alpha"])): r for r in found if (_key(r), _akey(r["alpha"])) not in idx}
        idx.update(extra)
        msgs.append(f"{len(extra)} sim points taken from finished jobs in the run store {store}")

    all_cfgs = [curve_config(c) for _, cs in spec.values() for c in cs]
    th = theory_all(all_cfgs, alphas, **replica_kw)
    points: list[dict] = []
    agree_rows: list[dict] = []
    n_expected = n_found = n_unconv_total = 0
    n_rows = 2 if len(spec) > 3 else 1
    n_cols = math.ceil(len(spec) / n_rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(5.6 * n_cols, 4.9 * n_rows), squeeze=False,
                             constrained_layout=True)
    summary: dict[str, dict] = {}
    excluded: dict[str, int] = {}  # sims not judged: status != ok or a non-finite mean
    for ax, (pname, (title, curves)) in zip(axes.ravel(), spec.items()):
        k1, k2, vals1, vals2 = _panel_axes(curves)
        n_unconv = n_sim = n_notok = n_nonfinite = 0
        ymin = math.inf
        for curve in curves:
            cfg = curve_config(curve)
            col = COLORS[vals1.index(curve[k1]) % len(COLORS)]
            j2 = vals2.index(curve[k2]) if k2 else 0
            res = th[_key(cfg)]
            n_unconv += plot_theory(ax, res, color=col, ls=STYLES[j2 % len(STYLES)], lw=1.6)
            ok = res.converged & (res.error > 0)
            if ok.any():
                ymin = min(ymin, float(res.error[ok].min()))
            for row in theory_rows(cfg, res):
                points.append({"panel": pname, **row, "kind": "theory", "ci95": None, "status": None,
                               "dim": None, "seeds": None})
            sims = [idx.get((_key(cfg), _akey(a))) for a in SIM_ALPHAS]
            n_expected += len(SIM_ALPHAS)
            sims = [s for s in sims if s is not None]
            n_found += len(sims)
            n_sim += len(sims)
            if not sims:
                continue
            sa = np.array([s["alpha"] for s in sims])
            sm = np.array([s["error_mean"] for s in sims])
            sc = np.array([s["error_ci95"] for s in sims])
            good = np.array([s["status"] == "ok" for s in sims])
            fin = np.isfinite(sm) & (sm > 0)
            n_notok += int((~good & fin).sum())
            n_nonfinite += int((~fin).sum())
            lower = np.minimum(np.nan_to_num(sc), 0.95 * sm)  # log axis: lower bar clipped at 5% of the mean
            xs = sa + SIM_JITTER * (j2 - (len(vals2) - 1) / 2)  # side by side when curves share an alpha
            for sel, face in [(good & fin, col), (~good & fin, "none")]:
                if sel.any():
                    ax.errorbar(xs[sel], sm[sel], yerr=[lower[sel], np.nan_to_num(sc[sel])], fmt=MARKERS[j2 % 4],
                                color=col, mfc=face, ms=5, capsize=2.5, lw=1, ls="none")
            if (~fin).any():  # a diverged simulation (inf / nan mean): a triangle at the top of the axes
                ax.plot(xs[~fin], np.ones((~fin).sum()), "^", color=col, mfc="none", mew=1.5, ms=8, clip_on=False,
                        transform=ax.get_xaxis_transform())
            pos = sm > 0
            if pos.any():
                ymin = min(ymin, float(sm[pos].min()))
            exact = theory(cfg, sa, **replica_kw)
            for s, e, r, cv in zip(sims, exact.error, exact.residual, exact.converged):
                points.append({"panel": pname, **{k: s[k] for k in CONFIG_KEYS}, "alpha": s["alpha"], "kind": "sim",
                               "error": s["error_mean"], "ci95": s["error_ci95"], "status": s["status"],
                               "dim": s["dim"], "seeds": s["seeds"]})
                if s["status"] == "ok" and np.isfinite(s["error_mean"]) and s["error_mean"] > ERROR_FLOOR:
                    agree_rows.append(agreement(s, float(e), float(r), bool(cv), pname))
                elif s["status"] != "ok" or not np.isfinite(s["error_mean"]):
                    excluded[pname] = excluded.get(pname, 0) + 1
        n_unconv_total += n_unconv
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(Y_FLOOR, 0.5 * ymin) if np.isfinite(ymin) else Y_FLOOR)
        ax.set_xlim(0, max(float(np.max(alphas)), float(SIM_ALPHAS.max())) * 1.03)
        ax.set_xlabel(r"$\alpha = n / D$")
        ax.set_ylabel("generalisation error")
        ax.grid(True, which="major", alpha=0.3)
        extra = []
        if n_unconv:
            extra.append(f"{n_unconv} unconverged theory pts (red x)")
        if n_notok:
            extra.append(f"{n_notok} sims not converged (hollow)")
        if n_nonfinite:
            extra.append(f"{n_nonfinite} sims diverged (open triangle at top)")
        n_exp_panel = len(curves) * len(SIM_ALPHAS)
        if n_sim < n_exp_panel:
            extra.append(f"sims {n_sim}/{n_exp_panel}")
        ax.set_title(f"({pname}) {title}" + ("\n" + "; ".join(extra) if extra else ""), fontsize=9.5)
        handles = [Line2D([], [], color=COLORS[i % 4], lw=2) for i in range(len(vals1))]
        labels = [f"{LABELS[k1]} = {_fmt(v)}" for v in vals1]
        if k2:
            handles += [Line2D([], [], color="grey", ls=STYLES[i % 4], marker=MARKERS[i % 4]) for i in range(len(vals2))]
            labels += [f"{LABELS[k2]} = {_fmt(v)}" for v in vals2]
        if n_unconv:
            handles.append(UNCONVERGED_HANDLE)
            labels.append(f"unconverged theory ({n_unconv})")
        if n_notok:
            handles.append(Line2D([], [], ls="none", marker="o", mfc="none", color="grey"))
            labels.append(f"sim not converged ({n_notok})")
        if n_nonfinite:
            handles.append(Line2D([], [], ls="none", marker="^", mfc="none", color="grey", mew=1.5))
            labels.append(f"sim diverged ({n_nonfinite})")
        ax.legend(handles, labels, fontsize=7.5, loc="lower left", ncol=2 if len(handles) > 5 else 1)
        pa = [r for r in agree_rows if r["panel"] == pname]
        summary[pname] = {"n": len(pa), "agree": sum(r["agree"] for r in pa),
                          "worst_rel": max((abs(r["rel_dev"]) for r in pa), default=float("nan")), "sims": n_sim,
                          "expected": n_exp_panel, "unconverged_theory": n_unconv,
                          "excluded": excluded.get(pname, 0)}
    for ax in axes.ravel()[len(spec):]:
        ax.set_visible(False)
    seeds_found = sorted({r["seeds"] for r in idx.values()})
    if n_found:
        sim_txt = (f"simulations: markers = mean over {n_seeds} seeds with 95% CI, D = {dim} "
                   f"({n_found}/{n_expected} panel points)")
    else:
        sim_txt = f"NO SIMULATIONS (theory only; expected D = {dim}, {n_seeds} seeds)"
    fig.suptitle("DLN fine-tuning, generalisation error vs $\\alpha$: replica theory (lines, "
                 f"{len(np.atleast_1d(alphas))} alphas) and gradient-descent\n{sim_txt}; "
                 f"$\\rho_{{PT}}$ = {_fmt(PAPER_DEFAULTS['rho_pt'])}, $a_{{PT}}$ = {_fmt(PAPER_DEFAULTS['a_pt'])}"
                 + (f"; {n_unconv_total} unconverged theory points (red x)" if n_unconv_total else ""), fontsize=10)
    files = _save(fig, out_dir / "dln_panels.png", pdf=True)
    _write_csv(out_dir / "dln_panels_points.csv", points, POINT_COLUMNS)
    _write_csv(out_dir / "dln_agreement.csv", agree_rows, AGREE_COLUMNS)

    if n_found == 0:
        msgs.append(f"no simulation points at D = {dim}, {n_seeds} seeds: the figure is theory only")
    elif n_found < n_expected:
        msgs.append(f"simulations incomplete: {n_found} of {n_expected} panel points present; plotted what exists")
    for m in msgs:
        print("panels: NOTE:", m)
    print(f"panels: {n_unconv_total} unconverged theory points (marked red x, not in the lines); "
          f"seeds per sim point: {seeds_found or '-'}")
    print(f"agreement (sim mean > {ERROR_FLOOR:g}: within 95% CI of the exact theory or within "
          f"{REL_TOL:.0%} relative):")
    for p, s in summary.items():
        frac = f"{s['agree'] / s['n']:.0%}" if s["n"] else "-"
        print(f"  ({p}) sims {s['sims']:3d}/{s['expected']:3d}  judged {s['n']:3d}  agree {s['agree']:3d} ({frac})  "
              f"worst |rel dev| {s['worst_rel']:.3g}  not judged (diverged / not converged) {s['excluded']}")
    tot_n = sum(s["n"] for s in summary.values())
    tot_a = sum(s["agree"] for s in summary.values())
    print(f"  all: {tot_a}/{tot_n} agree; wrote {', '.join(str(f) for f in files)}, dln_panels_points.csv, "
          f"dln_agreement.csv in {out_dir}; {time.time() - t0:.1f}s")
    return {"summary": summary, "points": points, "agreement": agree_rows, "n_found": n_found,
            "n_expected": n_expected, "unconverged": n_unconv_total, "messages": msgs}


# ----------------------------------------------------------------------------------------------
# the four regimes on three ground truths


def regimes(out_dir: Path, alphas: Sequence[float] = THEORY_ALPHAS, c: float = 1e-3,
            **replica_kw: Any) -> dict[str, Any]:
    """Theory curves of the four regimes (REGIMES) on the three ground truths (GROUND_TRUTHS), one panel each."""
    t0 = time.time()
    out_dir = Path(out_dir)
    rows: list[dict] = []
    fig, axes = plt.subplots(1, len(GROUND_TRUTHS), figsize=(5.4 * len(GROUND_TRUTHS), 4.6), squeeze=False,
                             constrained_layout=True)
    n_bad_total = 0
    best: dict[str, str] = {}
    for ax, gt in zip(axes[0], GROUND_TRUTHS):
        gt_name = f"omega={_fmt(gt['omega'])}, rho_ft={_fmt(gt['rho_ft'])}"
        n_bad = 0
        handles, labels = [], []
        mean_err = {}
        for i, (rname, knobs) in enumerate(REGIMES.items()):
            cfg = curve_config({**knobs, **gt, "c_pt": c})
            res = theory(cfg, alphas, **replica_kw)
            n_bad += plot_theory(ax, res, color=COLORS[i % 4], lw=1.8)
            rows += [{"ground_truth": gt_name, "regime": rname, **r} for r in theory_rows(cfg, res)]
            handles.append(Line2D([], [], color=COLORS[i % 4], lw=2))
            labels.append(f"{rname} ({LABELS['lam_pt']} = {_fmt(knobs['lam_pt'])}, "
                          f"{LABELS['gamma']} = {_fmt(knobs['gamma'])})")
            ok = res.converged
            mean_err[rname] = float(np.mean(res.error[ok])) if ok.any() else math.inf
        best[gt_name] = min(mean_err, key=mean_err.get)
        if n_bad:
            handles.append(UNCONVERGED_HANDLE)
            labels.append(f"unconverged theory ({n_bad})")
        n_bad_total += n_bad
        ax.legend(handles, labels, fontsize=7.5, loc="lower left")
        ax.set_yscale("log")
        ax.set_ylim(bottom=Y_FLOOR)
        ax.set_xlabel(r"$\alpha = n / D$")
        ax.set_ylabel("generalisation error (theory)")
        kind = "new features" if gt["omega"] == 0 else "PT features"
        ax.set_title(f"FT on {kind}: $\\omega$ = {_fmt(gt['omega'])}, $\\rho_{{FT}}$ = {_fmt(gt['rho_ft'])}"
                     + (f"\n{n_bad} unconverged theory pts (red x)" if n_bad else ""), fontsize=10)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"The four fine-tuning regimes on three ground truths (replica theory, c = {_fmt(c)}, "
                 f"$\\rho_{{PT}}$ = {_fmt(PAPER_DEFAULTS['rho_pt'])})", fontsize=11)
    _save(fig, out_dir / "dln_regimes.png")
    _write_csv(out_dir / "dln_regimes.csv", rows, REGIMES_COLUMNS)
    print(f"regimes: {len(rows)} theory points, {n_bad_total} unconverged (marked red x); lowest mean error per "
          f"ground truth: {best}; {time.time() - t0:.1f}s")
    return {"rows": rows, "unconverged": n_bad_total, "best": best}


# ----------------------------------------------------------------------------------------------
# command line


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ptft.analysis.dln_figures",
                                 description="DLN figures and tables (docs/paper.md sections 6-7).")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, replica: bool = True) -> None:
        p.add_argument("--out", type=Path, default=None,
                       help="output folder (default results/dln_panels/ for panels, results/dln_theory/ for the rest)")
        if replica:
            p.add_argument("--n-alpha", type=int, default=len(THEORY_ALPHAS),
                           help="theory alphas, evenly spaced in [0.01, 0.5] (default 80)")
            p.add_argument("--max-iter", type=int, default=1000, help="replica fixed-point iterations per alpha")

    p = sub.add_parser("regime-map", help="l-order and PD heat maps with the four regimes")
    common(p, replica=False)
    p.add_argument("--n-beta", type=int, default=200)
    p.add_argument("--n-lam", type=int, default=121)
    common(sub.add_parser("theory", help="replica curves of every panel -> dln_theory.csv"))
    for name, hlp in [("panels", "six-panel theory-vs-simulation figure + agreement table"), ("all", "everything")]:
        p = sub.add_parser(name, help=hlp)
        common(p)
        p.add_argument("--sims", type=Path, required=True, help="tidy CSV written by ptft.analysis.dln_sims")
        p.add_argument("--scale", choices=sorted(SCALES), default="cpu", help="expected D and seeds of the sims")
        p.add_argument("--store", type=Path, default=None,
                       help="also take finished sim jobs from this run store (trains nothing)")
        if name == "all":
            p.add_argument("--n-beta", type=int, default=200)
            p.add_argument("--n-lam", type=int, default=121)
    common(sub.add_parser("regimes", help="the four regimes on three ground truths (theory)"))
    a = ap.parse_args(argv)
    if getattr(a, "n_alpha", 2) < 2:
        ap.error("--n-alpha must be >= 2")
    if getattr(a, "max_iter", 1) < 1:
        ap.error("--max-iter must be >= 1")
    t0 = time.time()
    kw = {"max_iter": a.max_iter} if hasattr(a, "max_iter") else {}
    alphas = np.linspace(0.01, 0.5, a.n_alpha) if hasattr(a, "n_alpha") else THEORY_ALPHAS
    theory_dir, panels_dir = (a.out or Path("results/dln_theory")), (a.out or Path("results/dln_panels"))
    try:
        if a.command in ("regime-map", "all"):
            regime_map(theory_dir, n_beta=a.n_beta, n_lam=a.n_lam)
        if a.command in ("theory", "all"):
            theory_table(theory_dir, alphas, **kw)
        if a.command in ("panels", "all"):
            panels(panels_dir, a.sims, a.scale, a.store, alphas, **kw)
        if a.command in ("regimes", "all"):
            regimes(theory_dir, alphas, **kw)
    except ConfigError as e:
        ap.exit(2, f"ptft: error: {e}\n")
    print(f"dln_figures {a.command}: done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
