"""Per-stage fine-tuning diagnostics: CKA, participation ratio, weight movement, stage outputs (issue #13)."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ptft import ConfigError
from ptft.pipeline.diagnostics import (RESNET18_OUTPUTS, RESNET18_STAGES, diagnostics, linear_cka,
                                       participation_ratio, relative_movement, stage_outputs, stage_params)
from ptft.vision.models import build_model

torch.set_num_threads(1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- CKA


@pytest.mark.parametrize("n,d", [(50, 8), (20, 300)])  # feature form and Gram form
def test_cka_self_orthogonal_scale_shift(n: int, d: int) -> None:
    x = torch.randn(n, d, generator=gen(0))
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen(1), dtype=torch.float64))
    for debiased in (False, True):
        assert linear_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-10)
        assert linear_cka(x, (x.double() @ q) * 3.0 + 7.0, debiased=debiased) == pytest.approx(1.0, abs=1e-10)


def test_cka_gram_and_feature_forms_agree_and_symmetric() -> None:
    x = torch.randn(40, 6, generator=gen(2))
    y = x[:, :3] @ torch.randn(3, 200, generator=gen(3)) + 0.5 * torch.randn(40, 200, generator=gen(4))
    a = linear_cka(x, y)  # 40 * 206 < 6*200 + 36 + 40000: Gram form
    xc, yc = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    ref = float((yc.T @ xc).square().sum() / ((xc.T @ xc).norm() * (yc.T @ yc).norm()))  # feature form
    assert a == pytest.approx(ref, rel=1e-10)
    assert linear_cka(y, x) == pytest.approx(a, rel=1e-12)
    assert 0.0 < a < 1.0


def reference_debiased_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Nguyen et al. (2021)'s estimator on UNcentred Gram matrices (the U-statistic ignores feature means)."""
    def hsic(k, l_):
        n = k.shape[0]
        k, l_ = k - torch.diag(torch.diag(k)), l_ - torch.diag(torch.diag(l_))
        one = torch.ones(n, 1, dtype=k.dtype)
        t = torch.trace(k @ l_) + (one.T @ k @ one) * (one.T @ l_ @ one) / ((n - 1) * (n - 2)) \
            - 2.0 * (one.T @ k @ l_ @ one) / (n - 2)
        return float(t) / (n * (n - 3))
    k, l_ = x.double() @ x.double().T, y.double() @ y.double().T
    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


@pytest.mark.parametrize("n,d1,d2", [(300, 5, 7), (12, 40, 30)])  # feature form and Gram form
def test_debiased_cka_matches_reference(n: int, d1: int, d2: int) -> None:
    x = torch.randn(n, d1, generator=gen(5)) + 3.0
    y = x[:, :1] * torch.randn(1, d2, generator=gen(6)) + torch.randn(n, d2, generator=gen(7)) - 1.0
    assert linear_cka(x, y, debiased=True) == pytest.approx(reference_debiased_cka(x, y), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("n,d1,d2", [(2000, 10, 20), (500, 10, 10), (200, 256, 256)])
def test_cka_independent_noise(n: int, d1: int, d2: int) -> None:
    # biased linear CKA of independent isotropic Gaussians ~ sqrt(d1 d2 / ((n + d1)(n + d2))): near 0 only
    # for d << n (e.g. 0.007 at n=2000, d=10, 20), but ~0.56 at n=200, d=256. The debiased one is O(1/n).
    bound = math.sqrt(d1 * d2 / ((n + d1) * (n + d2)))
    for seed in range(3):
        x, y = torch.randn(n, d1, generator=gen(10 + seed)), torch.randn(n, d2, generator=gen(20 + seed))
        assert linear_cka(x, y) < 1.5 * bound
        assert abs(linear_cka(x, y, debiased=True)) < 5.0 / n


def test_cka_constant_side_is_nan() -> None:
    assert math.isnan(linear_cka(torch.ones(10, 3), torch.randn(10, 3, generator=gen(0))))
    with pytest.raises(ValueError):
        linear_cka(torch.randn(10, 3), torch.randn(9, 3))


# ---------------------------------------------------------------------------------------------- PR


@pytest.mark.parametrize("n,d", [(4000, 20), (300, 50), (50, 200)])
def test_pr_isotropic(n: int, d: int) -> None:
    # sample covariance of n isotropic samples: PR ~ d n / (n + d) (Marchenko-Pastur), <= min(n - 1, d)
    pr = participation_ratio(torch.randn(n, d, generator=gen(n + d)))
    assert 0.9 * d * n / (n + d) < pr <= min(n - 1, d) + 1e-9
    if n >= 200 * d:
        assert pr > 0.99 * d


def test_pr_rank_one_and_scale() -> None:
    x = torch.randn(100, 1, generator=gen(0)) @ torch.randn(1, 30, generator=gen(1)) + 5.0
    assert participation_ratio(x) == pytest.approx(1.0, abs=1e-9)
    # two directions with variances 1 and 1 -> 2; with 1 and 0 (after centring) -> 1
    x2 = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert participation_ratio(x2) == pytest.approx(2.0)
    assert participation_ratio(x2 * 4.0) == pytest.approx(2.0)
    assert math.isnan(participation_ratio(torch.ones(5, 3)))


# ---------------------------------------------------------------------------------------------- stages / movement


def tiny_resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet18_cifar", 2, width=4)


def tiny_transformer(seed: int = 0, p: int = 11, d: int = 8) -> nn.Module:
    """An nn.Sequential with a Transformer's stage names (embed, pos, attn, mlp, unembed) on [a, op, b] tokens."""

    class AddPos(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(0.1 * torch.randn(3, d))

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return h + self.w

    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        embed=nn.Embedding(p + 1, d), pos=AddPos(), attn=nn.Linear(d, d),
        mlp=nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Linear(4 * d, d)),
        unembed=nn.Sequential(nn.Flatten(), nn.Linear(3 * d, p))))


TF_STAGES = ["embed", "pos", "attn", "mlp", "unembed"]


def test_stage_params_resnet_covers_every_parameter_once() -> None:
    m = tiny_resnet()
    sp = stage_params(m, RESNET18_STAGES)
    assert set(sp) == {n for n, _ in m.named_parameters()}
    assert sp["conv1.weight"] == sp["bn1.bias"] == "stem"
    assert sp["layer1.0.conv1.weight"] == "layer1" and sp["fc.bias"] == "fc"
    with pytest.raises(ConfigError, match="no module"):
        stage_params(m, {"x": ["layer9"]})
    with pytest.raises(ConfigError, match="in stages"):
        stage_params(m, {"a": ["layer1"], "b": ["layer1.0"]})
    # a list of module names: one stage each, other parameters left out
    assert set(stage_params(m, ["layer4", "fc"]).values()) == {"layer4", "fc"}


def test_relative_movement_known_values() -> None:
    m = tiny_resnet()
    sp = stage_params(m, RESNET18_STAGES)
    s0 = snapshot(m)
    assert all(v == 0.0 for v in relative_movement(s0, snapshot(m), sp).values())  # untrained
    with torch.no_grad():
        for p in m.layer2.parameters():
            p.mul_(1.1)
        m.layer3[0].bn1.running_mean.add_(1.0)  # a buffer: not a parameter, does not count
    mov = relative_movement(s0, snapshot(m), sp)
    assert mov["layer2"] == pytest.approx(0.1, rel=1e-6)
    assert mov["layer1"] == mov["layer3"] == mov["stem"] == mov["fc"] == 0.0
    assert 0.0 < mov["all"] < 0.1
    # a stage that started at zero (gamma = 0 head): NaN once it moves, 0 while it does not
    z = {"w": torch.zeros(3)}
    assert relative_movement(z, {"w": torch.zeros(3)}, {"w": "fc"})["fc"] == 0.0
    assert math.isnan(relative_movement(z, {"w": torch.ones(3)}, {"w": "fc"})["fc"])


# ---------------------------------------------------------------------------------------------- stage outputs


def test_stage_outputs_resnet_shapes_batches_modes() -> None:
    m = tiny_resnet()
    m.train()
    m.layer2.eval()  # a mixed-mode model: every module's mode must come back
    modes = {n: mod.training for n, mod in m.named_modules()}
    x = torch.randn(10, 3, 32, 32, generator=gen(0))
    mods = {s: RESNET18_OUTPUTS.get(s, mods[-1]) for s, mods in RESNET18_STAGES.items()}
    h = stage_outputs(m, mods, x, batch_size=4)
    assert {s: tuple(v.shape) for s, v in h.items()} == {
        "stem": (10, 4), "layer1": (10, 4), "layer2": (10, 8), "layer3": (10, 16), "layer4": (10, 32), "fc": (10, 2)}
    assert all(not v.requires_grad and v.dtype == torch.float32 for v in h.values())
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    assert all(len(mod._forward_hooks) == 0 for mod in m.modules())
    h_all = stage_outputs(m, mods, x, batch_size=100)  # eval mode: batching does not change outputs
    assert all(torch.allclose(h[s], h_all[s], atol=1e-5) for s in h)
    # stem output is post-ReLU (taken at maxpool), and the stage output equals the module's own forward
    assert (h["stem"] >= 0).all()
    m.eval()
    with torch.no_grad():
        assert torch.allclose(h["fc"], m(x), atol=1e-5)
    # flatten keeps C*H*W; a random projection caps it, identically for two calls
    hf = stage_outputs(m, ["layer1", "layer4"], x, pool="flatten")
    assert hf["layer1"].shape == (10, 4 * 32 * 32) and hf["layer4"].shape == (10, 32 * 4 * 4)
    hp = stage_outputs(m, ["layer1", "layer4"], x, pool="flatten", max_features=64)
    hp2 = stage_outputs(m, ["layer1", "layer4"], x, pool="flatten", max_features=64, batch_size=3)
    assert hp["layer1"].shape == (10, 64) and torch.allclose(hp["layer1"], hp2["layer1"], atol=1e-4)
    with pytest.raises(ConfigError, match="no module"):
        stage_outputs(m, ["nope"], x)
    with pytest.raises(ConfigError, match="exactly once"):
        stage_outputs(m, ["layer1.0.relu"], x)  # torchvision's BasicBlock calls its ReLU twice


def test_stage_outputs_prep_and_transformer_stand_in() -> None:
    m = tiny_transformer()
    tok = torch.randint(0, 12, (20, 3), generator=gen(0))
    h = stage_outputs(m, TF_STAGES, tok)
    assert {s: tuple(v.shape) for s, v in h.items()} == {
        "embed": (20, 24), "pos": (20, 24), "attn": (20, 24), "mlp": (20, 24), "unembed": (20, 11)}
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=gen(1))
    r = tiny_resnet()
    a = stage_outputs(r, ["layer1"], x, prep=lambda u: u.float() / 127.5 - 1.0)["layer1"]
    b = stage_outputs(r, ["layer1"], x.float() / 127.5 - 1.0)["layer1"]
    assert torch.allclose(a, b)

    class Compiled(nn.Module):  # torch.compile's wrapper keeps the module as _orig_mod: hooks go there
        def __init__(self, mod: nn.Module) -> None:
            super().__init__()
            self._orig_mod = mod

    xf = x.float()
    assert torch.equal(stage_outputs(Compiled(r), ["layer1"], xf)["layer1"], stage_outputs(r, ["layer1"], xf)["layer1"])
    assert set(stage_params(Compiled(r), ["fc"])) == {"fc.weight", "fc.bias"}


# ---------------------------------------------------------------------------------------------- one run


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def check_keys(d: dict, stages: list) -> None:
    kinds = ("movement", "cka", "cka_debiased", "pr_start", "pr_end")
    assert set(d) == {f"diag/{k}/{s}" for k in kinds for s in stages} | {"diag/movement/all"}
    assert all(isinstance(v, float) for v in d.values())


def test_diagnostics_untrained_model_is_at_its_start() -> None:
    m = tiny_resnet()
    x = torch.randn(12, 3, 32, 32, generator=gen(0))
    d = diagnostics(snapshot(m), m, RESNET18_STAGES, x, outputs=RESNET18_OUTPUTS)
    check_keys(d, list(RESNET18_STAGES))
    for s in RESNET18_STAGES:
        assert d[f"diag/movement/{s}"] == 0.0
        assert d[f"diag/cka/{s}"] == pytest.approx(1.0, abs=1e-9)
        assert d[f"diag/cka_debiased/{s}"] == pytest.approx(1.0, abs=1e-9)
        assert d[f"diag/pr_start/{s}"] == pytest.approx(d[f"diag/pr_end/{s}"], rel=1e-9)
        assert 1.0 <= d[f"diag/pr_start/{s}"] <= 11.0 + 1e-9


def test_diagnostics_after_training_resnet() -> None:
    m = tiny_resnet()
    x, y = torch.randn(16, 3, 32, 32, generator=gen(0)), torch.randint(0, 2, (16,), generator=gen(1))
    s0 = snapshot(m)
    train(m, x, y, steps=5, lr=0.05)
    m.train()
    before = snapshot(m)
    d = diagnostics(s0, m, RESNET18_STAGES, torch.randn(12, 3, 32, 32, generator=gen(2)), outputs=RESNET18_OUTPUTS)
    check_keys(d, list(RESNET18_STAGES))
    assert m.training and all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # model unchanged
    mov = relative_movement(s0, before, stage_params(m, RESNET18_STAGES))
    for s in RESNET18_STAGES:
        assert d[f"diag/movement/{s}"] == mov[s] > 0.0
        assert 0.0 <= d[f"diag/cka/{s}"] <= 1.0 + 1e-9
    assert d["diag/movement/all"] == mov["all"]


def test_diagnostics_transformer_stand_in_and_zero_head() -> None:
    m = tiny_transformer()
    with torch.no_grad():
        m.unembed[1].weight.zero_()  # gamma = 0 readout: relative movement of the head is undefined (NaN)
        m.unembed[1].bias.zero_()
    tok = torch.randint(0, 12, (64, 3), generator=gen(0))
    y = (tok[:, 0] + tok[:, 2]) % 11
    s0 = snapshot(m)
    train(m, tok, y, steps=20, lr=0.1)
    d = diagnostics(s0, m, TF_STAGES, tok)
    check_keys(d, TF_STAGES)
    assert all(d[f"diag/movement/{s}"] > 0 for s in TF_STAGES[:-1])
    assert math.isnan(d["diag/movement/unembed"])
    assert math.isnan(d["diag/pr_start/unembed"])  # zero head: constant logits at the start
    assert all(0.0 < d[f"diag/cka/{s}"] <= 1.0 + 1e-9 for s in TF_STAGES[:-1])
    with pytest.raises(ConfigError, match="not in the stage spec"):
        diagnostics(s0, m, TF_STAGES, tok, outputs={"head": "unembed"})
