"""`ptft-dln`: simulate DLN fine-tuning (or STL) by gradient descent, docs/paper.md sections 1, 2, 4, 7.

    ptft-dln                                   # defaults: one seed, CPU, wandb offline
    ptft-dln -m dln.lam_pt=-0.99,0,0.99 dln.omega=0,1
    ptft-dln 'dln.seeds=[0,1,2,3,4]'           # five seeds as one batched job
    ptft-dln 'dln.configs=[{c_pt:1e-6},{c_pt:1e-3,omega:0.0}]' 'dln.seeds=[0,1]'
                                               # two configurations x two seeds in one job (one run
                                               # directory per configuration; ptft.dln.multi)

The run directory (printed as the last line; one line per configuration) is <store.root>/dln/<hash of the scientific config>.
A finished run is not trained again (force=true reruns it); a killed run resumes from its checkpoint.
A single-configuration job is ptft.dln.main.run_job; a multi-configuration one ptft.dln.multi.run_multi.
"""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from ptft import app
from ptft.dln.main import run_job
from ptft.dln.multi import run_multi
from ptft.train.store import RunDir


def run_jobs(cfg: DictConfig) -> list[tuple[RunDir, dict[str, Any]]]:
    """A single-configuration job, or with `dln.configs` one run per configuration (ptft.dln.multi)."""
    if cfg.dln.get("configs") is not None:
        return run_multi(cfg)
    return [run_job(cfg)]


@app.entry("dln")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(int(torch.get_num_threads()))
    for run, result in run_jobs(cfg):
        keys = ("status", "steps", "train_mse", "test_mse", "param_mse") if "members" not in result else (
            "status", "test_mse_mean", "param_mse_mean")
        print("[ptft] " + "  ".join(f"{k}={result[k]:.4g}" if isinstance(result[k], float) else f"{k}={result[k]}"
                                   for k in keys if k in result), flush=True)
        print(run.path, flush=True)


if __name__ == "__main__":
    main()
