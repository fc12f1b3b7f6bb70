"""What a PT->FT track plugs into the one pipeline (ptft.pipeline.main).

A track is chosen by the type of the `data` group's node (``data=cifar100|svhn`` -> vision,
``data=modarith`` -> arithmetic) and provides:

- ``validate(cfg)``: every data and model check that needs no compute;
- ``probe(model_cfg)``: a tiny model with the real parameter names (layer patterns are checked on it);
- ``data_identity(data, stage)``: the scientific data keys of a pretraining / fine-tuning run;
- ``load(data)``: the four splits as a :class:`TaskData`;
- ``build(model_cfg, n_out)``: a freshly initialised model with named stages (see ptft.pipeline.knobs);
- ``make_task(net, train, test, tcfg, seed, device, runtime)``: a trainer Task;
- ``batch_size(tcfg, n)``: the minibatch of a fine-tuning with n examples (None: full batch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

import torch

from ptft import ConfigError


@dataclass
class Split:
    """One stage's examples: ``x`` (images uint8 (N, 3, 32, 32) or tokens (N, 3)), ``y`` int64 in 0..K-1,
    ``y_orig`` original labels."""

    x: torch.Tensor
    y: torch.Tensor
    y_orig: torch.Tensor
    classes: List[int]  # classes[k] = original label of stage label k

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class TaskData:
    pt_train: Split
    pt_test: Split
    ft_train: Split
    ft_test: Split
    num_classes_total: int  # outputs of the pretraining head (100 / 10 classes, p residues)
    pt_classes: List[int] = field(default_factory=list)
    ft_classes: List[int] = field(default_factory=list)


_TRACKS: dict[type, Any] = {}


def register_track(data_schema: type, track: Any) -> None:
    _TRACKS[data_schema] = track


def track_of(cfg: Any) -> Any:
    """The track serving cfg.data (its structured-config type), checked against cfg.model."""
    from omegaconf import OmegaConf

    import ptft.arith.track  # noqa: F401  (registers the tracks)
    import ptft.vision.track  # noqa: F401

    dtype = OmegaConf.get_type(cfg.data)
    track = _TRACKS.get(dtype)
    if track is None:
        raise ConfigError(f"data has no known type ({dtype}); choose a data group: data=cifar100, data=svhn "
                          f"or data=modarith")
    mtype = OmegaConf.get_type(cfg.model)
    if mtype not in track.model_schemas:
        names = ", ".join(track.model_names)
        raise ConfigError(f"model.name={cfg.model.name!r} does not fit data={cfg.data.name}: use model={names}")
    return track
