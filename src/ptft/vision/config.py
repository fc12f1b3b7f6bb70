"""Structured configs of the deep-network pipelines `ptft-pretrain` and `ptft-finetune` (PAPER.md section 8).

Both schemas reuse the building blocks' dataclasses (DataConfig, InitConfig, FTConfig) and the
trainer's TrainConfig with Lippl & Lindsey's defaults (SGD lr 1e-3, momentum 0.9, batch 128, stop
when an epoch's mean train loss < 0.01, at most 1000 epochs).

Run identity (the hash naming a run directory) is built here from the scientific keys only:
- data.root is replaced by a fingerprint of the data (the sha256s of a `ptft-data synthetic` set,
  or "torchvision" for real data), so moving the dataset keeps the identity while a synthetic stand-in
  never collides with real CIFAR-100;
- device, compile, amp, eval_batch, logging and store keys are not scientific (recorded in result.json).

Default `init.targets` is every parameter (weight, bias, bn): with BatchNorm after every conv, scaling
conv weights alone leaves the network's function unchanged (BN divides the factor out) and only changes
the effective learning rate; scaling the BN affine parameters and the head as well changes the function,
as the paper's "multiply the initialisation of a layer" intends. `init.targets=[weight]` is the
function-preserving variant.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from ptft import ConfigError
from ptft.log.logger import WandbConfig, resolve_mode
from ptft.train.trainer import TrainConfig, validate_train
from ptft.vision.data import DataConfig, validate_data_config
from ptft.vision.models import MODEL_NAMES
from ptft.vision.scaling import (FTConfig, InitConfig, resolve_factors, resolve_layer_factors, validate_ft_config,
                                validate_init_config)

NON_SCIENTIFIC_TRAIN = ("log_every", "eval_every", "ckpt_every_s")
DEVICES = ("auto", "cpu", "cuda")
MODES = ("finetune", "stl")


@dataclass
class ModelConfig:
    name: str = "resnet18"  # resnet18 (torchvision, ImageNet stem, as LL) | resnet18_cifar
    width: int = 64         # channels of the stem and layer1 (torchvision: 64)


@dataclass
class VisionTrainConfig(TrainConfig):
    """The trainer's TrainConfig with LL's defaults, plus on-device augmentation (off, as LL)."""

    lr: float = 1e-3
    momentum: float = 0.9
    threshold: float = 0.01
    max_epochs: Optional[int] = 1000
    batch_size: Optional[int] = 128
    log_every: int = 50
    ckpt_every_s: float = 120.0
    augment: bool = False   # random crop (pad 4) + horizontal flip, drawn on the device per (seed, epoch)


def _ft_train() -> VisionTrainConfig:
    return VisionTrainConfig(batch_size=None, log_every=10)  # batch None: min(n_ft, 128) as LL


@dataclass
class StoreConfig:
    root: str = "runs"


@dataclass
class Runtime:
    """How (not what) to compute: never part of a run's identity."""

    device: str = "auto"     # auto (cuda if available) | cpu | cuda | cuda:N
    compile: bool = False    # torch.compile the model (first compile: 20-45 s)
    amp: bool = True         # bf16 autocast on CUDA (no effect on CPU)
    eval_batch: int = 1024   # images per evaluation batch


@dataclass
class PretrainApp:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=lambda: InitConfig(targets=["weight", "bias", "bn"]))
    train: VisionTrainConfig = field(default_factory=VisionTrainConfig)
    seed: int = 0            # model init and batch order
    runtime: Runtime = field(default_factory=Runtime)
    name: str = "pretrain"   # experiment name: wandb group and Hydra output folder
    force: bool = False      # retrain even if the store has a result
    store: StoreConfig = field(default_factory=StoreConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class PretrainStage:
    """The pretraining a fine-tuning starts from (found in the store by its hash, trained if absent)."""

    seed: int = 0
    train: VisionTrainConfig = field(default_factory=VisionTrainConfig)


@dataclass
class FTStage(FTConfig):
    mode: str = "finetune"   # finetune (from the pretrained model) | stl (fresh init-scaled model, no PT)


@dataclass
class RunsConfig:
    """Several fine-tunings in one process (cartesian product), each with its own run dir and wandb run."""

    n_ft: Optional[List[int]] = None   # overrides data.n_ft per run; null: just data.n_ft
    seeds: Optional[List[int]] = None  # overrides seed per run; null: just seed


@dataclass
class FinetuneApp:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=lambda: InitConfig(targets=["weight", "bias", "bn"]))
    pretrain: PretrainStage = field(default_factory=PretrainStage)
    ft: FTStage = field(default_factory=FTStage)
    train: VisionTrainConfig = field(default_factory=_ft_train)
    seed: int = 0            # FT seed: new head's init, batch order (STL: also the model's init)
    runs: RunsConfig = field(default_factory=RunsConfig)
    runtime: Runtime = field(default_factory=Runtime)
    name: str = "finetune"
    force: bool = False      # rerun this job's fine-tunings (never the pretraining; use ptft-pretrain force=true)
    store: StoreConfig = field(default_factory=StoreConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_train_cfg(t: Any, key: str) -> None:
    try:
        validate_train(VisionTrainConfig(**_plain(t)))
    except ConfigError as e:
        raise ConfigError(str(e).replace("train.", f"{key}.")) from None
    if t.max_epochs is None:
        raise ConfigError(f"{key}.max_epochs=null: a vision run is budgeted in epochs; set it (LL: 1000)")


def validate_runtime(r: Any) -> None:
    dev = str(r.device)
    if dev not in DEVICES and not (dev.startswith("cuda:") and dev[5:].isdigit()):
        raise ConfigError(f"runtime.device={dev!r} must be auto, cpu, cuda or cuda:N")
    if not _is_int(r.eval_batch) or r.eval_batch < 1:
        raise ConfigError(f"runtime.eval_batch={r.eval_batch!r} must be an integer >= 1")


@functools.lru_cache(maxsize=4)
def _probe(name: str) -> Any:
    """A width-1 model with the real module names, to check layer patterns before any compute."""
    from ptft.vision.models import build_model

    return build_model(name, 2, width=1)


def validate_common(cfg: Any) -> None:
    validate_data_config(cfg.data)
    if cfg.model.name not in MODEL_NAMES:
        raise ConfigError(f"model.name={cfg.model.name!r} must be one of {list(MODEL_NAMES)}")
    if not _is_int(cfg.model.width) or cfg.model.width < 1:
        raise ConfigError(f"model.width={cfg.model.width!r} must be an integer >= 1 (torchvision: 64)")
    validate_init_config(cfg.init)
    resolve_layer_factors(_probe(cfg.model.name), cfg.init)  # patterns that match no parameter
    validate_runtime(cfg.runtime)
    resolve_mode(cfg.wandb.mode)


def validate_pretrain(cfg: Any) -> None:
    validate_common(cfg)
    validate_train_cfg(cfg.train, "train")
    if cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed} must be >= 0")


def _check_list(key: str, vals: Optional[List[int]], minimum: int) -> None:
    if vals is None:
        return
    vals = list(vals)
    if not vals:
        raise ConfigError(f"{key}=[] is empty; give at least one value or null")
    if any(not _is_int(v) or v < minimum for v in vals):
        raise ConfigError(f"{key}={vals} must hold integers >= {minimum}")
    if len(set(vals)) != len(vals):
        raise ConfigError(f"{key}={vals} has repeated values")


def validate_finetune(cfg: Any) -> None:
    validate_common(cfg)
    validate_train_cfg(cfg.train, "train")
    validate_train_cfg(cfg.pretrain.train, "pretrain.train")
    validate_ft_config(cfg.ft)
    resolve_factors(_probe(cfg.model.name), dict(cfg.ft.layer_rescale), list(cfg.ft.rescale_targets),
                    "ft.layer_rescale")
    if cfg.ft.mode not in MODES:
        raise ConfigError(f"ft.mode={cfg.ft.mode!r} must be one of {list(MODES)}")
    if cfg.ft.mode == "stl" and (cfg.ft.rescale != 1.0 or dict(cfg.ft.layer_rescale)):
        raise ConfigError(f"ft.mode=stl has no pretrained model to rescale (ft.rescale={cfg.ft.rescale}, "
                          f"ft.layer_rescale={dict(cfg.ft.layer_rescale)}); leave them at 1 / {{}}, or use "
                          f"init.scale / init.layer_scales to scale a fresh model")
    for key, v in (("seed", cfg.seed), ("pretrain.seed", cfg.pretrain.seed)):
        if v < 0:
            raise ConfigError(f"{key}={v} must be >= 0")
    _check_list("runs.n_ft", cfg.runs.n_ft, 1)
    _check_list("runs.seeds", cfg.runs.seeds, 0)
    if cfg.data.ft_balanced and cfg.runs.n_ft is not None:
        k = len(cfg.data.ft_class_list) if cfg.data.ft_class_list is not None else cfg.data.ft_classes
        small = [n for n in cfg.runs.n_ft if n < k]
        if small:
            raise ConfigError(f"runs.n_ft={list(cfg.runs.n_ft)} has values {small} below the {k} FT classes "
                              f"with data.ft_balanced=true; raise them or set data.ft_balanced=false")


# ------------------------------------------------------------------------------------------------
# identity
# ------------------------------------------------------------------------------------------------
def _plain(node: Any) -> dict:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    from dataclasses import asdict, is_dataclass

    return asdict(node) if is_dataclass(node) else dict(node)


def data_root(data: Any) -> Path:
    """data.root as an absolute path (a relative root is relative to the launch directory)."""
    from ptft.app import launch_cwd

    root = Path(os.path.expanduser(str(data.root)))
    return root if root.is_absolute() else launch_cwd() / root


def data_config(data: Any) -> DataConfig:
    """A plain DataConfig with the root made absolute."""
    d = _plain(data)
    d["root"] = str(data_root(data))
    return DataConfig(**d)


def data_fingerprint(data: Any) -> str:
    """What identifies the images: the recorded sha256s of a synthetic set, else 'torchvision'."""
    from ptft.vision.synthetic import read_marker

    fmt = read_marker(data_root(data)).get("formats", {}).get(str(data.name))
    if not fmt:
        return "torchvision"
    return "synthetic:" + hashlib.sha256(json.dumps(fmt["files"], sort_keys=True).encode()).hexdigest()[:16]


def train_identity(t: Any) -> dict:
    return {k: v for k, v in _plain(t).items() if k not in NON_SCIENTIFIC_TRAIN}


def pretrain_identity(data: Any, model: Any, init: Any, train: Any, seed: int) -> dict:
    """Scientific keys of a pretraining: the FT-only data keys and the data location are left out."""
    d = _plain(data)
    for k in ("root", "download", "n_ft", "ft_balanced"):
        d.pop(k)
    if d["n_pt"] is None:
        d.pop("sample_seed")  # draws only FT images then
    d["fingerprint"] = data_fingerprint(data)
    return {"data": d, "model": _plain(model), "init": _plain(init), "train": train_identity(train),
            "seed": int(seed)}


def finetune_identity(cfg: Any, pt_hash: Optional[str]) -> dict:
    """Scientific keys of ONE fine-tuning (cfg.runs already expanded into data.n_ft and seed)."""
    d = _plain(cfg.data)
    for k in ("root", "download"):
        d.pop(k)
    d["fingerprint"] = data_fingerprint(cfg.data)
    sci = {"mode": cfg.ft.mode, "data": d, "model": _plain(cfg.model), "init": _plain(cfg.init),
           "ft": _plain(cfg.ft), "train": train_identity(cfg.train), "seed": int(cfg.seed)}
    if cfg.ft.mode == "finetune":
        sci["pretrain"] = pt_hash
    return sci
