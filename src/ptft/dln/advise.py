"""`ptft-theory`: command-line access to the DLN theory (argparse, no Hydra).

    ptft-theory advise --rho-pt 0.1 --rho-ft 0.1 --omega 1 --alpha 0.2 [--candidates C,LAM,GAMMA ...]
                       [--a-pt 1.0] [--sigma0 0.0] [--csv PATH]

ranks fine-tuning initialisations (c, lam, gamma) by the replica prediction of the generalisation
error (`ptft.dln.replica.generalization_error`) at the given sample ratio alpha = n / D, and prints a
table (rank, c, lam, gamma, regime, predicted error, residual) and the best choice. The default grid
is c in {1e-6, 1e-3, 1} x lam in {-0.99, 0, 0.99} x gamma in {0, 1, 10} plus the four regime corners
of docs/paper.md section 6/7 (c = 1e-3: I = (-0.999999, 1e-6), II = (0, 0), III = (0, 10), IV = (-0.99, 0)).
The regime column is `regime_of(l_order, PD)` at |beta_PT| = a_pt and |beta_FT| = 1/sqrt(rho_ft) (the
RMS value of the FT teacher). Unconverged predictions are flagged with '!' and ranked last.
Bad input (infeasible teacher, alpha <= 0, malformed candidate) prints one message and exits with 2.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass
from itertools import product

from ptft import ArgumentParser, ConfigError
from ptft.dln.teachers import check_feasible

REGIME_CORNERS: dict[str, tuple[float, float, float]] = {
    "I": (1e-3, -0.999999, 1e-6), "II": (1e-3, 0.0, 0.0), "III": (1e-3, 0.0, 10.0), "IV": (1e-3, -0.99, 0.0)}


def default_candidates() -> list[tuple[float, float, float]]:
    """The default (c, lam, gamma) grid: 3 x 3 x 3 plus the regime corners, without duplicates."""
    grid = list(product((1e-6, 1e-3, 1.0), (-0.99, 0.0, 0.99), (0.0, 1.0, 10.0)))
    for corner in REGIME_CORNERS.values():
        if corner not in grid:
            grid.append(corner)
    return grid


@dataclass(frozen=True)
class Row:
    c: float
    lam: float
    gamma: float
    regime: str
    error: float
    residual: float
    converged: bool


def _candidate(text: str) -> tuple[float, float, float]:
    parts = text.split(",")
    try:
        if len(parts) != 3:
            raise ValueError
        c, lam, gamma = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"candidate {text!r} must be C,LAM,GAMMA (three numbers), e.g. 1e-3,-0.99,0")
    return c, lam, gamma


def check_init(lam: float, gamma: float, lam_key: str = "lam", gamma_key: str = "gamma") -> None:
    """lam = -1 with gamma = 0 makes c_FT = 0, so k = 4 c_FT^2 = 0: the implicit-bias penalty is undefined and
    gradient descent from that fine-tuning initialisation has a zero gradient (it never moves). ConfigError
    naming the keys (shared by ptft-theory's candidates and ptft-dln's dln.lam_pt / dln.gamma)."""
    if lam == -1.0 and gamma == 0.0:
        raise ConfigError(f"{lam_key}=-1 with {gamma_key}=0 gives k = 0 (undefined penalty; fine-tuning starts "
                          f"at a zero gradient and never moves); use {lam_key} > -1 or {gamma_key} > 0")


def rank(*, rho_pt: float, rho_ft: float, omega: float, alpha: float, a_pt: float = 1.0, sigma0: float = 0.0,
         candidates: list[tuple[float, float, float]] | None = None) -> list[Row]:
    """Predicted FT error of every candidate at alpha, best first (unconverged ones last).

    Raises ConfigError for an infeasible teacher, alpha <= 0 or an invalid candidate, before any compute.
    """
    for flag, v in (("--rho-pt", rho_pt), ("--rho-ft", rho_ft), ("--omega", omega), ("--alpha", alpha),
                    ("--a-pt", a_pt), ("--sigma0", sigma0)):
        if math.isfinite(v) and abs(v) > 1e100:  # squares of larger values overflow the theory's arithmetic
            raise ConfigError(f"{flag}={v:g} is too large (|value| <= 1e100)")
    check_feasible(rho_pt, rho_ft, omega)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"--alpha={alpha} must be a finite number > 0 (alpha = n / D)")
    if rho_ft <= 0:
        raise ConfigError(f"--rho-ft={rho_ft} must be > 0 (the FT teacher needs a support)")
    if not (math.isfinite(sigma0) and sigma0 >= 0):
        raise ConfigError(f"--sigma0={sigma0} must be >= 0")
    if not (math.isfinite(a_pt) and a_pt != 0):
        raise ConfigError(f"--a-pt={a_pt} must be a finite nonzero number")
    cands = default_candidates() if candidates is None else list(candidates)
    for c, lam, gamma in cands:
        if max(abs(c), abs(gamma)) > 1e100 and math.isfinite(c) and math.isfinite(gamma):
            raise ConfigError(f"candidate c={c:g}, gamma={gamma:g} is too large (<= 1e100)")
        if not (math.isfinite(c) and c > 0):
            raise ConfigError(f"candidate c={c} must be > 0")
        if not -1.0 <= lam <= 1.0:
            raise ConfigError(f"candidate lam={lam} must be in [-1, 1]")
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ConfigError(f"candidate gamma={gamma} must be >= 0")
        check_init(lam, gamma, "candidate lam", "gamma")
    from ptft.dln.replica import generalization_error  # scipy: imported when needed, so check_init is light
    from ptft.dln.theory import l_order, pt_dependence, regime_of

    beta_ft = 1.0 / math.sqrt(rho_ft)
    rows = []
    for c, lam, gamma in cands:
        res = generalization_error([alpha], rho_pt=rho_pt, rho_ft=rho_ft, omega=omega, c_pt=c, lam_pt=lam,
                                   gamma=gamma, a_pt=a_pt, sigma0=sigma0)
        lo = l_order(beta_ft, a_pt, c, lam, gamma)
        pd = pt_dependence(beta_ft, a_pt, c, lam, gamma)
        rows.append(Row(c, lam, gamma, str(regime_of(lo, pd)), float(res.error[0]), float(res.residual[0]),
                        bool(res.converged[0])))
    rows.sort(key=lambda r: (not r.converged, r.error if math.isfinite(r.error) else math.inf))
    return rows


def _format(rows: list[Row]) -> str:
    head = f"{'rank':>4}  {'c':>8}  {'lam':>9}  {'gamma':>7}  {'regime':>6}  {'pred. error':>12}  {'residual':>9}"
    lines = [head, "-" * len(head)]
    for i, r in enumerate(rows, 1):
        flag = "" if r.converged else " !"
        lines.append(f"{i:>4}  {r.c:>8.3g}  {r.lam:>9.6g}  {r.gamma:>7.3g}  {r.regime:>6}  {r.error:>12.6g}  "
                     f"{r.residual:>9.2g}{flag}")
    return "\n".join(lines)


def _write_csv(path: str, rows: list[Row]) -> None:
    """The table as CSV, written atomically (StoreError, one line, if it cannot be written)."""
    import io
    from pathlib import Path

    from ptft.train.store import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "c", "lam", "gamma", "regime", "pred_error", "residual", "converged"])
    for i, r in enumerate(rows, 1):
        w.writerow([i, r.c, r.lam, r.gamma, r.regime, r.error, r.residual, r.converged])
    atomic_write_text(Path(path), buf.getvalue())


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="ptft-theory", description="DLN fine-tuning theory (docs/paper.md sections 3-6).")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("advise", help="rank initialisations (c, lam, gamma) by predicted FT error",
                       description="Rank FT initialisations by the replica-predicted generalisation error at alpha.")
    a.add_argument("--rho-pt", type=float, required=True, help="PT teacher support fraction")
    a.add_argument("--rho-ft", type=float, required=True, help="FT teacher support fraction")
    a.add_argument("--omega", type=float, required=True, help="fraction of the FT support inside the PT support")
    a.add_argument("--alpha", type=float, required=True, help="FT sample ratio n / D (> 0)")
    a.add_argument("--a-pt", type=float, default=1.0, help="PT teacher value on its support (default 1)")
    a.add_argument("--sigma0", type=float, default=0.0, help="FT label noise std (default 0)")
    a.add_argument("--candidates", type=_candidate, nargs="+", metavar="C,LAM,GAMMA",
                   help="initialisations to rank (default: 3x3x3 grid plus the regime corners)")
    a.add_argument("--csv", metavar="PATH", help="also write the table to this CSV file")
    return p


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    from ptft.train.store import StoreError

    args = build_parser().parse_args(argv)
    if args.csv is not None and Path(args.csv).is_dir():
        print(f"ptft-theory: error: --csv {args.csv} is a directory; give a file name", file=sys.stderr)
        return 2
    try:
        rows = rank(rho_pt=args.rho_pt, rho_ft=args.rho_ft, omega=args.omega, alpha=args.alpha, a_pt=args.a_pt,
                    sigma0=args.sigma0, candidates=args.candidates)
    except ConfigError as e:
        msg = str(e)
        for key, flag in (("dln.rho_pt", "--rho-pt"), ("dln.rho_ft", "--rho-ft"), ("dln.omega", "--omega")):
            msg = msg.replace(key, flag)  # name the flags the user typed
        print(f"ptft-theory: error: {msg}", file=sys.stderr)
        return 2
    print(f"FT teacher: rho_pt={args.rho_pt:g} rho_ft={args.rho_ft:g} omega={args.omega:g} a_pt={args.a_pt:g} "
          f"sigma0={args.sigma0:g}; alpha = n/D = {args.alpha:g}")
    print(f"regime at |beta_PT| = {args.a_pt:g}, |beta_FT| = 1/sqrt(rho_ft) = {1 / math.sqrt(args.rho_ft):.3g}")
    print(_format(rows))
    best = rows[0]
    if best.converged:
        print(f"best: c={best.c:g} lam={best.lam:g} gamma={best.gamma:g} (regime {best.regime}), "
              f"predicted error {best.error:.4g}")
    else:
        print("no candidate's fixed point converged; no recommendation", file=sys.stderr)
    if args.csv:
        try:
            _write_csv(args.csv, rows)
        except StoreError as e:
            print(f"ptft-theory: error: --csv: {e}", file=sys.stderr)
            return 2
        print(f"wrote {args.csv}")
    return 0 if best.converged else 1


if __name__ == "__main__":
    sys.exit(main())
