"""Logging facade shared by every pipeline.

* metrics.jsonl in the run directory, always: one JSON object per `log()` call, `step` included.
  On resume, lines past the checkpoint's step are dropped, so a killed-and-resumed run has the same
  file as an uninterrupted one; damaged lines (a write cut short) are dropped too, the damaged file
  kept as metrics.jsonl.damaged-<n>, and the rewrite is atomic.
* wandb, mode online | offline | disabled. Offline is the default and is set through the WANDB_MODE
  environment variable (passing mode="offline" to init alone still makes a DNS lookup). An explicit
  WANDB_MODE in the environment wins over the config default. One wandb run per job: group =
  experiment, job_type = stage, name = the command-line overrides, config = the resolved dict. The
  wandb run id is kept in the run directory (wandb_id.txt; a damaged one is moved aside and replaced)
  so a resumed job continues the same wandb run.
  `finish()` is always called (context manager).
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from ptft import ConfigError
from ptft.train.store import atomic_write_bytes, atomic_write_text, move_aside

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


def _step_of(line: bytes) -> Optional[int]:
    """The step of a metrics.jsonl row, or None if the row is damaged (not JSON, not an object with an
    integer step)."""
    try:
        row = json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return None
    step = row.get("step") if isinstance(row, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


_WANDB_ID = re.compile(r"[0-9a-z]{1,64}")


def wandb_run_id(run_dir: Path) -> str:
    """The wandb run id kept in <run_dir>/wandb_id.txt (a resumed job continues the same wandb run); a new
    one if absent. A damaged file (not a short lowercase id, undecodable, a directory) is moved aside with
    one line and replaced by a new id."""
    id_file = Path(run_dir) / "wandb_id.txt"
    if os.path.lexists(id_file):
        try:
            run_id = id_file.read_bytes().decode("ascii").strip()
            if _WANDB_ID.fullmatch(run_id):
                return run_id
            why = "not a wandb run id"
        except (OSError, UnicodeDecodeError) as e:
            why = type(e).__name__
        print(f"[ptft] {id_file} is damaged ({why}); moved to {move_aside(id_file).name}; this job starts a "
              f"new wandb run", flush=True)
    run_id = uuid.uuid4().hex[:8]
    atomic_write_text(id_file, run_id)
    return run_id


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

            run_id = wandb_run_id(self.run_dir)
            self._wandb = wandb.init(
                project=wandb_cfg.project, entity=wandb_cfg.entity, group=wandb_cfg.group or group,
                job_type=stage, name=name, config=config, tags=wandb_cfg.tags, dir=str(self.run_dir),
                id=run_id, resume="allow", reinit="create_new",
                settings=wandb.Settings(console="off", x_disable_stats=True),
            )

    def _truncate(self, resume_step: Optional[int]) -> None:
        """A fresh run starts an empty metrics.jsonl; a resumed one keeps the rows up to its checkpoint's
        step. Damaged rows (a write cut short by a kill or a full disk, garbage) are dropped, the damaged
        file kept aside; the rewrite is atomic, so a failure leaves the file as it was."""
        path = self.metrics_path
        if not os.path.lexists(path):
            return
        if resume_step is None or not path.is_file():
            if path.is_file() or path.is_symlink():
                path.unlink()
            else:  # a directory (or other non-file) in its place
                print(f"[ptft] {path} is not a file; moved to {move_aside(path).name}", flush=True)
            return
        try:
            lines = path.read_bytes().splitlines()
        except OSError as e:
            print(f"[ptft] {path} is unreadable ({e.strerror}); moved to {move_aside(path).name}", flush=True)
            return
        keep, bad = [], 0
        for ln in lines:
            step = _step_of(ln)
            if step is None:
                bad += ln.strip() != b""
            elif step <= resume_step:
                keep.append(ln)
        text = b"".join(ln + b"\n" for ln in keep)
        if bad:
            clean = path.with_name(f".{path.name}.clean.tmp")
            atomic_write_bytes(clean, text)  # first, so that a full disk leaves everything as it was
            print(f"[ptft] {path}: {bad} damaged line(s) (a write cut short, or garbage) dropped; the file as it "
                  f"was is {move_aside(path).name}", flush=True)
            os.replace(clean, path)
        else:
            atomic_write_bytes(path, text)

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
