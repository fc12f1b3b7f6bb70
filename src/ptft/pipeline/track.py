"""What a track provides, and the registry the tracks plug into.

A track (vision, arithmetic, DLN, or one from another installed distribution) is a :class:`Track` object
named as an entry point of the group ``ptft.tracks`` in its distribution's pyproject.toml::

    [project.entry-points."ptft.tracks"]
    vision = "ptft.vision.track:TRACK"

The registry loads every entry point on first use (:func:`tracks`), in whatever process asks: a console
script, a test, a Hydra multirun job or a submitit job that unpickled a pipeline function. So the pipeline
imports no track, and a new track plugs in without editing it. :func:`register_track` adds one by hand
(a notebook, a test).

A track provides:

- ``schemas``: its Hydra structured configs, ``{(group, option): node}``, registered in the ConfigStore
  before a pipeline config is composed (:func:`register_schemas`). The PT->FT pipeline's options:
  group ``schema/data`` (the `data` node's type, which picks the track: ``data=cifar100|svhn`` -> vision,
  ``data=modarith`` -> arithmetic) and group ``model`` (``model=resnet18|...``);
- ``metrics``: the names its task's ``evaluate()`` returns (a ``train.target_metric`` is checked against them
  before any compute; empty: not checked);
- ``added_keys``: dotted config keys added after runs were stored, with their defaults (a run made before
  a key existed and one at its default are the same configuration: ``ptft-aggregate`` shows neither);
- for ``ptft-pretrain`` / ``ptft-finetune`` (a track with a ``schema/data`` schema):

  - ``validate(cfg, stage)``: every data and model check that needs no compute;
  - ``probe(model_cfg)``: a tiny model with the real parameter names (layer patterns are checked on it);
    its model declares named stages for the knobs (ptft.pipeline.knobs);
  - ``data_identity(data, stage)``: the scientific data keys of a pretraining / fine-tuning run;
  - ``load(data, stage)``: the four splits as a :class:`TaskData`;
  - ``build(model_cfg, n_out)``: a freshly initialised model with named stages;
  - ``make_task(net, train, test, *, y_orig, tcfg, seed, device, runtime)``: a trainer Task;
  - ``batch_size(tcfg, n)``: the minibatch of a fine-tuning with n examples (None: full batch);
  - ``prepare(x)``: stored inputs -> model inputs (e.g. uint8 images -> normalised floats).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Tuple

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


class Track:
    """Base of a track: subclass it, set what applies (see the module docstring) and name an instance as an
    entry point of the group ``ptft.tracks``. The defaults provide nothing."""

    name: str = ""
    schemas: Mapping[Tuple[str, str], Any] = {}
    added_keys: Mapping[str, Any] = {}
    metrics: Tuple[str, ...] = ()

    @property
    def data_schema(self) -> Optional[type]:
        """The `data` node's type that picks this track in the PT->FT pipeline (None: not served by it)."""
        types = [_type(n) for (group, _), n in self.schemas.items() if group == "schema/data"]
        return types[0] if types else None

    @property
    def model_names(self) -> List[str]:
        return [name for group, name in self.schemas if group == "model"]

    @property
    def model_schemas(self) -> Tuple[type, ...]:
        return tuple({_type(n) for (group, _), n in self.schemas.items() if group == "model"})

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _type(node: Any) -> type:
    return node if isinstance(node, type) else type(node)


GROUP = "ptft.tracks"
_TRACKS: dict[str, Track] = {}
_LOADED = False


def register_track(track: Track) -> None:
    """Add a track to the registry (entry points do this on first use)."""
    if not isinstance(track, Track) or not track.name:
        raise TypeError(f"{track!r} is not a named ptft.pipeline.track.Track")
    _TRACKS[track.name] = track


def tracks() -> dict[str, Track]:
    """Every track: those registered by hand and the entry points of the group ``ptft.tracks`` (loaded once)."""
    global _LOADED
    if not _LOADED:
        from importlib.metadata import entry_points

        for ep in entry_points(group=GROUP):
            if ep.name not in _TRACKS:  # the same distribution seen twice on sys.path: the first wins
                track = ep.load()
                if not isinstance(track, Track) or track.name != ep.name:
                    raise TypeError(f"entry point {ep.name} = {ep.value} of group {GROUP} is not a Track named "
                                    f"{ep.name!r}")
                register_track(track)
        _LOADED = True
    return _TRACKS


def register_schemas() -> None:
    """Put every track's structured configs in Hydra's ConfigStore (before a pipeline config is composed)."""
    from ptft import app

    for track in tracks().values():
        for (group, name), node in track.schemas.items():
            app.register(name, node, group=group)


def added_keys() -> dict[str, Any]:
    """{dotted config key: default} of the keys the tracks added after runs were stored."""
    return {k: v for t in tracks().values() for k, v in t.added_keys.items()}


def track_of(cfg: Any) -> Track:
    """The track serving cfg.data (its structured-config type), checked against cfg.model."""
    from omegaconf import OmegaConf

    dtype = OmegaConf.get_type(cfg.data)
    served = {t.data_schema: t for t in tracks().values() if t.data_schema is not None}
    track = served.get(dtype)
    if track is None:
        if not served:
            raise ConfigError(f"no PT->FT track is installed (entry points of group {GROUP}); reinstall ptft: "
                              f"pip install -e .")
        names = ", ".join(sorted(n for t in served.values() for (g, n) in t.schemas if g == "schema/data"))
        raise ConfigError(f"data has no known type ({dtype}); choose a data group option (data=<name>) built on "
                          f"a track's data schema ({names})")
    if OmegaConf.get_type(cfg.model) not in track.model_schemas:
        raise ConfigError(f"model.name={cfg.model.name!r} does not fit data={cfg.data.name}: "
                          f"use model={', '.join(track.model_names)}")
    return track
