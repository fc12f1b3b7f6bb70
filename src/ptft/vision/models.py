"""ResNet-18 variants with a width knob, module names identical to torchvision's.

- ``resnet18``: torchvision's ResNet-18 (ImageNet stem: 7x7 stride-2 conv + 3x3 max-pool), as
  Lippl & Lindsey used on 32x32 CIFAR-100 (num_classes = 100).
- ``resnet18_cifar``: the usual CIFAR stem (3x3 stride-1 conv, no max-pool; ``maxpool`` is an
  ``nn.Identity`` so module names are unchanged).

``width`` is the channel count of the stem and layer1 (torchvision: 64); stages have
``width, 2 width, 4 width, 8 width`` channels. The class reuses torchvision's ``BasicBlock``,
``_make_layer`` and ``forward`` and builds/initialises modules in torchvision's order, so with
``width=64`` and the ImageNet stem the same seed gives a bit-identical state dict to
``torchvision.models.resnet18(num_classes=...)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from ptft import ConfigError

MODEL_NAMES = ("resnet18", "resnet18_cifar")
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "fc")  # in forward order


class ScalableResNet18(ResNet):
    """torchvision ResNet-18 with a channel-width knob and a choice of stem (stages: see ptft.pipeline.knobs)."""

    STAGES = STAGES
    STAGE_MODULES = {"stem": ("conv1", "bn1")}
    HEAD = "fc"
    DEFAULT_SPLIT = "layer3"
    DIAG_OUTPUTS = {"stem": "maxpool"}  # the stem's representation: after its ReLU (+ max-pool)

    def reset_head(self, num_classes: int) -> nn.Linear:
        return new_head(self, num_classes)

    def head_outputs(self) -> int:
        return int(self.fc.out_features)

    def __init__(self, num_classes: int, width: int = 64, stem: str = "imagenet") -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64  # BasicBlock requires 64; it does not set the width here
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            raise ConfigError(f"stem={stem!r} must be 'imagenet' or 'cifar'")
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        self.layer1 = self._make_layer(BasicBlock, width, 2)
        self.layer2 = self._make_layer(BasicBlock, 2 * width, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, 4 * width, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, 8 * width, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def build_model(name: str, num_classes: int, width: int = 64) -> ScalableResNet18:
    """A ResNet-18 (``resnet18`` | ``resnet18_cifar``) with ``num_classes`` outputs; default init from torch's RNG."""
    if name not in MODEL_NAMES:
        raise ConfigError(f"model.name={name!r} must be one of {list(MODEL_NAMES)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} must be an integer >= 1")
    validate_width(width)
    return ScalableResNet18(num_classes, width, stem="imagenet" if name == "resnet18" else "cifar")


def validate_width(width: int, batch: int = 128) -> None:
    """model.width is an integer >= 1 whose ResNet-18 (fp32 weights, gradients, momentum, 11.2M x (width/64)^2
    parameters) and a training batch's activations (~29k x width values per 32x32 image with the CIFAR stem,
    kept for backward) fit in memory (ptft.limits): ConfigError naming the key before anything is built."""
    from ptft.limits import check_memory

    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ConfigError(f"model.width={width!r} must be an integer >= 1 (torchvision ResNet-18: 64)")
    params = 11.2e6 * (width / 64) ** 2
    check_memory(f"model.width={width} (a ResNet-18 of {params:.3g} parameters, batches of {batch} images)",
                 4.0 * (3 * params + 2 * batch * 29e3 * width), "lower model.width (torchvision ResNet-18: 64)")


def stage_of(module_name: str) -> str:
    """The stage (one of STAGES) a module or parameter name belongs to: conv1/bn1 -> 'stem'."""
    head = module_name.split(".", 1)[0]
    if head in ("conv1", "bn1"):
        return "stem"
    if head in STAGES:
        return head
    raise ConfigError(f"{module_name!r} belongs to no ResNet stage {list(STAGES)}")


def new_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """Replace ``model.fc`` by a freshly (default-)initialised ``nn.Linear`` with ``num_classes``
    outputs, on the old head's device and dtype; return the new head."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} must be an integer >= 1")
    old = model.fc
    if not isinstance(old, nn.Linear):
        raise ConfigError(f"model.fc is {type(old).__name__}, expected nn.Linear")
    head = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    head.to(device=old.weight.device, dtype=old.weight.dtype)
    model.fc = head
    return head


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def output_shape(model: nn.Module, batch: int = 2) -> torch.Size:
    """Shape of the logits on a (batch, 3, 32, 32) input (a smoke check)."""
    was = model.training
    model.eval()
    out = model(torch.zeros(batch, 3, 32, 32, device=next(model.parameters()).device))
    model.train(was)
    return out.shape
