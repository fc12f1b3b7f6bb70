"""Structured config of the `ptft-dln` pipeline (names as in docs/paper.md)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Dict, List, Optional, get_type_hints

from ptft import ConfigError
from ptft.dln.advise import check_init
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
    # Lippl & Lindsey's DLN variant (docs/paper.md section 7; preset experiment=dln/ll_rescale)
    teacher: str = "paper"      # paper: rho/omega teachers of section 4 | ll: k_pt / k_ft / overlap +-1/sqrt(k) teachers
    k_pt: int = 40              # teacher=ll: PT support size, values +-1/sqrt(k_pt)
    k_ft: int = 5               # teacher=ll: FT support size, values +-1/sqrt(k_ft)
    overlap: int = 5            # teacher=ll: FT coordinates taken from the PT support (same signs); the rest new
    inputs: str = "gaussian"    # gaussian: N(0, 1/D) entries | unit_norm: each sample rescaled to unit mean square
    n_ft: Optional[int] = None  # FT (or STL) sample count; replaces alpha * dim when set
    n_pt: Optional[int] = None  # PT sample count (pt=train); replaces alpha_pt * dim when set
    ft_reinit: str = "sum"      # sum: w+ = w- = w+_PT + w-_PT, v = gamma/sqrt(2) | scale: w = w_rescale * w_PT, v = readout_const
    w_rescale: float = 1.0      # ft_reinit=scale: factor s on both first-layer pathways
    readout_const: float = 1e-3  # ft_reinit=scale: both readout pathways v+ = v- are set to this


# dln keys added after runs were stored: left out of a run's identity while at these defaults
NEW_DLN_KEYS = {"teacher": "paper", "k_pt": 40, "k_ft": 5, "overlap": 5, "inputs": "gaussian", "n_ft": None,
                "n_pt": None, "ft_reinit": "sum", "w_rescale": 1.0, "readout_const": 1e-3}
TEACHER_KEYS = {"paper": ("rho_pt", "rho_ft", "omega", "a_pt"), "ll": ("k_pt", "k_ft", "overlap")}


def n_ft(d) -> int:
    """FT (or STL) training samples: dln.n_ft, else round(alpha * dim)."""
    return int(d.n_ft) if d.n_ft is not None else int(round(d.alpha * d.dim))


def n_pt(d) -> int:
    """PT training samples (pt=train): dln.n_pt, else max(1, round(alpha_pt * dim))."""
    return int(d.n_pt) if d.n_pt is not None else max(1, int(round(d.alpha_pt * d.dim)))


# pt_train: the training settings of pretraining (dln.pt=train), key for key those of `train` (same
# types, same validation); a key left null (the default) takes train's value, so with every key null
# PT trains exactly as FT does. (diverge_above: null takes train's; PT cannot be NaN-only while FT has a bound.)
PTTrainConfig = make_dataclass("PTTrainConfig", [(f.name, Optional[t], field(default=None))
                                                 for f in fields(TrainConfig) for t in [get_type_hints(TrainConfig)[f.name]]])


def pt_train_config(cfg):
    """The training settings pretraining uses: `train` with each non-null key of `pt_train` in its place."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(cfg.train, {k: v for k, v in cfg.pt_train.items() if v is not None})


@dataclass
class StoreConfig:
    root: str = "runs"


@dataclass
class DLNApp:
    dln: DLNConfig = field(default_factory=DLNConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=0.5, threshold=1e-4, max_steps=1_000_000,
                                                                    log_every=1000))
    pt_train: PTTrainConfig = field(default_factory=PTTrainConfig)  # dln.pt=train; null keys: as train
    seed: int = 0
    name: str = "dln"           # experiment name: the wandb group and the Hydra output folder
    force: bool = False         # rerun even if the run store has a result
    device: str = "cpu"
    store: StoreConfig = field(default_factory=StoreConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)




SEED_MAX = 2**63 - 1  # numpy's SeedSequence takes non-negative integers; torch takes 64-bit ones


def validate(cfg) -> None:
    """Every user-facing knob, checked before any compute."""
    from ptft.app import check_numbers

    check_numbers(cfg.dln, "dln")
    check_numbers(cfg.train, "train")
    d = cfg.dln
    if d.dim < 1:
        raise ConfigError(f"dln.dim={d.dim} must be >= 1")
    if d.n_ft is None and not d.alpha > 0:
        raise ConfigError(f"dln.alpha={d.alpha} must be > 0")
    for key in ("n_ft", "n_pt"):
        v = getattr(d, key)
        if v is not None and v < 1:
            raise ConfigError(f"dln.{key}={v} must be >= 1 (or null: use dln.{'alpha' if key == 'n_ft' else 'alpha_pt'})")
    n = n_ft(d)
    if n < 1:
        raise ConfigError(f"dln.alpha * dln.dim = {d.alpha * d.dim:g} gives no training sample; raise alpha or dim")
    if d.mode not in ("ptft", "stl"):
        raise ConfigError(f"dln.mode={d.mode!r} must be 'ptft' or 'stl'")
    if not d.c_pt > 0:
        raise ConfigError(f"dln.c_pt={d.c_pt} must be > 0")
    if not -1.0 <= d.lam_pt <= 1.0:
        raise ConfigError(f"dln.lam_pt={d.lam_pt} must be in [-1, 1] (it is lambda / c)")
    if not d.gamma >= 0:
        raise ConfigError(f"dln.gamma={d.gamma} must be >= 0")
    if d.mode == "ptft" and d.ft_reinit == "sum":  # gamma is the fine-tuning readout (scale, stl: not used)
        check_init(d.lam_pt, d.gamma, "dln.lam_pt", "dln.gamma")
    if not d.noise >= 0:
        raise ConfigError(f"dln.noise={d.noise} must be >= 0")
    if d.n_test < 1:
        raise ConfigError(f"dln.n_test={d.n_test} must be >= 1")
    if d.pt not in ("exact", "train"):
        raise ConfigError(f"dln.pt={d.pt!r} must be 'exact' or 'train'")
    if d.n_pt is not None and d.pt != "train":
        raise ConfigError(f"dln.n_pt={d.n_pt} is the PT sample count of dln.pt=train; with dln.pt={d.pt} PT "
                          f"is not trained on data (leave dln.n_pt null or set dln.pt=train)")
    if d.pt == "train" and d.n_pt is None and not d.alpha_pt > 0:
        raise ConfigError(f"dln.alpha_pt={d.alpha_pt} must be > 0")
    for key, v in [("seed", cfg.seed)] + [(f"dln.seeds[{i}]", x) for i, x in enumerate(d.seeds or [])]:
        if not 0 <= v <= SEED_MAX:
            raise ConfigError(f"{key}={v} must be an integer in [0, 2**63 - 1]")
    if d.seeds is not None and len(d.seeds) == 0:
        raise ConfigError("dln.seeds=[] is empty; give at least one seed or null")
    if d.seeds is not None and len(set(d.seeds)) != len(d.seeds):
        raise ConfigError(f"dln.seeds={list(d.seeds)} has repeated seeds")
    _validate_ll(d)
    if d.teacher == "paper":
        check_feasible(d.rho_pt, d.rho_ft, d.omega)
    if d.a_pt == 0 and d.mode == "ptft" and d.teacher == "paper":
        raise ConfigError("dln.a_pt=0 makes the PT teacher zero; use dln.mode=stl for no pretraining")
    validate_train(cfg.train)
    _validate_pt_train(cfg)
    if cfg.device not in ("cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise ConfigError(f"device={cfg.device!r} must be cpu, cuda or cuda:N")
    resolve_mode(cfg.wandb.mode)
    _check_size(cfg)


def _check_size(cfg) -> None:
    """The job's float64 arrays (members x (FT + PT inputs + factors), the test inputs) fit in memory
    (ptft.limits), else ConfigError naming the key that needs the most, before anything is allocated."""
    from ptft.limits import check_memory

    d = cfg.dln
    B, dim = len(d.seeds) if d.seeds else 1, int(d.dim)
    ft, pt = n_ft(d), n_pt(d) if d.mode == "ptft" and d.pt == "train" else 0
    parts = {"dln.dim": 16 * B * dim, ("dln.n_ft" if d.n_ft is not None else "dln.alpha"): B * ft * dim,
             ("dln.n_pt" if d.n_pt is not None else "dln.alpha_pt"): B * pt * dim, "dln.n_test": int(d.n_test) * dim}
    key = max(parts, key=parts.get)
    keys = "dln.dim" if key == "dln.dim" else f"dln.dim x {key}"
    other = "" if key == "dln.dim" else f" with {key}={d[key[4:]]}"
    check_memory(f"dln.dim={dim}{other} ({ft} FT samples, {pt} PT samples, {d.n_test} test "
                 f"samples, {B} seed(s); float64)", 8.0 * sum(parts.values()), f"lower {keys}")


def _validate_pt_train(cfg) -> None:
    """pt_train: its keys as train's (ConfigError naming pt_train.<key>), and only where PT is trained."""
    set_keys = [k for k, v in cfg.pt_train.items() if v is not None]
    if set_keys and cfg.dln.pt != "train":
        raise ConfigError(f"pt_train.{set_keys[0]}={cfg.pt_train[set_keys[0]]} sets how PT is trained, but "
                          f"dln.pt={cfg.dln.pt} does not train it (leave pt_train null or set dln.pt=train)")
    validate_train(pt_train_config(cfg), "pt_train")


def _validate_ll(d) -> None:
    """The keys of Lippl & Lindsey's variant: teacher sizes, inputs, FT re-initialisation."""
    if d.teacher not in TEACHER_KEYS:
        raise ConfigError(f"dln.teacher={d.teacher!r} must be one of {list(TEACHER_KEYS)}")
    if d.inputs not in ("gaussian", "unit_norm"):
        raise ConfigError(f"dln.inputs={d.inputs!r} must be 'gaussian' or 'unit_norm'")
    if d.ft_reinit not in ("sum", "scale"):
        raise ConfigError(f"dln.ft_reinit={d.ft_reinit!r} must be 'sum' (the paper: w+ = w- = their PT sum, "
                          f"readout gamma / sqrt(2)) or 'scale' (LL: w = w_rescale * w_PT, readout readout_const)")
    if not d.w_rescale > 0:
        raise ConfigError(f"dln.w_rescale={d.w_rescale} must be > 0 (the factor s on the pretrained first layer)")
    if not d.readout_const >= 0:
        raise ConfigError(f"dln.readout_const={d.readout_const} must be >= 0")
    if d.teacher == "ll":
        if not 1 <= d.k_pt <= d.dim:
            raise ConfigError(f"dln.k_pt={d.k_pt} must be in [1, dln.dim={d.dim}]")
        if not 1 <= d.k_ft <= d.dim:
            raise ConfigError(f"dln.k_ft={d.k_ft} must be in [1, dln.dim={d.dim}]")
        if not 0 <= d.overlap <= min(d.k_ft, d.k_pt):
            raise ConfigError(f"dln.overlap={d.overlap} must be in [0, min(dln.k_ft={d.k_ft}, dln.k_pt={d.k_pt})] "
                              f"(FT coordinates shared with the PT support)")
        if d.k_pt + d.k_ft - d.overlap > d.dim:
            raise ConfigError(f"dln.k_pt + dln.k_ft - dln.overlap = {d.k_pt + d.k_ft - d.overlap} coordinates do not "
                              f"fit in dln.dim={d.dim}; lower k_ft or raise overlap or dim")
