"""ResNet-18 builders: torchvision equivalence at width 64, stems, width scaling, head replacement."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from ptft import ConfigError
from ptft.vision.models import STAGES, build_model, count_params, new_head, output_shape, stage_of

torch.set_num_threads(1)


def test_width64_is_exactly_torchvision_resnet18() -> None:
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=100).state_dict()
    torch.manual_seed(0)
    ours = build_model("resnet18", 100).state_dict()
    assert list(ours) == list(ref)
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k  # same modules, same init, same RNG order


def test_cifar_stem_and_width_scaling() -> None:
    torch.manual_seed(0)
    m = build_model("resnet18_cifar", 10, width=8)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and isinstance(m.maxpool, nn.Identity)
    assert [m.layer1[0].conv1.out_channels, m.layer2[0].conv1.out_channels,
            m.layer3[0].conv1.out_channels, m.layer4[0].conv1.out_channels] == [8, 16, 32, 64]
    assert m.fc.in_features == 64 and output_shape(m) == (2, 10)
    tv_names = {n for n, _ in torchvision.models.resnet18().named_parameters()}
    assert {n for n, _ in m.named_parameters()} == tv_names  # per-layer maps work on both
    # conv parameters scale as width^2: width 16 has ~4x the parameters of width 8
    ratio = count_params(build_model("resnet18", 10, 16)) / count_params(build_model("resnet18", 10, 8))
    assert 3.8 < ratio < 4.0
    # the ImageNet stem downsamples 32x32 to 1x1 before the pool, the CIFAR stem to 4x4
    feats = {}
    for name in ("resnet18", "resnet18_cifar"):
        net = build_model(name, 10, 8).eval()
        net.layer4.register_forward_hook(lambda mod, i, o, name=name: feats.__setitem__(name, o.shape))
        output_shape(net)
    assert feats["resnet18"][-2:] == (1, 1) and feats["resnet18_cifar"][-2:] == (4, 4)


def test_new_head_replaces_fc() -> None:
    m = build_model("resnet18_cifar", 100, width=8).to(torch.float64)
    old = m.fc
    torch.manual_seed(5)
    head = new_head(m, 2)
    torch.manual_seed(5)
    ref = nn.Linear(64, 2)
    assert m.fc is head and head is not old and head.weight.dtype == torch.float64
    assert torch.equal(head.weight, ref.weight.double()) and torch.equal(head.bias, ref.bias.double())


def test_stage_of_and_errors() -> None:
    assert [stage_of(n) for n in ("conv1.weight", "bn1.bias", "layer2.0.conv1.weight", "fc.weight")] == \
        ["stem", "stem", "layer2", "fc"]
    assert STAGES[0] == "stem" and STAGES[-1] == "fc"
    for kw in (dict(name="vgg", num_classes=10), dict(name="resnet18", num_classes=0),
               dict(name="resnet18", num_classes=10, width=0)):
        with pytest.raises(ConfigError):
            build_model(**kw)
