"""Init scaling (scale, kappa split/geometric, layer_scales) and FT rescaling / head (LL)."""

from __future__ import annotations

import math

import pytest
import torch

from ptft import ConfigError
from ptft.vision.models import build_model, stage_of
from ptft.pipeline.knobs import (FTConfig, InitConfig, apply_init_scaling, apply_rescale, prepare_finetune_model,
                                 resolve_layer_factors, targeted_params)

torch.set_num_threads(1)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet18_cifar", 10, width=8)


def _norms(m: torch.nn.Module) -> dict[str, float]:
    return {n: p.detach().norm().item() for n, p in m.named_parameters()}


def _kind(name: str, model: torch.nn.Module) -> str:
    return "bn" if name in targeted_params(model, ["bn"]) else name.rsplit(".", 1)[1]


def _check(ref: dict[str, float], new: dict[str, float], factor) -> None:
    for n in ref:
        assert math.isclose(new[n], ref[n] * factor(n), rel_tol=1e-6, abs_tol=1e-12), (n, new[n], ref[n], factor(n))


@pytest.mark.parametrize("targets", [["weight"], ["weight", "bn"], ["weight", "bias", "bn"]])
def test_split_kappa_and_scale(targets: list[str]) -> None:
    ref, m = _model(), _model()
    base = _norms(ref)
    cfg = InitConfig(scale=2.0, kappa=0.25, split="layer3", targets=targets)
    apply_init_scaling(m, cfg)
    early = {"stem", "layer1", "layer2"}

    def factor(n: str) -> float:
        if _kind(n, m) not in targets:
            return 1.0
        return 2.0 * (0.25 if stage_of(n) in early else 1.0)

    _check(base, _norms(m), factor)
    # BN biases start at 0: a factor on them is invisible in the norm; check the weights did move
    assert factor("bn1.weight") == (0.5 if "bn" in targets else 1.0)


def test_geometric_profile() -> None:
    ref, m = _model(), _model()
    apply_init_scaling(m, InitConfig(kappa=0.1, profile="geometric"))
    stages = ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]

    def factor(n: str) -> float:
        if _kind(n, m) != "weight":
            return 1.0
        return 0.1 ** (1 - stages.index(stage_of(n)) / 5)

    _check(_norms(ref), _norms(m), factor)
    assert math.isclose(factor("conv1.weight"), 0.1) and factor("fc.weight") == 1.0


def test_layer_scales_globs_multiply() -> None:
    ref, m = _model(), _model()
    cfg = InitConfig(scale=3.0, layer_scales={"layer*.*.conv1": 0.5, "layer4": 0.1, "fc.bias": 7.0},
                     targets=["weight", "bias"])
    factors = apply_init_scaling(m, cfg)

    def factor(n: str) -> float:
        if n.endswith("bias") and not n.startswith("fc"):
            return 1.0  # BN bias: not targeted
        if _kind(n, m) == "bn":
            return 1.0
        f = 3.0
        if ".conv1." in n and n.startswith("layer"):
            f *= 0.5
        if n.startswith("layer4"):
            f *= 0.1
        if n == "fc.bias":
            f *= 7.0
        return f

    _check(_norms(ref), _norms(m), factor)
    assert math.isclose(factors["layer4.1.conv1.weight"], 3 * 0.5 * 0.1) and "conv1.weight" in factors
    assert factors["conv1.weight"] == 3.0  # the stem conv is not a block's conv1


def test_init_factors_do_not_depend_on_anything_but_config() -> None:
    a = resolve_layer_factors(_model(0), InitConfig(kappa=0.5))
    b = resolve_layer_factors(_model(1), InitConfig(kappa=0.5))
    assert a == b and set(a) == set(targeted_params(_model(), ["weight"]))


@pytest.mark.parametrize("cfg, key", [
    (InitConfig(scale=0.0), "init.scale"),
    (InitConfig(kappa=-1.0), "init.kappa"),
    (InitConfig(scale=float("nan")), "init.scale"),
    (InitConfig(profile="linear"), "init.profile"),
    (InitConfig(split="layer9"), "init.split"),
    (InitConfig(targets=["weights"]), "init.targets"),
    (InitConfig(targets=[]), "init.targets"),
    (InitConfig(layer_scales={"layer1": 0.0}), "layer_scales"),
    (InitConfig(layer_scales={"lyer1*": 2.0}), "'lyer1\\*'"),
    (InitConfig(layer_scales={"bn1": 2.0}), "'bn1'"),  # bn not in targets -> matches nothing
])
def test_bad_init_config(cfg: InitConfig, key: str) -> None:
    m = _model()
    before = _norms(m)
    with pytest.raises(ConfigError, match=key):
        apply_init_scaling(m, cfg)
    assert _norms(m) == before  # nothing applied before the error


def test_ll_rescale_every_parameter() -> None:
    ref, m = _model(), _model()
    factors = apply_rescale(m, 0.125)
    assert set(factors) == {n for n, _ in m.named_parameters()}  # EVERY parameter (LL)
    _check(_norms(ref), _norms(m), lambda n: 0.125)
    buf_ref, buf = dict(ref.named_buffers()), dict(m.named_buffers())
    assert all(torch.equal(buf_ref[k], buf[k]) for k in buf)  # running stats untouched


def test_layer_rescale_and_new_head_scale() -> None:
    ref, m = _model(), _model()
    base = _norms(ref)
    torch.manual_seed(11)
    fresh = torch.nn.Linear(64, 2)
    torch.manual_seed(11)
    prepare_finetune_model(m, FTConfig(rescale=0.5, layer_rescale={"layer1": 2.0}, readout_scale=0.1), 2)
    assert m.fc.out_features == 2
    assert torch.allclose(m.fc.weight, 0.1 * fresh.weight) and torch.allclose(m.fc.bias, 0.1 * fresh.bias)
    new = _norms(m)
    _check({k: v for k, v in base.items() if not k.startswith("fc")}, new,
           lambda n: 0.5 * (2.0 if n.startswith("layer1") else 1.0))


def test_reuse_head() -> None:
    ref, m = _model(), _model()
    prepare_finetune_model(m, FTConfig(head="reuse", rescale=2.0), 2)
    assert m.fc.out_features == 10 and torch.allclose(m.fc.weight, 2 * ref.fc.weight)
    with pytest.raises(ConfigError, match="ft.layer_rescale"):
        prepare_finetune_model(_model(), FTConfig(head="reuse", readout_scale=0.5), 2)
    with pytest.raises(ConfigError, match="fewer than"):
        prepare_finetune_model(_model(), FTConfig(head="reuse"), 11)


@pytest.mark.parametrize("cfg, key", [
    (FTConfig(rescale=0.0), "ft.rescale"),
    (FTConfig(readout_scale=-2.0), "ft.readout_scale"),
    (FTConfig(head="old"), "ft.head"),
    (FTConfig(rescale_targets=["all"]), "ft.rescale_targets"),
    (FTConfig(layer_rescale={"layer7": 2.0}), "'layer7'"),
])
def test_bad_ft_config(cfg: FTConfig, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        prepare_finetune_model(_model(), cfg, 2)


def test_configs_are_hydra_structured() -> None:
    from omegaconf import OmegaConf

    for cls in (InitConfig, FTConfig):
        conf = OmegaConf.structured(cls)
        assert OmegaConf.to_object(conf) == cls()
    merged = OmegaConf.merge(OmegaConf.structured(InitConfig), {"layer_scales": {"layer1": 0.5}, "kappa": 0.5})
    factors = resolve_layer_factors(_model(), merged)  # a DictConfig works too
    assert factors["layer1.0.conv1.weight"] == 0.25


# ---------------------------------------------------------------- BatchNorm recalibration
def test_recalibrate_bn_recomputes_running_stats_without_touching_parameters() -> None:
    from ptft.pipeline.knobs import recalibrate_bn
    from ptft.vision.data import normalize

    m = _model(0)
    apply_rescale(m, 0.25)  # after a strong rescale the PT statistics (here: init's 0 / 1) are stale
    m.eval()
    params = {n: p.detach().clone() for n, p in m.named_parameters()}
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=g)
    xf = x.float().div(255).sub(0.5).div(0.5)
    with torch.no_grad():
        train_out = m.train()(xf)  # batch statistics
        m.eval()
        stale = m(xf)
        stem = m.conv1(xf)  # the first BN's input
    assert recalibrate_bn(m, x, batch=4, prep=normalize) == 20  # 3 equal batches: mean of batch means = overall mean
    assert not m.training and m.bn1.momentum == 0.1
    assert all(torch.equal(p, params[n]) for n, p in m.named_parameters())
    assert torch.allclose(m.bn1.running_mean, stem.mean((0, 2, 3)), atol=1e-6)
    with torch.no_grad():
        fresh = m(xf)
    # eval with recalibrated statistics ~ train-mode output; the stale statistics were far off
    assert (fresh - train_out).abs().max() < 0.2 * (stale - train_out).abs().max()
    recalibrate_bn(m, xf, batch=64)  # one batch, float input: exact batch statistics of the stem
    assert torch.allclose(m.bn1.running_var, stem.var((0, 2, 3), unbiased=True), rtol=1e-4)
    recalibrate_bn(m, x[:7], batch=3, prep=normalize)  # 7 = 3 + 3 + 1 would leave a batch of one: batch grows to 4


def test_recalibrate_bn_bad_input_is_one_clear_error() -> None:
    from ptft.pipeline.knobs import recalibrate_bn

    x = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ConfigError, match="no BatchNorm"):
        recalibrate_bn(torch.nn.Linear(3, 2), x)
    with pytest.raises(ConfigError, match=">= 2 inputs"):
        recalibrate_bn(_model(), x[:1])
    with pytest.raises(ConfigError, match="batch=1 must be"):
        recalibrate_bn(_model(), x, batch=1)
