"""The DLN track in the track registry (ptft.pipeline.track, entry point ``ptft.tracks: dln``).

``ptft-dln`` is its own app (ptft.dln.cli, with its own schema and run store layout), so the track provides
only what the other layers ask of every track: the config keys added after runs were stored, with their
defaults (``ptft-aggregate`` shows no column for a key at its default, as the run identity leaves it out).
"""
from __future__ import annotations

from dataclasses import fields

from ptft.dln.config import NEW_DLN_KEYS, PTTrainConfig
from ptft.pipeline.track import Track


class DLNTrack(Track):
    name = "dln"
    added_keys = {**{f"dln.{k}": v for k, v in NEW_DLN_KEYS.items()},
                  **{f"pt_train.{f.name}": None for f in fields(PTTrainConfig)}}  # null: PT trains as `train`


TRACK = DLNTrack()  # entry point ptft.tracks: dln (pyproject.toml)
