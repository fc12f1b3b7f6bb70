"""Finite-size scaling of the gap between DLN simulation and the replica theory (docs/paper.md section 5).

    python scripts/dln_finite_size.py --store runs/dln_finite_size --workers 2

The replica prediction is a D -> inf statement. This takes the points where the six-panel figure's
simulation (D = 1000, 5 seeds) disagrees with the theory (results/dln_panels/dln_agreement.csv, agree = False:
9 distinct (curve, alpha) points) and the 3 agreeing points where the theory is steepest in alpha, and
runs the same gradient descent (lr 0.5, float64, train MSE < 1e-4) at D in {250, 500, 1000, 2000, 4000}
with more seeds at small D (the spread across seeds shrinks like D^-1/2): 32, 16, 8, 4, 4 (--dims
runs a subset; --alphas / --points only the points at those alphas / with those numbers; --merge keeps the rows of the existing CSV that
the run does not redo, e.g. `--dims 4000 --alphas 0.059 0.108 --merge` adds D = 4000 where it is cheap). One
multi-configuration `ptft-dln` job per (D, alpha) (the points at that alpha share X per seed); resumable
(finished runs in the store are skipped).

Outputs (--out, default results/dln_finite_size/): dln_finite_size.csv (per point and D: mean test error, 95% CI, the
theory, gap = sim - theory, sim / theory, seeds, the CPU seconds of the job that made it), dln_finite_size_fit.csv (per
point: the weighted least-squares fit gap(D) = A D^-p over D, with p's standard error and the
extrapolated gap at D = 1e6; and one pooled fit of sim / theory - 1 = A_k D^-p with a shared exponent)
and dln_finite_size.png (|gap| and sim / theory vs D, log-log, one line per point); dln_sim_theory_offset.csv
(over all judged points of the six panels at D = 1000, per FT support fraction rho_ft: how many have the
simulation above the theory, the median sim / theory and the mean log ratio with its standard error).

    python scripts/dln_finite_size.py --ib --workers 2

splits the gap in two without gradient descent: the replica theory predicts the error of the exact
implicit-bias minimiser (argmin sum q_k(beta) s.t. X beta = y), which Newton's method finds in seconds, so
the same points are solved at D in {250, ..., 4000} with 256, 128, 64, 32, 16 seeds (minimiser / theory:
the finite-size part), and GD's mean is divided by the minimiser's on the GD runs' own seeds (GD /
minimiser: what the simulation protocol adds). Outputs dln_finite_size_ib.csv (same columns, the
minimiser's error in sim_mean, plus gd_over_ib), dln_finite_size_ib_fit.csv and dln_finite_size_ib.png.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from scipy import optimize, stats

from ptft.analysis.dln_figures import theory
from ptft.analysis.dln_sims import CONFIG_KEYS, _timed_group, ci95, group_overrides, job_overrides, worker_init
from ptft.analysis.panels import curve_config
from ptft.train.store import atomic_write_text

DIMS = {250: 32, 500: 16, 1000: 8, 2000: 4, 4000: 4}  # D -> seeds
IB_DIMS = {250: 256, 500: 128, 1000: 64, 2000: 32, 4000: 16}  # D -> seeds of the implicit-bias minimiser
N_STEEP = 3
P_MAX = 3.0  # the fitted exponent is bounded to [-3, 3]: a gap that changes sign has no power law


def _cfg(row: dict) -> dict:
    return curve_config({k: float(row[k]) for k in CONFIG_KEYS})


def _key(cfg: dict, alpha: float) -> tuple:
    return tuple(cfg[k] for k in CONFIG_KEYS) + (round(alpha, 6),)


def points(agreement: Path) -> list[dict]:
    """The distinct disagreeing (curve, alpha) points, then the N_STEEP agreeing ones with the steepest
    theory (|d log theory / d alpha| from the neighbouring simulated alphas of the same curve)."""
    rows = [r for r in csv.DictReader(agreement.open()) if r["status"] == "ok"]
    by_key: dict[tuple, dict] = {}
    for r in rows:
        by_key.setdefault(_key(_cfg(r), float(r["alpha"])), r)
    bad = [k for k, r in by_key.items() if r["agree"] == "False"]
    curves: dict[tuple, list[tuple[float, float]]] = {}
    for k, r in by_key.items():
        curves.setdefault(k[:-1], []).append((k[-1], float(r["theory"])))
    steep = []
    for k, r in by_key.items():
        if r["agree"] != "True":
            continue
        pts = sorted(curves[k[:-1]])
        i = [a for a, _ in pts].index(k[-1])
        if 0 < i < len(pts) - 1:
            (a0, t0), (a1, t1) = pts[i - 1], pts[i + 1]
            steep.append((abs(np.log(t1) - np.log(t0)) / (a1 - a0), k))
    chosen = [k for _, k in sorted(steep, reverse=True)[:N_STEEP]]
    out = []
    for kind, keys in (("disagree", bad), ("agree_steep", chosen)):
        for k in keys:
            r = by_key[k]
            out.append({"point": len(out), "kind": kind, "cfg": _cfg(r), "alpha": k[-1],
                        "theory": float(theory(_cfg(r), [k[-1]]).error[0])})
    return out


def simulate(pts: list[dict], store: str, workers: int, dims: dict[int, int], extra: list[str] = ()) -> list[dict]:
    groups: dict[tuple[int, float], list[dict]] = {}
    for p in pts:
        for dim in dims:
            groups.setdefault((dim, p["alpha"]), []).append(p)
    order = sorted(groups, key=lambda g: (g[0], -g[1]))  # D by D (a partial study has whole Ds), big alpha first
    rows = []
    t0 = time.time()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=worker_init) as ex:
        futs = {ex.submit(_timed_group, group_overrides([p["cfg"] for p in groups[g]], g[1], g[0], dims[g[0]],
                                                        store) + list(extra)): g for g in order}
        for i, f in enumerate(as_completed(futs), 1):
            (dim, alpha), (results, cpu) = futs[f], f.result()
            for p, res in zip(groups[(dim, alpha)], results):
                err = np.array([m["test_mse"] for m in res.get("members", [res])])
                # the CPU seconds of the job that trained this run (until it finished), from its timing.json
                timing = json.loads((Path(store) / "dln" / res["provenance"]["run_hash"] / "timing.json").read_text())
                rows.append({"point": p["point"], "kind": p["kind"], **{k: p["cfg"][k] for k in CONFIG_KEYS},
                             "alpha": alpha, "dim": dim, "seeds": len(err), "status": res["status"],
                             "sim_mean": float(err.mean()), "sim_ci95": ci95(err), "theory": p["theory"],
                             "gap": float(err.mean()) - p["theory"], "ratio": float(err.mean()) / p["theory"],
                             "job_cpu_s": timing.get("job_cpu_s", float("nan")),
                             "job_points": len(groups[(dim, alpha)])})
            print(f"[{time.time() - t0:6.0f} s] {i}/{len(order)} D={dim} alpha={alpha}: "
                  f"{len(groups[(dim, alpha)])} points x {dims[dim]} seeds, {cpu:.0f} CPU s", flush=True)
    return sorted(rows, key=lambda r: (r["point"], r["dim"]))


def ib_row(p: dict, dim: int, seeds: int, store: str, extra: list[str] = ()) -> dict:
    """The point at D = dim without gradient descent: the test error of the exact implicit-bias minimiser
    (argmin sum_i q_k(beta_i) s.t. X beta = y, docs/paper.md section 3; ptft.dln.theory.implicit_bias_solution),
    the quantity the replica theory predicts, for seeds 0 .. seeds - 1 on the GD members' data, teachers
    and test inputs. `gd_over_ib`: the GD mean over the seeds of the GD run in `store` (if it finished;
    `extra`: the overrides it ran with) divided by the minimiser's mean over the same seeds, i.e. what the
    simulation protocol adds."""
    import torch

    import ptft.dln.main  # noqa: F401  (registers the dln config schema)
    from ptft import app
    from ptft.dln.main import scientific
    from ptft.dln.task import member_data, test_inputs
    from ptft.dln.theory import implicit_bias_solution, k_finetune
    from ptft.train.store import RunDir

    torch.set_num_threads(1)
    t0 = time.process_time()
    d = app.compose("dln", job_overrides(p["cfg"], p["alpha"], dim, seeds, store)).dln
    T = test_inputs(dim, int(d.n_test), inputs=d.inputs)
    err = []
    for s in range(seeds):
        m = member_data(d, s)
        b = implicit_bias_solution(m.X, m.y, k_finetune(m.beta_pt, d.c_pt, d.lam_pt, d.gamma))
        err.append(float(np.mean((T @ (b - m.beta_star)) ** 2)))
    err = np.array(err)
    gd_over_ib = float("nan")
    if dim in DIMS:
        gd_job = job_overrides(p["cfg"], p["alpha"], dim, DIMS[dim], store) + list(extra)
        run = RunDir(Path(store), "dln", scientific(app.compose("dln", gd_job)))
        if run.finished:
            gd = np.array([m["test_mse"] for m in run.load_result()["members"]])
            gd_over_ib = float(gd.mean() / err[:len(gd)].mean())
    return {"point": p["point"], "kind": p["kind"], **{k: p["cfg"][k] for k in CONFIG_KEYS}, "alpha": p["alpha"],
            "dim": dim, "seeds": seeds, "status": "ok", "sim_mean": float(err.mean()), "sim_ci95": ci95(err),
            "theory": p["theory"], "gap": float(err.mean()) - p["theory"], "ratio": float(err.mean()) / p["theory"],
            "gd_over_ib": gd_over_ib, "job_cpu_s": time.process_time() - t0, "job_points": 1}


def simulate_ib(pts: list[dict], store: str, workers: int, dims: dict[int, int], extra: list[str] = ()) -> list[dict]:
    rows, t0 = [], time.time()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
        futs = [ex.submit(ib_row, p, dim, seeds, store, extra) for dim, seeds in dims.items() for p in pts]
        for i, f in enumerate(as_completed(futs), 1):
            r = f.result()
            rows.append(r)
            print(f"[{time.time() - t0:6.0f} s] {i}/{len(futs)} point {r['point']} D={r['dim']}: minimiser / theory "
                  f"{r['ratio']:.3f} ({r['seeds']} seeds), GD / minimiser {r['gd_over_ib']:.3f}", flush=True)
    return sorted(rows, key=lambda r: (r["point"], r["dim"]))


def offset_by_support(agreement: Path) -> list[dict]:
    """The sign and size of sim / theory over ALL judged points of the six-panel figure (D = 1000), per FT
    support fraction rho_ft: is the simulation above the theory only at the disagreeing points, or
    everywhere, by an amount that depends on the teacher's sparsity?"""
    rows = [r for r in csv.DictReader(agreement.open()) if r["status"] == "ok"]
    by_key: dict[tuple, dict] = {}
    for r in rows:
        by_key.setdefault(_key(_cfg(r), float(r["alpha"])), r)
    out = []
    for rho in sorted({float(r["rho_ft"]) for r in by_key.values()}):
        rs = [r for r in by_key.values() if float(r["rho_ft"]) == rho]
        lr = np.log([float(r["sim_mean"]) / float(r["theory"]) for r in rs])
        out.append({"rho_ft": rho, "points": len(rs), "agree": sum(r["agree"] == "True" for r in rs),
                    "sim_above_theory": int((lr > 0).sum()), "median_ratio": float(np.exp(np.median(lr))),
                    "mean_log_ratio": float(lr.mean()),
                    "mean_log_ratio_se": float(lr.std(ddof=1) / np.sqrt(len(lr))) if len(lr) > 1 else float("nan")})
    return out


def _power(D, A, p):
    return A * D ** (-p)


def fits(rows: list[dict], what: str = "sim") -> list[dict]:
    """gap(D) = A D^-p per point, weighted by the standard error of each mean (ci95 / t); and a pooled
    fit of the relative gap sim / theory - 1 = A_k D^-p with one exponent p for all points."""
    out = []
    by_point: dict[int, list[dict]] = {}
    for r in rows:
        by_point.setdefault(r["point"], []).append(r)
    for pt, rs in sorted(by_point.items()):
        D = np.array([r["dim"] for r in rs], float)
        gap = np.array([r["gap"] for r in rs])
        se = np.array([r["sim_ci95"] / stats.t.ppf(0.975, r["seeds"] - 1) for r in rs])
        try:
            (A, p), cov = optimize.curve_fit(_power, D, gap, p0=(gap[0] * D[0] ** 0.5, 0.5), sigma=se,
                                             absolute_sigma=True, maxfev=20000, bounds=([-np.inf, -P_MAX], [np.inf, P_MAX]))
            p_se = float(np.sqrt(cov[1, 1]))
        except (RuntimeError, ValueError):
            A, p, p_se = float("nan"), float("nan"), float("nan")
        chi2 = float(np.sum(((gap - _power(D, A, p)) / se) ** 2))
        out.append({"point": pt, "kind": rs[0]["kind"], **{k: rs[0][k] for k in CONFIG_KEYS}, "alpha": rs[0]["alpha"],
                    "theory": rs[0]["theory"], **{f"gap_D{int(d)}": float(g) for d, g in zip(D, gap)},
                    "A": float(A), "p": float(p), "p_se": p_se, "chi2": chi2, "dof": len(D) - 2,
                    "gap_at_1e6": float(_power(1e6, A, p))})
    # pooled: relative gap, one exponent
    pts = sorted(by_point)
    for d in sorted({r["dim"] for r in rows}):  # the mean relative gap over the disagreeing points, per D
        dis = [r["ratio"] - 1 for r in rows if r["dim"] == d and r["kind"] == "disagree"]
        out.append({"point": f"mean_D{d}", "kind": f"mean of {what} / theory - 1 over the disagreeing points",
                    "dim": d, "mean_rel_gap": float(np.mean(dis)), "n_points": len(dis)})
    rel = [(pts.index(r["point"]), r["dim"], r["ratio"] - 1,
            r["sim_ci95"] / stats.t.ppf(0.975, r["seeds"] - 1) / r["theory"]) for r in rows]
    idx, D, y, se = (np.array(v, float) for v in zip(*rel))
    idx = idx.astype(int)

    def resid(theta):
        return (y - np.exp(theta[:-1])[idx] * D ** (-theta[-1])) / se

    x0 = np.r_[np.log(np.maximum([np.mean(y[idx == i]) for i in range(len(pts))], 1e-3) * 1000**0.5), 0.5]
    sol = optimize.least_squares(resid, x0)
    J = sol.jac
    cov = np.linalg.pinv(J.T @ J)
    out.append({"point": "pooled", "kind": "relative gap, shared exponent", "p": float(sol.x[-1]),
                "p_se": float(np.sqrt(cov[-1, -1])), "chi2": float(np.sum(sol.fun**2)), "dof": len(y) - len(sol.x)})
    return out


def _read(path: Path) -> list[dict]:
    """The rows of a dln_finite_size.csv, numbers as numbers."""
    def num(k, v):
        if k in ("kind", "status"):
            return v
        return int(v) if k in ("point", "dim", "seeds", "job_points") else float(v)
    return [{k: num(k, v) for k, v in r.items()} for r in csv.DictReader(path.open())]


def write(rows: list[dict], path: Path) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())  # an interrupted write never damages the previous table
    print(f"wrote {path}")


def figure(rows: list[dict], fit: list[dict], path: Path, what: str = "sim") -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 5.2))
    for f in fit:
        if not isinstance(f["point"], int):
            continue
        rs = [r for r in rows if r["point"] == f["point"]]
        D = np.array([r["dim"] for r in rs])
        gap = np.array([r["gap"] for r in rs])
        h = np.array([r["sim_ci95"] for r in rs])
        ls = "-" if f["kind"] == "disagree" else ":"
        lab = (f"{f['point']}: c={f['c_pt']:g} lt={f['lam_pt']:g} om={f['omega']:g} a={f['alpha']:g} "
               f"(p={f['p']:.2f}±{f['p_se']:.2f})")
        line = a1.errorbar(D * (1 + 0.02 * f["point"]), np.abs(gap), yerr=h, marker="o", ms=3, ls=ls, capsize=2,
                           label=lab)
        a2.errorbar(D * (1 + 0.02 * f["point"]), [r["ratio"] for r in rs], yerr=h / rs[0]["theory"], marker="o",
                    ms=3, ls=ls, capsize=2, color=line[0].get_color())
    pooled = next(f for f in fit if f["point"] == "pooled")
    a1.set(xscale="log", yscale="log", xlabel="D", ylabel=f"|{what} - theory| (95% CI of the mean)",
           title="gap vs D (solid: disagreed at D = 1000; dotted: agreed, steep)")
    a2.axhline(1, color="k", lw=0.8)
    a2.set(xscale="log", xlabel="D", ylabel=f"{what} / theory",
           title=f"pooled fit: relative gap ~ D^-p, p = {pooled['p']:.2f} ± {pooled['p_se']:.2f}")
    dims = sorted({r["dim"] for r in rows})
    for ax in (a1, a2):  # one labelled tick per simulated D, no crowded minor labels
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.legend(*a1.get_legend_handles_labels(), fontsize=6, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default="runs/dln_finite_size")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--agreement", type=Path, default=Path("results/dln_panels/dln_agreement.csv"))
    ap.add_argument("--out", type=Path, default=Path("results/dln_finite_size"))
    ap.add_argument("--ib", action="store_true",
                    help="instead of gradient descent, the exact implicit-bias minimiser at D in "
                         f"{list(IB_DIMS)} with {list(IB_DIMS.values())} seeds (what the replica predicts), "
                         "and GD / minimiser on the GD runs' seeds (outputs dln_finite_size_ib*)")
    ap.add_argument("--dims", type=int, nargs="+", default=None, help=f"a subset of {list(DIMS)}")
    ap.add_argument("--alphas", type=float, nargs="+", help="run only the points at these alphas")
    ap.add_argument("--points", type=int, nargs="+", help="run only these points (the `point` column)")
    ap.add_argument("--threshold", type=float, default=None,
                    help="GD's stopping train MSE instead of the panels' 1e-4 (train.threshold; with --ib: of the "
                         "GD runs to compare with); use its own --out")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of the existing OUT/dln_finite_size.csv that this run does not redo "
                         "(e.g. add D = 4000 for a few points to a finished study), and fit all of them")
    a = ap.parse_args()
    grid = IB_DIMS if a.ib else DIMS
    bad = sorted(set(a.dims or []) - set(grid))
    if bad:
        ap.error(f"--dims {bad}: choose from {list(grid)} (each D has its seed count)")
    if a.workers < 1:
        ap.error("--workers must be >= 1")
    if a.threshold is not None and not 0 < a.threshold < 1:
        ap.error(f"--threshold must be in (0, 1), got {a.threshold}")
    extra = [] if a.threshold is None else [f"train.threshold={a.threshold!r}"]
    dims = {d: grid[d] for d in sorted(a.dims or grid)}
    pts = points(a.agreement)
    if a.alphas:
        want = {round(x, 6) for x in a.alphas}
        bad = sorted(want - {round(p["alpha"], 6) for p in pts})
        if bad:
            ap.error(f"--alphas {bad}: no study point there; the points' alphas are "
                     f"{sorted({p['alpha'] for p in pts})}")
        pts = [p for p in pts if round(p["alpha"], 6) in want]
    if a.points:
        bad = sorted(set(a.points) - {p["point"] for p in pts})
        if bad:
            ap.error(f"--points {bad}: not among the points {[p['point'] for p in pts]}"
                     + (" at those --alphas" if a.alphas else ""))
        pts = [p for p in pts if p["point"] in a.points]
    name = "dln_finite_size_ib" if a.ib else "dln_finite_size"
    old = a.out / f"{name}.csv"
    if a.merge and not old.exists():
        ap.error(f"--merge: {old} does not exist")
    print(f"{sum(p['kind'] == 'disagree' for p in pts)} disagreeing and "
          f"{sum(p['kind'] != 'disagree' for p in pts)} steep agreeing points", flush=True)
    rows = (simulate_ib if a.ib else simulate)(pts, a.store, a.workers, dims, extra)
    if a.merge:
        done = {(r["point"], r["dim"]) for r in rows}
        kept = [r for r in _read(old) if (r["point"], r["dim"]) not in done]
        rows = sorted(rows + kept, key=lambda r: (r["point"], r["dim"]))
        dims = dict.fromkeys(sorted({r["dim"] for r in rows}))
    a.out.mkdir(parents=True, exist_ok=True)
    write(rows, a.out / f"{name}.csv")
    if a.ib:  # one task per (point, D)
        cost = {d: sum(r["job_cpu_s"] for r in rows if r["dim"] == d) for d in dims}
    else:  # one job per (D, alpha), shared by its points
        cost = {d: sum(max(r["job_cpu_s"] for r in rows if (r["dim"], r["alpha"]) == g)
                       for g in {(r["dim"], r["alpha"]) for r in rows if r["dim"] == d}) for d in dims}
    print("CPU s per D: " + ", ".join(f"D={d}: {c:.0f}" for d, c in cost.items()))
    what = "minimiser" if a.ib else "sim"
    if len({r["dim"] for r in rows}) < 2:
        print("one D only: no fit of the decay and no figure")
    else:
        fit = fits(rows, what)
        write(fit, a.out / f"{name}_fit.csv")
        figure(rows, fit, a.out / f"{name}.png", what)
    if not a.ib and a.threshold is None:  # the six panels' offset (their protocol), not this run's
        write(offset_by_support(a.agreement), a.out / "dln_sim_theory_offset.csv")


if __name__ == "__main__":
    main()
