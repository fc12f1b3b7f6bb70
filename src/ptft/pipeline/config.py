"""The structured config of `ptft-pretrain` / `ptft-finetune`, the one PT->FT pipeline of every deep track.

Hydra config groups pick the parts, each with its own typed schema:
- ``data=cifar100|svhn`` (images, ptft.vision.data.DataConfig) or ``data=modarith`` (ptft.arith.data);
- ``model=resnet18|resnet18_cifar`` (ResNet-18 variants) or ``model=transformer`` (ptft.arith.model);
  the data and model schemas come from the tracks (ptft.pipeline.track: entry points ``ptft.tracks``);
- ``experiment=...`` presets (conf/experiment/). A group's keys exist only in that group: ``data.p`` is an
  error with ``data=cifar100``. A group option may also set the track's training recipe (conf/data/*.yaml).

Both commands share this schema: ``ptft-pretrain`` trains the pretraining stage (``pretrain.seed``,
``pretrain.train``) that ``ptft-finetune`` with the same config starts from; ``train`` / ``seed`` / ``ft`` /
``runs`` are the fine-tuning's.

Run identity (the hash naming a run directory) is built here from the scientific keys only: the data
location is replaced by a fingerprint (a track's ``data_identity``), and the runtime keys (device, compile,
amp, channels_last, eval_batch, diagnostics), logging and store keys are not scientific (the effective device,
amp, channels_last and compile are recorded in result.json).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, List, Optional

import torch
from omegaconf import MISSING

from ptft import ConfigError, app
from ptft.log.logger import WandbConfig, resolve_mode
from ptft.pipeline.knobs import (FTConfig, InitConfig, resolve_factors, resolve_layer_factors, validate_ft_config,
                                 validate_init_config)
from ptft.pipeline.track import register_schemas, track_of
from ptft.train.trainer import OptimTrainConfig, validate_train
from ptft.train.trainer import train_identity as trainer_identity

DEVICES = ("auto", "cpu", "cuda")
MODES = ("finetune", "stl")


@dataclass
class PTFTTrainConfig(OptimTrainConfig):
    """The trainer's config with Lippl & Lindsey's defaults (SGD lr 1e-3, momentum 0.9, batch 128, stop when
    an epoch's mean train loss < 0.01, at most 1000 epochs), plus on-device augmentation (images; off, as LL).
    data=modarith replaces them with its AdamW recipe (conf/data/modarith.yaml)."""

    lr: float = 1e-3
    momentum: float = 0.9
    threshold: float = 0.01
    max_epochs: Optional[int] = 1000
    batch_size: Optional[int] = 128
    log_every: int = 50
    ckpt_every_s: float = 120.0
    augment: bool = False   # random crop (pad 4) + horizontal flip, drawn on the device per (seed, epoch)


def _ft_train() -> PTFTTrainConfig:
    return PTFTTrainConfig(batch_size=None, log_every=10)  # batch None: min(n_ft, 128) as LL


@dataclass
class StoreConfig:
    root: str = "runs"


@dataclass
class Runtime:
    """How (not what) to compute: never part of a run's identity."""

    device: str = "auto"     # auto (cuda if available) | cpu | cuda | cuda:N
    compile: bool = False    # torch.compile the model, CPU or CUDA (a cold first compile on CPU: minutes)
    amp: Any = None          # bf16 autocast: null/auto = on for CUDA, off for CPU; true/false on any device
    channels_last: Any = None  # channels_last memory format (images): null/auto = on for CUDA, off for CPU
    eval_batch: int = 1024   # examples per evaluation batch
    diagnostics: bool = True  # per-stage movement / CKA / participation ratio of every fine-tuning (result.json)


@dataclass
class PretrainStage:
    """The pretraining a fine-tuning starts from (found in the store by its hash, trained if absent)."""

    seed: int = 0
    train: PTFTTrainConfig = field(default_factory=PTFTTrainConfig)


@dataclass
class FTStage(FTConfig):
    mode: str = "finetune"   # finetune (from the pretrained model) | stl (fresh init-scaled model, no PT)
    bn_recalibrate: bool = False  # recompute BatchNorm running statistics on the FT training inputs after the
    #                              rescalings, before training (no parameter changes; models with BatchNorm only)


@dataclass
class RunsConfig:
    """Several fine-tunings in one process (cartesian product), each with its own run dir and wandb run."""

    n_ft: Optional[List[int]] = None   # overrides data.n_ft per run; null: just data.n_ft
    seeds: Optional[List[int]] = None  # overrides seed per run; null: just seed


@dataclass
class PTFTApp:
    data: Any = MISSING      # a data group: data=cifar100 | svhn | modarith
    model: Any = MISSING     # a model group: model=resnet18 | resnet18_cifar | transformer
    init: InitConfig = field(default_factory=lambda: InitConfig(targets=["weight", "bias", "bn"]))
    pretrain: PretrainStage = field(default_factory=PretrainStage)
    ft: FTStage = field(default_factory=FTStage)
    train: PTFTTrainConfig = field(default_factory=_ft_train)
    seed: int = 0            # FT seed: new head's init, batch order (STL: also the model's init)
    runs: RunsConfig = field(default_factory=RunsConfig)
    runtime: Runtime = field(default_factory=Runtime)
    name: str = "ptft"       # experiment name: wandb group and Hydra output folder
    force: bool = False      # rerun this job's runs (ptft-finetune never reruns the pretraining)
    store: StoreConfig = field(default_factory=StoreConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


app.register("ptft_schema", PTFTApp)
for _name in ("pretrain", "finetune"):  # the tracks' data and model schemas, registered before composing
    app.register_loader(_name, register_schemas)


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def plain(node: Any) -> dict:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return asdict(node) if is_dataclass(node) else dict(node)


def train_config(t: Any, batch_size: Optional[int] = None) -> PTFTTrainConfig:
    d = plain(t)
    if batch_size is not None:
        d["batch_size"] = batch_size
    return PTFTTrainConfig(**d)


def validate_train_cfg(t: Any, key: str) -> None:
    validate_train(train_config(t), key)


def validate_runtime(r: Any) -> None:
    dev = str(r.device)
    if dev not in DEVICES and not (dev.startswith("cuda:") and dev[5:].isdigit()):
        raise ConfigError(f"runtime.device={dev!r} must be auto, cpu, cuda or cuda:N")
    for key in ("amp", "channels_last"):
        v = getattr(r, key)
        if v is not None and not isinstance(v, bool) and v != "auto":
            raise ConfigError(f"runtime.{key}={v!r} must be true, false, auto or null (auto: on for CUDA, off for CPU)")
    if not isinstance(r.compile, bool):
        raise ConfigError(f"runtime.compile={r.compile!r} must be true or false")
    if not _is_int(r.eval_batch) or r.eval_batch < 1:
        raise ConfigError(f"runtime.eval_batch={r.eval_batch!r} must be an integer >= 1")


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


def validate(cfg: Any, stage: str = "finetune") -> Any:
    """Every check that needs no compute; returns the config's track. stage: pretrain | finetune."""
    track = track_of(cfg)
    probe = track.probe(cfg.model)
    validate_init_config(cfg.init, probe.STAGES)
    resolve_layer_factors(probe, cfg.init)  # patterns that match no parameter
    validate_runtime(cfg.runtime)
    resolve_mode(cfg.wandb.mode)
    validate_train_cfg(cfg.pretrain.train, "pretrain.train")
    for key, v in (("seed", cfg.seed), ("pretrain.seed", cfg.pretrain.seed)):
        if not _is_int(v) or v < 0:
            raise ConfigError(f"{key}={v} must be an integer >= 0")
    # the config is shared by ptft-pretrain and ptft-finetune: a bad fine-tuning key is refused by both
    validate_train_cfg(cfg.train, "train")
    for key, t in (("pretrain.train", cfg.pretrain.train), ("train", cfg.train)):
        if t.target_metric is not None and track.metrics and t.target_metric not in track.metrics:
            raise ConfigError(f"{key}.target_metric={t.target_metric!r} is not a metric of the {track.name} "
                              f"track's evaluation; choose one of {list(track.metrics)}")
    validate_ft_config(cfg.ft)
    resolve_factors(probe, dict(cfg.ft.layer_rescale), list(cfg.ft.rescale_targets), "ft.layer_rescale")
    if cfg.ft.mode not in MODES:
        raise ConfigError(f"ft.mode={cfg.ft.mode!r} must be one of {list(MODES)}")
    if cfg.ft.mode == "stl" and (cfg.ft.rescale != 1.0 or dict(cfg.ft.layer_rescale)):
        raise ConfigError(f"ft.mode=stl has no pretrained model to rescale (ft.rescale={cfg.ft.rescale}, "
                          f"ft.layer_rescale={dict(cfg.ft.layer_rescale)}); leave them at 1 / {{}}, or use "
                          f"init.scale / init.layer_scales to scale a fresh model")
    if cfg.ft.bn_recalibrate and not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                         for m in probe.modules()):
        raise ConfigError(f"ft.bn_recalibrate=true: model={cfg.model.name} has no BatchNorm layer")
    _check_list("runs.n_ft", cfg.runs.n_ft, 1)
    _check_list("runs.seeds", cfg.runs.seeds, 0)
    track.validate(cfg, stage)
    return track


# ------------------------------------------------------------------------------------------------
# identity
# ------------------------------------------------------------------------------------------------
def train_identity(t: Any) -> dict:
    return trainer_identity(plain(t))


def pretrain_identity(track: Any, cfg: Any) -> dict:
    """Scientific keys of the pretraining of `cfg` (FT-only data keys and the data location left out)."""
    return {"data": track.data_identity(cfg.data, "pretrain"), "model": plain(cfg.model), "init": plain(cfg.init),
            "train": train_identity(cfg.pretrain.train), "seed": int(cfg.pretrain.seed)}


def finetune_identity(track: Any, cfg: Any, pt_run_hash: Optional[str]) -> dict:
    """Scientific keys of ONE fine-tuning (cfg.runs already expanded into data.n_ft and seed)."""
    ft = plain(cfg.ft)
    if not ft.get("bn_recalibrate"):
        ft.pop("bn_recalibrate", None)  # keeps the identity of runs made before the knob existed
    sci = {"mode": cfg.ft.mode, "data": track.data_identity(cfg.data, "finetune"), "model": plain(cfg.model),
           "init": plain(cfg.init), "ft": ft, "train": train_identity(cfg.train), "seed": int(cfg.seed)}
    if cfg.ft.mode == "finetune":
        sci["pretrain"] = pt_run_hash
    return sci
