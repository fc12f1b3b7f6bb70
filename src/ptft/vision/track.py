"""The vision track of the PT->FT pipeline: CIFAR-100 / SVHN class splits (ptft.vision.data) and
ResNet-18 variants (ptft.vision.models), trained by minibatch SGD on resident images (ptft.vision.task)."""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ptft import ConfigError
from ptft.pipeline.track import Split, TaskData, Track
from ptft.vision.data import DataConfig, load_task, normalize, validate_data_config


@dataclass
class ResNetConfig:
    """`model=resnet18` (torchvision, ImageNet stem, as LL) | `model=resnet18_cifar` (3x3 stem, no max-pool)."""

    name: str = "resnet18"
    width: int = 64         # channels of the stem and layer1 (torchvision: 64)


def data_root(data: Any) -> Path:
    """data.root as an absolute path (a relative root is relative to the launch directory)."""
    from ptft.app import launch_cwd

    root = Path(os.path.expanduser(str(data.root)))
    return root if root.is_absolute() else launch_cwd() / root


def data_config(data: Any) -> DataConfig:
    """A plain DataConfig with the root made absolute."""
    from ptft.pipeline.config import plain

    d = plain(data)
    d["root"] = str(data_root(data))
    return DataConfig(**d)


def data_fingerprint(data: Any) -> str:
    """What identifies the images: the recorded sha256s of a synthetic set, else 'torchvision'."""
    from ptft.vision.formats import read_marker

    fmt = read_marker(data_root(data)).get("formats", {}).get(str(data.name))
    if not fmt:
        return "torchvision"
    return "synthetic:" + hashlib.sha256(json.dumps(fmt["files"], sort_keys=True).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _probe(name: str) -> torch.nn.Module:
    from ptft.vision.models import build_model

    return build_model(name, 2, width=1)


class VisionTrack(Track):
    name = "vision"
    schemas = {("schema/data", "vision"): DataConfig,
               **{("model", m): ResNetConfig(name=m) for m in ("resnet18", "resnet18_cifar")}}
    metrics = ("test_acc", "test_loss")  # VisionTask.evaluate
    added_keys = {"data.ft_task": 0}

    def validate(self, cfg: Any, stage: str) -> None:
        validate_data_config(cfg.data)
        from ptft.vision.models import validate_width

        validate_width(cfg.model.width, max(t.batch_size or 128 for t in (cfg.train, cfg.pretrain.train)))
        for key in ("train", "pretrain.train"):
            t = cfg.pretrain.train if key == "pretrain.train" else cfg.train
            if t.max_epochs is None:
                raise ConfigError(f"{key}.max_epochs=null: a vision run is budgeted in epochs; set it (LL: 1000)")
        if cfg.data.ft_balanced and cfg.runs.n_ft is not None:
            k = len(cfg.data.ft_class_list) if cfg.data.ft_class_list is not None else cfg.data.ft_classes
            small = [n for n in cfg.runs.n_ft if n < k]
            if small:
                raise ConfigError(f"runs.n_ft={list(cfg.runs.n_ft)} has values {small} below the {k} FT classes "
                                  f"with data.ft_balanced=true; raise them or set data.ft_balanced=false")

    def probe(self, model: Any) -> torch.nn.Module:
        """A width-1 model with the real module names, to check layer patterns before any compute."""
        if model.name not in self.model_names:
            raise ConfigError(f"model.name={model.name!r} must be one of {self.model_names} (model=<name>)")
        return _probe(model.name)

    def data_identity(self, data: Any, stage: str) -> dict:
        from ptft.pipeline.config import plain

        d = plain(data)
        drop = ("root", "download", "n_ft", "ft_balanced") if stage == "pretrain" else ("root", "download")
        for k in drop:
            d.pop(k)
        if stage == "pretrain" or d.get("ft_task", 0) == 0:
            d.pop("ft_task", None)  # PT never depends on it (ptft.vision.data); at 0 a run keeps its former hash
        if stage == "pretrain" and d["n_pt"] is None:
            d.pop("sample_seed")  # draws only FT images then
        d["fingerprint"] = data_fingerprint(data)
        return d

    def load(self, data: Any, stage: str) -> TaskData:
        dc = data_config(data)
        if stage == "pretrain":
            dc.n_ft, dc.ft_balanced = None, False  # FT-only keys: irrelevant to pretraining
        return load_task(dc)

    def build(self, model: Any, n_out: int) -> torch.nn.Module:
        from ptft.vision.models import build_model

        return build_model(model.name, n_out, model.width)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x)

    def batch_size(self, tcfg: Any, n: int) -> Optional[int]:
        return tcfg.batch_size or min(n, 128)

    def make_task(self, net: torch.nn.Module, train: Split, test: Split, *, y_orig: bool, tcfg: Any, seed: int,
                  device: torch.device, runtime: Any) -> Any:
        from ptft.vision.task import VisionTask

        y_tr, y_te = (train.y_orig, test.y_orig) if y_orig else (train.y, test.y)
        return VisionTask(net, train.x, y_tr, test.x, y_te, batch_size=tcfg.batch_size, seed=seed, device=device,
                          amp=runtime.amp, channels_last=runtime.channels_last, augment=tcfg.augment,
                          compile=runtime.compile,
                          eval_batch=runtime.eval_batch)


TRACK = VisionTrack()  # entry point ptft.tracks: vision (pyproject.toml)
