"""Structured config of the `ptft-dln` pipeline (names as in PAPER.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ptft import ConfigError
from ptft.dln.teachers import check_feasible
from ptft.log.logger import WandbConfig, resolve_mode
from ptft.train.trainer import TrainConfig, validate_train


@dataclass
class DLNConfig:
    dim: int = 500              # D
    alpha: float = 0.3          # n / D for fine-tuning (or STL)
    mode: str = "ptft"          # ptft | stl
    c_pt: float = 1e-3          # absolute scale c of the initialisation
    lam_pt: float = 0.0         # relative scale lambda / c in [-1, 1]
    gamma: float = 0.0          # readout scale at FT re-initialisation
    rho_pt: float = 0.1
    rho_ft: float = 0.1
    omega: float = 1.0
    a_pt: float = 1.0
    noise: float = 0.0          # label-noise std sigma0 of the FT (and trained-PT) targets
    n_test: int = 10000
    pt: str = "exact"           # exact: PT end state in closed form | train: gradient descent on PT data
    alpha_pt: float = 2.0       # n_PT / D when pt=train
    seeds: Optional[List[int]] = None  # several seeds as one batched job (overrides `seed`)
    lr_cap: bool = False        # cap each member's step at its stability limit (see DLNTask.stable_lr)
    # several configurations as one job: each entry overrides dln.* keys (not seeds/configs), e.g.
    # [{c_pt: 1e-6}, {c_pt: 1e-3, omega: 0.0}]; each gets the run directory of its single job
    configs: Optional[List[Dict[str, Any]]] = None


@dataclass
class StoreConfig:
    root: str = "runs"


@dataclass
class DLNApp:
    dln: DLNConfig = field(default_factory=DLNConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=0.5, threshold=1e-4, max_steps=1_000_000,
                                                                    log_every=1000))
    seed: int = 0
    name: str = "dln"           # experiment name: the wandb group and the Hydra output folder
    force: bool = False         # rerun even if the run store has a result
    device: str = "cpu"
    store: StoreConfig = field(default_factory=StoreConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


NON_SCIENTIFIC_TRAIN = ("log_every", "eval_every", "ckpt_every_s")


SEED_MAX = 2**63 - 1  # numpy's SeedSequence takes non-negative integers; torch takes 64-bit ones


def validate(cfg) -> None:
    """Every user-facing knob, checked before any compute."""
    from ptft.app import check_numbers

    check_numbers(cfg.dln, "dln")
    check_numbers(cfg.train, "train")
    d = cfg.dln
    if d.dim < 1:
        raise ConfigError(f"dln.dim={d.dim} must be >= 1")
    if not d.alpha > 0:
        raise ConfigError(f"dln.alpha={d.alpha} must be > 0")
    n = d.alpha * d.dim
    if n * d.dim > 2**37:  # the FT inputs alone would need more than 1 TiB (float64)
        raise ConfigError(f"dln.alpha * dln.dim = {n:g} samples of dimension dln.dim={d.dim} do not fit in memory; "
                          f"lower dln.alpha or dln.dim")
    if int(round(n)) < 1:
        raise ConfigError(f"dln.alpha * dln.dim = {d.alpha * d.dim:g} gives no training sample; raise alpha or dim")
    if d.mode not in ("ptft", "stl"):
        raise ConfigError(f"dln.mode={d.mode!r} must be 'ptft' or 'stl'")
    if not d.c_pt > 0:
        raise ConfigError(f"dln.c_pt={d.c_pt} must be > 0")
    if not -1.0 <= d.lam_pt <= 1.0:
        raise ConfigError(f"dln.lam_pt={d.lam_pt} must be in [-1, 1] (it is lambda / c)")
    if not d.gamma >= 0:
        raise ConfigError(f"dln.gamma={d.gamma} must be >= 0")
    if not d.noise >= 0:
        raise ConfigError(f"dln.noise={d.noise} must be >= 0")
    if d.n_test < 1:
        raise ConfigError(f"dln.n_test={d.n_test} must be >= 1")
    if d.pt not in ("exact", "train"):
        raise ConfigError(f"dln.pt={d.pt!r} must be 'exact' or 'train'")
    if d.pt == "train" and not d.alpha_pt > 0:
        raise ConfigError(f"dln.alpha_pt={d.alpha_pt} must be > 0")
    for key, v in [("seed", cfg.seed)] + [(f"dln.seeds[{i}]", x) for i, x in enumerate(d.seeds or [])]:
        if not 0 <= v <= SEED_MAX:
            raise ConfigError(f"{key}={v} must be an integer in [0, 2**63 - 1]")
    if d.seeds is not None and len(d.seeds) == 0:
        raise ConfigError("dln.seeds=[] is empty; give at least one seed or null")
    if d.seeds is not None and len(set(d.seeds)) != len(d.seeds):
        raise ConfigError(f"dln.seeds={list(d.seeds)} has repeated seeds")
    check_feasible(d.rho_pt, d.rho_ft, d.omega)
    if d.a_pt == 0 and d.mode == "ptft":
        raise ConfigError("dln.a_pt=0 makes the PT teacher zero; use dln.mode=stl for no pretraining")
    validate_train(cfg.train)
    if cfg.device not in ("cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise ConfigError(f"device={cfg.device!r} must be cpu, cuda or cuda:N")
    resolve_mode(cfg.wandb.mode)
