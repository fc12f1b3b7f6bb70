"""The modular-arithmetic track of the PT->FT pipeline (data=modarith, model=transformer)."""
from __future__ import annotations

from typing import Any, Optional

import torch

from ptft import ConfigError
from ptft.arith import data as D
from ptft.arith.model import TransformerConfig, build_model, check_size, validate as validate_model
from ptft.arith.task import ArithTask
from ptft.pipeline.track import Split, TaskData, Track


class ArithTrack(Track):
    name = "arith"
    schemas = {("schema/data", "modarith"): D.ModArithConfig, ("model", "transformer"): TransformerConfig}
    metrics = ("test_acc", "test_loss", "train_acc", "train_loss_eval")  # ArithTask.evaluate

    def validate(self, cfg: Any, stage: str) -> None:
        D.validate(cfg.data, check_n_ft=cfg.runs.n_ft is None)
        validate_model(cfg.model)
        check_size(cfg.model, cfg.data.p, D.n_pt_train(cfg.data))  # full-batch PT activations
        for key in ("train", "pretrain.train"):
            t = cfg.pretrain.train if key == "pretrain.train" else cfg.train
            if t.batch_size is not None:
                raise ConfigError(f"{key}.batch_size={t.batch_size}: arithmetic trains full batch (null)")
            if t.augment:
                raise ConfigError(f"{key}.augment=true applies to images only")
        if cfg.runs.n_ft is not None:
            avail = D.n_pairs(cfg.data.ft_op, cfg.data.p) - 1
            big = [n for n in cfg.runs.n_ft if n > avail]
            if big:
                raise ConfigError(f"runs.n_ft={list(cfg.runs.n_ft)} has values {big} larger than the {avail} pairs "
                                  f"available to {cfg.data.ft_op} at p={cfg.data.p}")

    def probe(self, model: Any) -> torch.nn.Module:
        validate_model(model)
        return build_model(TransformerConfig(d_model=model.n_heads, n_heads=model.n_heads, d_mlp=1), 5, 3)

    def data_identity(self, data: Any, stage: str) -> dict:
        from ptft.pipeline.config import plain

        d = plain(data)
        if stage == "pretrain":
            for k in ("n_ft", "ft_op", "sample_seed"):
                d.pop(k)
        return d

    def load(self, data: Any, stage: str) -> TaskData:
        from ptft.pipeline.config import plain

        return D.load_task(D.ModArithConfig(**plain(data)))

    def build(self, model: Any, n_out: int, p: Optional[int] = None) -> torch.nn.Module:
        return build_model(model, d_vocab=n_out + len(D.OPS), n_out=n_out)

    def batch_size(self, tcfg: Any, n: int) -> Optional[int]:
        return None

    def make_task(self, net: torch.nn.Module, train: Split, test: Split, *, y_orig: bool, tcfg: Any, seed: int,
                  device: torch.device, runtime: Any) -> Any:
        return ArithTask(net, train.x, train.y, test.x, test.y, device=device)


TRACK = ArithTrack()  # entry point ptft.tracks: arith (pyproject.toml)
