"""The paper's initialisation knobs and the post-pretraining rescalings, for any model with named stages.

A model plugs in by declaring its stages (class attributes):

- ``STAGES``: stage names in forward order (ResNet: stem, layer1..layer4, fc; Transformer: embed, pos,
  attn, mlp, unembed);
- ``STAGE_MODULES``: {stage: module-name patterns} where a stage is not one top-level module
  (ResNet: ``stem`` = ``conv1`` + ``bn1``); other stages are the module of the same name;
- ``HEAD``: the readout module's name (``fc`` / ``unembed``) and ``DEFAULT_SPLIT``: the first stage that
  does NOT get kappa by default (ResNet: layer3; Transformer: mlp, so embed, pos and attn get kappa);
- ``reset_head(n)``: replace the readout by a freshly (default-)initialised one with n outputs.

Before pretraining (:class:`InitConfig`, applied to the default init by :func:`apply_init_scaling`),
every targeted parameter is multiplied by the PRODUCT of

- ``scale`` (the absolute scale c; all layers),
- the relative-scale preset with ``kappa``:
  ``profile=split``: every stage before ``split`` gets ``kappa`` (null: the model's DEFAULT_SPLIT);
  ``profile=geometric``: stage j of the S stages gets ``kappa ** (1 - j / (S - 1))``, i.e. the first
  stage kappa, the head 1, geometric in between,
- every ``layer_scales`` entry whose glob pattern matches the parameter (see "Matching").

After pretraining (:class:`FTConfig`, :func:`prepare_finetune_model`), in this order:
``rescale`` s (LL: every parameter times s; parameters only, BatchNorm running statistics are
buffers and are left alone), ``layer_rescale`` (pattern -> factor, multiplied in), then the head:
``head=new`` replaces the head by a fresh one for the FT classes whose default init is multiplied by
``readout_scale`` gamma; ``head=reuse`` keeps the pretrained head (LL's 100-way head; fine-tune on
original labels, ``Split.y_orig``).

Targets (which parameters a factor touches; ``InitConfig.targets`` / ``FTConfig.rescale_targets``):
``bn`` = the affine weight and bias of normalisation layers (BatchNorm, LayerNorm, GroupNorm);
of every other parameter, ``weight`` = those with >= 2 dimensions or named ``weight`` (conv, linear,
embedding and position matrices), ``bias`` = the other 1-dimensional ones (biases). Note: a conv weight
followed by BatchNorm does not change the network's function when scaled (BN divides the scale out); it
changes the training dynamics (the effective learning rate of that weight goes as 1/factor^2).
Scaling ``bn`` (and the head) changes the function itself.

Matching: a pattern (``fnmatch`` glob, ``*`` also crosses dots) matches a parameter when it matches
the parameter's full name (``layer1.0.conv1.weight``), its module's name (``layer1.0.conv1``) or
any ancestor module's name (``layer1.0``, ``layer1``). So ``layer1`` is all of layer1, ``conv1``
only the stem conv, ``layer*.*.conv1`` the first conv of every block, ``*`` everything. A
user pattern that matches no targeted parameter is an error naming the pattern.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ptft import ConfigError

TARGETS = ("weight", "bias", "bn")
PROFILES = ("split", "geometric")
HEADS = ("new", "reuse")


@dataclass
class InitConfig:
    """Initialisation scaling applied before pretraining (Hydra structured config)."""

    scale: float = 1.0  # absolute scale c, all targeted parameters
    kappa: float = 1.0  # relative scale of the early layers (kappa < 1 ~ lt < 0 in the DLN)
    profile: str = "split"  # split | geometric
    split: Optional[str] = None  # profile=split: stages before this one get kappa (null: the model's default)
    layer_scales: Dict[str, float] = field(default_factory=dict)  # glob pattern -> factor
    targets: List[str] = field(default_factory=lambda: ["weight"])  # of: weight, bias, bn


@dataclass
class FTConfig:
    """Model changes between pretraining and fine-tuning (Hydra structured config)."""

    rescale: float = 1.0  # LL's s: every targeted parameter times s
    layer_rescale: Dict[str, float] = field(default_factory=dict)  # glob pattern -> factor
    rescale_targets: List[str] = field(default_factory=lambda: ["weight", "bias", "bn"])  # LL: all
    head: str = "new"  # new | reuse
    readout_scale: float = 1.0  # gamma: the new head's default init times gamma


def _check_factor(key: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}={value!r} must be a finite number > 0")
    return float(value)


def _check_targets(key: str, targets: Sequence[str]) -> List[str]:
    targets = list(targets)
    bad = [t for t in targets if t not in TARGETS]
    if not targets or bad:
        raise ConfigError(f"{key}={targets} must be a non-empty list of {list(TARGETS)} (unknown: {bad})")
    return targets


def validate_init_config(cfg: InitConfig, stages: Optional[Sequence[str]] = None) -> None:
    """Checks that need no model (``stages``: the model's stage names, when known)."""
    _check_factor("init.scale", cfg.scale)
    _check_factor("init.kappa", cfg.kappa)
    if cfg.profile not in PROFILES:
        raise ConfigError(f"init.profile={cfg.profile!r} must be one of {list(PROFILES)}")
    if cfg.profile == "split" and stages is not None and cfg.split is not None and cfg.split not in stages[1:]:
        raise ConfigError(f"init.split={cfg.split!r} must be one of {list(stages[1:])} "
                          f"(the first stage that does NOT get kappa)")
    for pat, f in dict(cfg.layer_scales).items():
        _check_factor(f"init.layer_scales[{pat!r}]", f)
    _check_targets("init.targets", cfg.targets)


def validate_ft_config(cfg: FTConfig) -> None:
    """Checks that need no model."""
    _check_factor("ft.rescale", cfg.rescale)
    _check_factor("ft.readout_scale", cfg.readout_scale)
    for pat, f in dict(cfg.layer_rescale).items():
        _check_factor(f"ft.layer_rescale[{pat!r}]", f)
    _check_targets("ft.rescale_targets", cfg.rescale_targets)
    if cfg.head not in HEADS:
        raise ConfigError(f"ft.head={cfg.head!r} must be one of {list(HEADS)}")
    if cfg.head == "reuse" and cfg.readout_scale != 1.0:
        raise ConfigError(f"ft.readout_scale={cfg.readout_scale} applies to a new head only; with ft.head=reuse "
                          f"scale the pretrained head with ft.layer_rescale (e.g. {{fc: {cfg.readout_scale}}})")


NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def targeted_params(model: nn.Module, targets: Sequence[str]) -> Dict[str, nn.Parameter]:
    """{name: parameter} of the parameters that ``targets`` selects (see module docstring)."""
    out: Dict[str, nn.Parameter] = {}
    for mname, module in model.named_modules():
        is_norm = isinstance(module, NORMS)
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            kind = "bn" if is_norm else ("weight" if p.dim() >= 2 or pname == "weight" else "bias")
            if kind in targets:
                out[full] = p
    return out


def _matches(pattern: str, param_name: str) -> bool:
    parts = param_name.split(".")
    names = [param_name] + [".".join(parts[:i]) for i in range(1, len(parts))]
    return any(fnmatchcase(n, pattern) for n in names)


def resolve_factors(model: nn.Module, scales: Mapping[str, float], targets: Sequence[str],
                    key: str = "layer_scales", strict: bool = True) -> Dict[str, float]:
    """{param name: product of the factors of the patterns matching it} over the targeted parameters
    (1.0 where none match). ``strict``: a pattern matching no targeted parameter is a ConfigError."""
    params = targeted_params(model, targets)
    factors = {name: 1.0 for name in params}
    for pattern, f in scales.items():
        f = _check_factor(f"{key}[{pattern!r}]", f)
        hit = [name for name in params if _matches(pattern, name)]
        if not hit and strict:
            tops = sorted({n.split(".")[0] for n in params})
            raise ConfigError(f"{key}: pattern {pattern!r} matches no parameter selected by targets={list(targets)}; "
                              f"module names look like {tops} or 'layer1.0.conv1' (fnmatch globs)")
        for name in hit:
            factors[name] *= f
    return factors


def kappa_profile(cfg: InitConfig, stages: Sequence[str], default_split: str) -> Dict[str, float]:
    """{stage: factor} of the relative-scale preset over the model's ``stages``."""
    s = len(stages)
    if cfg.profile == "geometric":
        return {st: cfg.kappa ** (1 - j / (s - 1)) for j, st in enumerate(stages)}
    k = list(stages).index(cfg.split or default_split)
    return {st: (cfg.kappa if j < k else 1.0) for j, st in enumerate(stages)}


def resolve_layer_factors(model: nn.Module, cfg: InitConfig) -> Dict[str, float]:
    """{param name: init factor} for the parameters selected by ``cfg.targets``."""
    stages = model.STAGES
    validate_init_config(cfg, stages)
    targets = cfg.targets
    preset: Dict[str, float] = {}
    for st, f in kappa_profile(cfg, stages, model.DEFAULT_SPLIT).items():
        for pat in model.STAGE_MODULES.get(st, (st,)):
            preset[pat] = f
    factors = resolve_factors(model, {"*": cfg.scale}, targets, "init.scale", strict=False)
    for extra in (resolve_factors(model, preset, targets, "init.kappa", strict=False),
                  resolve_factors(model, dict(cfg.layer_scales), targets, "init.layer_scales")):
        for name, f in extra.items():
            factors[name] *= f
    return factors


@torch.no_grad()
def _multiply(model: nn.Module, factors: Mapping[str, float]) -> None:
    params = dict(model.named_parameters())
    for name, f in factors.items():
        if f != 1.0:
            params[name].mul_(f)


def apply_init_scaling(model: nn.Module, cfg: InitConfig) -> Dict[str, float]:
    """Multiply the (default-initialised) model's parameters in place; return the factors used."""
    factors = resolve_layer_factors(model, cfg)
    _multiply(model, factors)
    return factors


def apply_rescale(model: nn.Module, s: float = 1.0, layer_rescale: Mapping[str, float] | None = None,
                  targets: Sequence[str] = TARGETS) -> Dict[str, float]:
    """LL's post-PT rescaling: targeted parameters times ``s`` times the matching ``layer_rescale``
    factors (in place; buffers untouched). Return the factors used."""
    targets = _check_targets("ft.rescale_targets", targets)
    factors = resolve_factors(model, {"*": _check_factor("ft.rescale", s)}, targets, "ft.rescale", strict=False)
    for name, f in resolve_factors(model, dict(layer_rescale or {}), targets, "ft.layer_rescale").items():
        factors[name] *= f
    _multiply(model, factors)
    return factors


def prepare_finetune_model(model: nn.Module, ft_cfg: FTConfig, n_ft_classes: int) -> nn.Module:
    """Apply ``ft_cfg`` to a pretrained model in place (rescale, layer_rescale, head); return it.

    ``head=new``: a fresh ``n_ft_classes``-way head (default init from torch's RNG) times gamma.
    ``head=reuse``: the pretrained head is kept; it must have >= ``n_ft_classes`` outputs and the FT
    labels must be the FT classes' original indices (``Split.y_orig``)."""
    validate_ft_config(ft_cfg)
    if not isinstance(n_ft_classes, int) or n_ft_classes < 2:
        raise ConfigError(f"n_ft_classes={n_ft_classes!r} must be an integer >= 2")
    apply_rescale(model, ft_cfg.rescale, ft_cfg.layer_rescale, ft_cfg.rescale_targets)
    if ft_cfg.head == "new":
        head = model.reset_head(n_ft_classes)
        with torch.no_grad():
            for p in head.parameters():
                p.mul_(ft_cfg.readout_scale)
    elif model.head_outputs() < n_ft_classes:
        raise ConfigError(f"ft.head=reuse: the pretrained head has {model.head_outputs()} outputs, "
                          f"fewer than the {n_ft_classes} FT classes; use ft.head=new")
    return model


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch: int = 128,
                   prep: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> int:
    """Recompute every BatchNorm's running statistics on the inputs ``x`` (for ``ft.bn_recalibrate``).

    After a rescale the running statistics are the pretraining's, stale for the rescaled network.
    This resets them and runs ``x`` through the model in train mode, in batches of ``batch``, with
    ``momentum=None`` (a cumulative average: the mean over batches of each batch's mean and unbiased
    variance). Each batch goes through ``prep`` first (the track's input preparation, e.g. uint8 images ->
    normalised floats; None: as given). No parameter changes; each layer's momentum and the model's
    train/eval mode are restored. Returns the number of BatchNorm layers recalibrated."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        raise ConfigError("recalibrate_bn: the model has no BatchNorm layer with running statistics")
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or len(x) < 2:
        raise ConfigError(f"recalibrate_bn: x must be a batch of >= 2 inputs, got "
                          f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 2:
        raise ConfigError(f"recalibrate_bn: batch={batch!r} must be an integer >= 2")
    while len(x) % batch == 1:
        batch += 1  # never a last batch of one image (BatchNorm's train mode needs >= 2 values)
    device = next(model.parameters()).device
    was_training, momenta = model.training, [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for i in range(0, len(x), batch):
            xb = x[i:i + batch].to(device)
            model(prep(xb) if prep is not None else xb)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    return len(bns)
