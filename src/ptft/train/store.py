"""Run store: one directory per run, named by a hash of the resolved scientific config.

Layout of a run directory `<root>/<stage>/<hash>/`:
    config.yaml     the resolved config of the job that made it (all keys, scientific or not)
    metrics.jsonl   one JSON object per logged step
    checkpoint.pt   the trainer's last checkpoint (tensors and plain containers only)
    result.json     written once, atomically, when the run ends: its presence means "finished"
Every write goes to a temporary file in the same directory and is renamed into place.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import filelock

RESULT, CONFIG, CHECKPOINT, METRICS = "result.json", "config.yaml", "checkpoint.pt", "metrics.jsonl"


def config_hash(sci: dict[str, Any], length: int = 12) -> str:
    """Stable hash of a (nested, JSON-able) scientific config; key order does not matter."""
    text = json.dumps(sci, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")


class RunDir:
    """A run's directory in the store. Creating the object creates nothing on disk."""

    def __init__(self, root: str | Path, stage: str, sci: dict[str, Any]):
        self.sci = sci
        self.hash = config_hash(sci)
        self.path = Path(root) / stage / self.hash

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def finished(self) -> bool:
        return self.file(RESULT).exists()

    def load_result(self) -> dict[str, Any]:
        return json.loads(self.file(RESULT).read_text())

    def write_result(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.file(RESULT), result)

    def write_config(self, yaml_text: str) -> None:
        atomic_write_text(self.file(CONFIG), yaml_text)

    def clear_result(self) -> None:
        """For force=true: forget the stored result and checkpoint, keep nothing stale."""
        for name in (RESULT, CHECKPOINT, METRICS):
            self.file(name).unlink(missing_ok=True)

    def lock(self, timeout: float = -1) -> filelock.FileLock:
        """An inter-process lock on this run (a sibling `.lock` file, not inside the run dir)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return filelock.FileLock(str(self.path) + ".lock", timeout=timeout)
