"""Per-stage diagnostics of one fine-tuning run: how far each stage moved (lazy vs rich) and how much
each stage's representation changed (PT-dependence), plus Lippl & Lindsey's participation ratio.

Pure torch (no Hydra). How to read the numbers against docs/paper.md section 6: docs/diagnostics.md.

A *stage spec* maps a stage name to the module names that make it up, in forward order, e.g.
:data:`RESNET18_STAGES`. A parameter belongs to a stage when its name is one of the stage's module
names or lies below one (``layer1.0.conv1.weight`` is in ``layer1``). The stage's *output* is the output
of the module ``outputs[stage]`` (default: the stage's last module); for the ResNet stem it is
``maxpool`` (after the stem's ReLU; an ``nn.Identity`` in the CIFAR stem), which owns no parameters.

Representations: the output of a stage on n inputs is flattened to (n, features). A 4-D output
(conv feature map, N C H W) is by default averaged over H, W (``pool="avg"``: (n, C), as LL's
per-stage representations; cheap, and the feature count stays <= 8 x width); ``pool="flatten"`` keeps
C*H*W features. Any representation wider than ``max_features`` is then multiplied by a fixed Gaussian
random projection (seeded by ``proj_seed`` and the width, so the start and end models get the same one;
linear CKA and PR are preserved only approximately, to O(1/sqrt(max_features))). Other outputs (e.g. a
transformer's N T D residual stream) are flattened. A module returning a tuple contributes its first
element (``nn.MultiheadAttention``).
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ptft import ConfigError

StageSpec = Union[Mapping[str, Sequence[str]], Sequence[str]]

# torchvision ResNet-18 module names (ptft.vision.models keeps them): the stem is conv1 + bn1, its
# output is taken at maxpool (after the ReLU); fc is the (re-initialised) head.
RESNET18_STAGES: Dict[str, list] = {
    "stem": ["conv1", "bn1"],
    "layer1": ["layer1"],
    "layer2": ["layer2"],
    "layer3": ["layer3"],
    "layer4": ["layer4"],
    "fc": ["fc"],
}
RESNET18_OUTPUTS: Dict[str, str] = {"stem": "maxpool"}


# ----------------------------------------------------------------------------------------------------
# representation similarity and dimensionality


def _centred(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"expected a 2-D (n, features) tensor, got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    return x - x.mean(dim=0, keepdim=True)


def linear_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = False) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations x (n, d1), y (n, d2) of the same n inputs.

    CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc, Yc, in float64; the
    feature form or the equivalent n x n Gram form <K, L> / (||K|| ||L||), whichever is cheaper. In [0, 1],
    invariant to orthogonal transforms and isotropic scaling of either side. NaN if a side is constant.

    Bias: for independent isotropic x, y the (standard, biased) value is about
    sqrt(d1 d2 / ((n + d1)(n + d2))), i.e. ~sqrt(d1 d2)/n when d << n but ~0.5 when d = n; with d >~ n
    (a wide stage on a small test set) use ``debiased=True``: the unbiased-HSIC estimator (Song et al. 2012,
    as in Nguyen et al. 2021; also in feature or Gram form), whose value for independent data is ~0 (O(1/n))
    at any d. Needs n >= 4; it can come out slightly negative.
    """
    xc, yc = _centred(x), _centred(y)
    n = xc.shape[0]
    if yc.shape[0] != n:
        raise ValueError(f"x and y must have the same number of rows, got {n} and {yc.shape[0]}")
    if debiased and n < 4:
        raise ValueError("debiased CKA needs n >= 4 inputs")
    d1, d2 = xc.shape[1], yc.shape[1]
    if n * (d1 + d2) < d1 * d2 + d1 * d1 + d2 * d2:  # the n x n Gram form is cheaper
        k, l_ = xc @ xc.T, yc @ yc.T
        if debiased:
            hxy, hxx, hyy = _hsic_unbiased(k, l_), _hsic_unbiased(k, k), _hsic_unbiased(l_, l_)
        else:
            hxy, hxx, hyy = (k * l_).sum(), (k * k).sum(), (l_ * l_).sum()
    else:  # feature form
        cxy, cxx, cyy = yc.T @ xc, xc.T @ xc, yc.T @ yc
        if debiased:
            kd, ld = xc.square().sum(dim=1), yc.square().sum(dim=1)  # diagonals of the Gram matrices
            k1, l1 = xc @ xc.sum(dim=0) - kd, yc @ yc.sum(dim=0) - ld  # (K - diag K) 1, (L - diag L) 1
            hxy = _hsic_unbiased_terms(cxy.square().sum() - (kd * ld).sum(), k1.sum(), l1.sum(), k1 @ l1, n)
            hxx = _hsic_unbiased_terms(cxx.square().sum() - kd.square().sum(), k1.sum(), k1.sum(), k1 @ k1, n)
            hyy = _hsic_unbiased_terms(cyy.square().sum() - ld.square().sum(), l1.sum(), l1.sum(), l1 @ l1, n)
        else:
            hxy, hxx, hyy = cxy.square().sum(), cxx.square().sum(), cyy.square().sum()
    den = torch.sqrt(hxx * hyy)
    if not den > 0:
        return math.nan
    return float(hxy / den)


def _hsic_unbiased_terms(tr_kl, k_sum, l_sum, kl_sum, n: int) -> torch.Tensor:
    """Unbiased HSIC (Song et al. 2012) from tr(K~ L~), 1'K~1, 1'L~1 and 1'K~L~1 (K~: K with a zero diagonal)."""
    return (tr_kl + k_sum * l_sum / ((n - 1) * (n - 2)) - 2.0 * kl_sum / (n - 2)) / (n * (n - 3))


def _hsic_unbiased(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC of two n x n Gram matrices."""
    k = k - torch.diag(torch.diagonal(k))
    l_ = l_ - torch.diag(torch.diagonal(l_))
    k1, l1 = k.sum(dim=1), l_.sum(dim=1)
    return _hsic_unbiased_terms((k * l_).sum(), k1.sum(), l1.sum(), k1 @ l1, k.shape[0])


def participation_ratio(x: torch.Tensor) -> float:
    """(sum_i lambda_i)^2 / sum_i lambda_i^2 over the eigenvalues of the covariance of x (n, d) (LL's measure).

    Computed without an eigendecomposition as ||Xc||_F^4 / ||Xc^T Xc||_F^2 (or the n x n Gram, whichever is
    smaller), float64. 1 for rank-1 data; at most min(n - 1, d); for n samples of an isotropic d-dim Gaussian
    about d n / (n + d) (sample-covariance spread). NaN for constant data.
    """
    xc = _centred(x)
    n, d = xc.shape
    g = xc @ xc.T if n < d else xc.T @ xc
    tr2 = g.square().sum()
    if not tr2 > 0:
        return math.nan
    return float(xc.square().sum().square() / tr2)


# ----------------------------------------------------------------------------------------------------
# stages: parameters and weight movement


def _as_spec(stages: StageSpec) -> Dict[str, list]:
    if isinstance(stages, Mapping):
        spec = {str(s): [m] if isinstance(m, str) else list(m) for s, m in stages.items()}
    else:
        spec = {str(m): [str(m)] for m in stages}
    if not spec or any(not mods for mods in spec.values()):
        raise ConfigError(f"stage spec {stages!r} must name at least one module per stage")
    return spec


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile wrapper -> the module it compiled


def stage_params(model: nn.Module, stages: StageSpec) -> Dict[str, str]:
    """parameter name -> stage for every parameter under a stage's modules (others are left out).

    An unknown module name, or a parameter claimed by two stages, is a ConfigError.
    """
    spec = _as_spec(stages)
    model = _unwrap(model)
    modules = dict(model.named_modules())
    out: Dict[str, str] = {}
    for stage, names in spec.items():
        for m in names:
            if m not in modules:
                raise ConfigError(f"stage {stage!r}: the model has no module {m!r}")
            for p, _ in modules[m].named_parameters(prefix=m):
                if out.get(p, stage) != stage:
                    raise ConfigError(f"parameter {p!r} is in stages {out[p]!r} and {stage!r}")
                out[p] = stage
    return out


def relative_movement(state_start: Mapping[str, torch.Tensor], state_end: Mapping[str, torch.Tensor],
                      stage_of_param: Mapping[str, str]) -> Dict[str, float]:
    """Per stage ||theta_end - theta_start|| / ||theta_start|| over the stage's parameters (float64 sums).

    Also ``"all"`` over every parameter in ``stage_of_param``. 0 when nothing moved; NaN when the stage
    started at exactly zero (e.g. a head re-initialised with gamma = 0) and moved. Buffers (BatchNorm
    running statistics) are not parameters and do not count.
    """
    num: Dict[str, float] = {}
    den: Dict[str, float] = {}
    for name, stage in stage_of_param.items():
        if name not in state_start or name not in state_end:
            raise KeyError(f"parameter {name!r} is missing from a state dict")
        a = state_start[name].detach().to(torch.float64)
        b = state_end[name].detach().to(device=a.device, dtype=torch.float64)
        dn, nn_ = float((b - a).square().sum()), float(a.square().sum())
        for key in (stage, "all"):
            num[key] = num.get(key, 0.0) + dn
            den[key] = den.get(key, 0.0) + nn_
    out = {}
    for key in num:
        if num[key] == 0.0:
            out[key] = 0.0
        else:
            out[key] = math.sqrt(num[key] / den[key]) if den[key] > 0 else math.nan
    return out


# ----------------------------------------------------------------------------------------------------
# stage outputs


def _projection(d: int, k: int, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + d)
    return (torch.randn(d, k, generator=g) / math.sqrt(k)).to(device)


@torch.no_grad()
def stage_outputs(model: nn.Module, modules: Union[Mapping[str, str], Sequence[str]], x: torch.Tensor, *,
                  batch_size: int = 256, prep: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                  pool: str = "avg", max_features: Optional[int] = None, proj_seed: int = 0
                  ) -> Dict[str, torch.Tensor]:
    """Outputs of the named modules on inputs ``x``, each as an (n, features) float32 tensor on the model's device.

    ``modules``: stage -> module name, or a list of module names (then keyed by the module name). The model
    runs in eval mode (BatchNorm uses running statistics), without grad, in batches of ``batch_size`` rows
    of ``x``; each batch goes through ``prep`` (e.g. uint8 -> normalised float) if given and to the model's
    device. Every submodule's train/eval mode is restored afterwards. ``pool``/``max_features``: see the
    module docstring. Pass the plain module, not a ``torch.compile`` wrapper (it is unwrapped).
    """
    if pool not in ("avg", "flatten"):
        raise ConfigError(f"pool={pool!r} must be 'avg' or 'flatten'")
    if max_features is not None and max_features < 1:
        raise ConfigError(f"max_features={max_features!r} must be >= 1 or None")
    model = _unwrap(model)
    named = dict(modules) if isinstance(modules, Mapping) else {str(m): str(m) for m in modules}
    found = dict(model.named_modules())
    for stage, m in named.items():
        if m not in found:
            raise ConfigError(f"stage {stage!r}: the model has no module {m!r}")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    chunks: Dict[str, list] = {s: [] for s in named}
    proj: Dict[int, torch.Tensor] = {}

    def hook_for(stage: str) -> Callable:
        def hook(_mod, _inp, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            out = out.detach()
            if out.dim() == 4 and pool == "avg":
                h = out.float().mean(dim=(2, 3))
            else:
                h = out.reshape(out.shape[0], -1).float()
            if max_features is not None and h.shape[1] > max_features:
                d = h.shape[1]
                if d not in proj:
                    proj[d] = _projection(d, max_features, proj_seed, h.device)
                h = h @ proj[d]
            chunks[stage].append(h.clone())  # a copy: a later in-place op (ReLU) must not change it
        return hook

    modes = {m: m.training for m in model.modules()}
    handles = [found[m].register_forward_hook(hook_for(s)) for s, m in named.items()]
    try:
        model.eval()
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            if prep is not None:
                xb = prep(xb)
            model(xb.to(device))
    finally:
        for h in handles:
            h.remove()
        for m, was in modes.items():
            m.train(was)
    out = {}
    for s, c in chunks.items():
        rows = sum(h.shape[0] for h in c)
        if rows != x.shape[0]:  # a module that did not run, or ran more than once per forward (a shared ReLU)
            raise ConfigError(f"stage {s!r}: module {named[s]!r} gave {rows} output rows for {x.shape[0]} inputs; "
                              "hook a module that runs exactly once per forward")
        out[s] = torch.cat(c)
    return out


# ----------------------------------------------------------------------------------------------------
# one fine-tuning run


def diagnostics(start_state: Mapping[str, torch.Tensor], model: nn.Module, stages: StageSpec,
                x_eval: torch.Tensor, *, outputs: Optional[Mapping[str, str]] = None, batch_size: int = 256,
                prep: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, pool: str = "avg",
                max_features: Optional[int] = None, prefix: str = "diag") -> Dict[str, float]:
    """The diagnostics of one fine-tuning run, as flat float entries (for result.json / wandb).

    ``start_state``: the model's state dict at the START of fine-tuning (after the post-PT rescaling and
    head re-initialisation; copy it, e.g. ``{k: v.detach().clone() for k, v in model.state_dict().items()}``,
    before the first step). ``model``: the model now (end of fine-tuning, or mid-run). ``stages``: a stage
    spec (e.g. :data:`RESNET18_STAGES`); ``outputs``: stage -> module whose output is the stage's
    representation (default: the stage's last module). ``x_eval``: the FT test inputs (through ``prep``).

    Keys, per stage s: ``<prefix>/movement/<s>`` (relative weight movement; also ``movement/all``),
    ``<prefix>/cka/<s>`` (linear CKA of the stage's output at start vs now), ``<prefix>/cka_debiased/<s>``
    (the same with the unbiased estimator; use it when the stage is about as wide as x_eval is long),
    ``<prefix>/pr_start/<s>``, ``<prefix>/pr_end/<s>`` (participation ratio of the output at start / now).
    The start model is a deep copy of ``model`` with ``start_state`` loaded; ``model`` itself is unchanged.
    """
    spec = _as_spec(stages)
    model = _unwrap(model)
    out_mods = {s: mods[-1] for s, mods in spec.items()}
    if outputs:
        unknown = set(outputs) - set(spec)
        if unknown:
            raise ConfigError(f"outputs names stages {sorted(unknown)} that are not in the stage spec")
        out_mods.update(outputs)
    res: Dict[str, float] = {}
    mov = relative_movement(start_state, model.state_dict(), stage_params(model, spec))
    for s in list(spec) + ["all"]:
        res[f"{prefix}/movement/{s}"] = mov.get(s, 0.0)  # a stage without parameters does not move
    kw = dict(batch_size=batch_size, prep=prep, pool=pool, max_features=max_features)
    start = copy.deepcopy(model)
    start.load_state_dict(start_state)
    h0 = stage_outputs(start, out_mods, x_eval, **kw)
    del start
    h1 = stage_outputs(model, out_mods, x_eval, **kw)
    n = x_eval.shape[0]
    for s in spec:
        res[f"{prefix}/cka/{s}"] = linear_cka(h0[s], h1[s])
        res[f"{prefix}/cka_debiased/{s}"] = linear_cka(h0[s], h1[s], debiased=True) if n >= 4 else math.nan
        res[f"{prefix}/pr_start/{s}"] = participation_ratio(h0[s])
        res[f"{prefix}/pr_end/{s}"] = participation_ratio(h1[s])
    return res
