"""Time every theory curve of the DLN figures (docs/paper.md section 7) at paper numerics.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_theory.py [--n-alpha 80] [--mc-points 3]

Six panels (a)-(f) and the four-regimes figure (replica curves, 80 alphas in [0.01, 0.5] each), the
STL baselines, and the regime map (l-order and PD on a 300 x 201 grid). Prints the wall time of each
part, the total, the worst fixed-point residual, and the cost of the paper's own method (80 000-sample
Monte Carlo) per point measured on a few points, as a ratio to the quadrature used here.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from ptft.dln.replica import generalization_error, generalization_error_stl
from ptft.dln.theory import l_order, pt_dependence


def curves() -> dict[str, list[dict]]:
    """Every FT curve of section 7, as keyword arguments of generalization_error (rho_pt = 0.1, a_pt = 1)."""
    ft = lambda **kw: dict(rho_pt=0.1, **{"rho_ft": 0.1, "c_pt": 1e-3, "lam_pt": 0.0, "gamma": 0.0, **kw})  # noqa
    p = {
        "a": [ft(c_pt=c, omega=o) for c in (1e-6, 1e-3, 1.0) for o in (0.0, 1.0)],
        "b": [ft(gamma=g, omega=o) for g in (0.0, 1.0, 10.0) for o in (0.0, 1.0)],
        "c": [ft(lam_pt=lam, omega=o) for lam in (-0.99, 0.0, 0.99) for o in (0.0, 0.5, 1.0)],
        "d": [ft(omega=0.0, rho_ft=r, c_pt=c) for r in (0.1, 0.9) for c in (1e-6, 1e-3, 1.0)],
        "e": [ft(omega=0.0, rho_ft=r, gamma=g) for r in (0.1, 0.9) for g in (0.0, 1.0, 10.0)],
        "f": [ft(omega=1.0, rho_ft=r, lam_pt=lam) for r in (0.01, 0.04, 0.1) for lam in (-0.99, 0.0, 0.99)],
        "regimes": [ft(omega=o, rho_ft=r, lam_pt=lam, gamma=g)
                    for (lam, g) in ((0.0, 0.0), (-0.99, 0.0), (-0.999999, 1e-6), (0.0, 10.0))
                    for (o, r) in ((0.0, 0.1), (1.0, 0.1), (1.0, 0.01))],
    }
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-alpha", type=int, default=80)
    ap.add_argument("--mc-points", type=int, default=3, help="points solved with 80k-sample MC for the ratio")
    args = ap.parse_args()
    alphas = np.linspace(0.01, 0.5, args.n_alpha)
    total, worst, n_pts, n_bad = 0.0, 0.0, 0, 0
    for name, kws in curves().items():
        t = time.perf_counter()
        for kw in kws:
            r = generalization_error(alphas, **kw)
            worst = max(worst, float(r.residual.max()))
            n_pts += r.alphas.size
            n_bad += int((~r.converged).sum())
        dt = time.perf_counter() - t
        total += dt
        print(f"panel {name:8s} {len(kws):2d} curves  {dt:6.2f} s")
    t = time.perf_counter()
    stl = [(r, c) for r in (0.01, 0.04, 0.1, 0.9) for c in (1e-6, 1e-3, 1.0)]
    for rho, c in stl:
        r = generalization_error_stl(alphas, rho=rho, c=c)
        worst = max(worst, float(r.residual.max()))
        n_pts += r.alphas.size
        n_bad += int((~r.converged).sum())
    dt = time.perf_counter() - t
    total += dt
    print(f"STL      {len(stl):2d} curves  {dt:6.2f} s")
    t = time.perf_counter()
    bpt = np.geomspace(5e-4, 2e3, 300)[None, :]
    lam = np.linspace(-1, 1, 201)[:, None]
    lo, pd = l_order(1.0, bpt, 0.1, lam, 0.0), pt_dependence(1.0, bpt, 0.1, lam, 0.0)
    dt = time.perf_counter() - t
    total += dt
    print(f"regime map {lo.size} points  {dt:6.3f} s")
    print(f"TOTAL {total:.2f} s for {n_pts} replica points (+ map); unconverged {n_bad}; worst residual {worst:.2e}")

    if args.mc_points > 0:  # the paper's numerics, per point, from scratch (no continuation) for both
        kw = curves()["c"][1]
        pts = np.linspace(0.05, 0.45, args.mc_points)
        t = time.perf_counter()
        for a in pts:
            generalization_error([a], **kw)
        tq = (time.perf_counter() - t) / len(pts)
        t = time.perf_counter()
        for a in pts:
            generalization_error([a], method="mc", **kw)
        tm = (time.perf_counter() - t) / len(pts)
        print(f"per point from scratch: quadrature {tq * 1e3:.1f} ms, 80k-sample MC {tm * 1e3:.1f} ms "
              f"(ratio MC/quad = {tm / tq:.1f})")


if __name__ == "__main__":
    main()
