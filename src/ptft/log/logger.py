"""Logging facade shared by every pipeline.

* metrics.jsonl in the run directory, always: one JSON object per `log()` call, `step` included.
  On resume, lines past the checkpoint's step are dropped, so a killed-and-resumed run has the same
  file as an uninterrupted one.
* wandb, mode online | offline | disabled. Offline is the default and is set through the WANDB_MODE
  environment variable (passing mode="offline" to init alone still makes a DNS lookup). An explicit
  WANDB_MODE in the environment wins over the config default. One wandb run per job: group =
  experiment, job_type = stage, name = the command-line overrides, config = the resolved dict. The
  wandb run id is kept in the run directory so a resumed job continues the same wandb run.
  `finish()` is always called (context manager).
"""
from __future__ import annotations

import json
import uuid
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from ptft import ConfigError

WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class WandbConfig:
    mode: Optional[str] = None  # None: $WANDB_MODE if set, else offline
    project: str = "ptft"
    entity: Optional[str] = None
    group: Optional[str] = None  # None: the experiment name
    tags: Optional[list] = None


def resolve_mode(mode: Optional[str]) -> str:
    mode = mode or os.environ.get("WANDB_MODE") or "offline"
    if mode == "dryrun":
        mode = "offline"
    if mode not in WANDB_MODES:
        raise ConfigError(f"wandb.mode={mode!r} must be one of {', '.join(WANDB_MODES)}")
    return mode


def interactive() -> bool:
    """Progress bars only on a terminal and not inside a SLURM batch job."""
    in_batch = bool(os.environ.get("SLURM_JOB_ID")) and os.environ.get("SLURM_JOB_NAME") not in ("bash", "sh", "zsh")
    return sys.stderr.isatty() and not in_batch


def progress(iterable: Optional[Iterable] = None, **kw: Any):
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not interactive(), dynamic_ncols=True, **kw)


def _clean(v: Any) -> Any:
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


class Logger:
    def __init__(self, run_dir: Path, config: dict[str, Any], wandb_cfg: WandbConfig, *, stage: str,
                 group: str, name: str, resume_step: Optional[int] = None):
        self.mode = resolve_mode(wandb_cfg.mode)  # before anything is written
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._truncate(resume_step)
        self._fh = open(self.metrics_path, "a")
        self._wandb = None
        if self.mode != "disabled":
            os.environ["WANDB_MODE"] = self.mode
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            id_file = self.run_dir / "wandb_id.txt"
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
            id_file.write_text(run_id)
            self._wandb = wandb.init(
                project=wandb_cfg.project, entity=wandb_cfg.entity, group=wandb_cfg.group or group,
                job_type=stage, name=name, config=config, tags=wandb_cfg.tags, dir=str(self.run_dir),
                id=run_id, resume="allow", reinit="create_new",
                settings=wandb.Settings(console="off", x_disable_stats=True),
            )

    def _truncate(self, resume_step: Optional[int]) -> None:
        if not self.metrics_path.exists():
            return
        if resume_step is None:
            self.metrics_path.unlink()
            return
        keep = [ln for ln in self.metrics_path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", -1) <= resume_step]
        self.metrics_path.write_text("".join(ln + "\n" for ln in keep))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"},
                            step=int(step))

    def summary(self, values: dict[str, Any]) -> None:
        if self._wandb is not None:
            for k, v in values.items():
                v = _clean(v)
                if isinstance(v, (int, float, str)):
                    self._wandb.summary[k] = v

    def finish(self, exit_code: int = 0) -> None:
        if not self._fh.closed:
            self._fh.close()
        if self._wandb is not None:
            self._wandb.finish(exit_code=exit_code)
            self._wandb = None

    def __enter__(self) -> "Logger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)
