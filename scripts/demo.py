"""`make demo`: the main job on embedded defaults, end to end, in a few minutes on a laptop CPU.

1. A real Hydra multirun of `ptft-dln` (local launcher, wandb offline, run store under runs/):
   fine-tuning a DLN after exact pretraining, for three relative scales lam in {-0.99, 0, 0.99}
   (docs/paper.md regimes IV, II and near-lazy) at five sample ratios, 3 seeds batched per job.
2. `ptft-aggregate` over the sweep -> results/demo_dln.csv.
3. The replica theory (docs/paper.md section 5) for the same settings, and results/demo_dln.png:
   simulated mean +- 95% CI against theory. Rerunning skips every finished simulation.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LAMS = [-0.99, 0.0, 0.99]
ALPHAS = [0.05, 0.1, 0.15, 0.2, 0.3]
FIXED = dict(dim=400, c_pt=1e-3, gamma=0.0, rho_pt=0.1, rho_ft=0.1, omega=0.5)


def main() -> None:
    t0 = time.time()
    sweep = REPO / "multirun" / "demo"
    cmd = [str(BIN / "ptft-dln"), "-m", "name=demo", f"dln.lam_pt={','.join(map(str, LAMS))}",
           f"dln.alpha={','.join(map(str, ALPHAS))}", "dln.seeds=[0,1,2]",
           *(f"dln.{k}={v}" for k, v in FIXED.items())]
    print("$", " ".join(cmd[0:1] + [f"'{c}'" if "[" in c else c for c in cmd[1:]]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    latest = max(sweep.iterdir(), key=lambda p: p.stat().st_mtime)

    from ptft.analysis.aggregate import collect, to_csv
    from ptft.analysis.dln_sims import ci95
    from ptft.dln.replica import generalization_error

    rows = [r for r in collect([latest]) if r["stage"] == "dln"]
    out_dir = REPO / "results"
    out_dir.mkdir(exist_ok=True)
    to_csv(rows, out_dir / "demo_dln.csv")
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        print(f"warning: {len(bad)} runs did not converge: {[r['run_dir'] for r in bad]}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    grid = np.linspace(0.02, 0.35, 60)
    print(f"\n{'lam':>6} {'alpha':>6} {'sim mean':>10} {'95% CI':>9} {'theory':>10}")
    for i, (lam, color) in enumerate(zip(LAMS, ["C3", "C0", "C2"])):
        th = generalization_error(grid, rho_pt=FIXED["rho_pt"], rho_ft=FIXED["rho_ft"], omega=FIXED["omega"],
                                  c_pt=FIXED["c_pt"], lam_pt=lam, gamma=FIXED["gamma"])
        ok = th.converged
        ax.plot(grid[ok], th.error[ok], color=color, label=f"theory, lam={lam}")
        if (~ok).any():
            ax.plot(grid[~ok], th.error[~ok], "x", color="red", label=f"unconverged theory ({(~ok).sum()})")
        at = generalization_error(np.array(ALPHAS), rho_pt=FIXED["rho_pt"], rho_ft=FIXED["rho_ft"],
                                  omega=FIXED["omega"], c_pt=FIXED["c_pt"], lam_pt=lam, gamma=FIXED["gamma"])
        means, cis = [], []
        for a, e_th in zip(ALPHAS, at.error):
            err = np.array([r["test_mse"] for r in rows if r["dln.lam_pt"] == lam and r["dln.alpha"] == a])
            means.append(err.mean())
            cis.append(ci95(err))
            print(f"{lam:6.2f} {a:6.2f} {err.mean():10.4g} {cis[-1]:9.2g} {e_th:10.4g}")
        shift = (i - 1) * 0.004  # side by side, so the error bars stay readable
        ax.errorbar(np.array(ALPHAS) + shift, means, yerr=cis, fmt="o", color=color, capsize=3,
                    label=f"GD mean, 95% CI, lam={lam}")
    ax.set_yscale("log")
    ax.set_xlabel("alpha = n / D")
    ax.set_ylabel("generalisation error")
    ax.set_title(f"DLN fine-tuning, omega={FIXED['omega']}, rho_FT={FIXED['rho_ft']}: GD (D={FIXED['dim']}, 3 seeds) vs theory",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir / "demo_dln.png", dpi=130)
    print(f"\nwrote {out_dir / 'demo_dln.png'} and {out_dir / 'demo_dln.csv'} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
