"""The on-disk formats of the image sets and the registry of written files, shared by the loader
(:mod:`ptft.vision.data`) and the writers (:mod:`ptft.vision.synthetic`, :mod:`ptft.vision.digits`).

- CIFAR-100: ``<root>/cifar-100-python/{train,test,meta}``; SVHN: ``<root>/{train,test}_32x32.mat``
  (``X`` (32, 32, 3, N) uint8, ``y`` (N, 1) uint8 in 1..10, 10 for the digit 0).
- ``<root>/PTFT_SYNTHETIC.json`` (the marker), written LAST by :func:`write_registered`, records the
  sha256 of every file that ``ptft-data`` wrote; the loader verifies those instead of torchvision's MD5.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ptft import ConfigError
from ptft.train.store import sha256_file

MARKER = "PTFT_SYNTHETIC.json"
NUM_CLASSES = {"cifar100": 100, "svhn": 10}
CIFAR_DIR = "cifar-100-python"


def dataset_files(fmt: str) -> list[str]:
    """Paths (relative to the root) of the files of a dataset in format ``fmt``."""
    if fmt == "cifar100":
        return [f"{CIFAR_DIR}/train", f"{CIFAR_DIR}/test", f"{CIFAR_DIR}/meta"]
    if fmt == "svhn":
        return ["train_32x32.mat", "test_32x32.mat"]
    raise ConfigError(f"format={fmt!r} must be one of {sorted(NUM_CLASSES)}")


def read_marker(root: Path) -> dict[str, Any]:
    """The marker's content (``{"formats": {fmt: {"files": {relpath: sha256}, ...}}}``), or {}."""
    path = Path(root) / MARKER
    if not path.is_file():
        return {}
    try:
        marker = json.loads(path.read_bytes())
        formats = marker.get("formats") if isinstance(marker, dict) else None
        if not isinstance(formats, dict):
            raise ValueError("no 'formats' object")
        for fmt, entry in formats.items():
            files = entry.get("files") if isinstance(entry, dict) else None
            if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
                raise ValueError(f"formats.{fmt} has no 'files' object of sha256s")
        return marker
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is not a valid ptft synthetic-data marker ({type(e).__name__}: {e}); delete it "
                          f"and regenerate with `ptft-data synthetic --root {root} --format ...`") from None


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; datasets are shared read-only files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_svhn(root: Path, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray) -> None:
    from scipy.io import savemat

    for name, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        mat = {"X": np.ascontiguousarray(x.transpose(2, 3, 1, 0)),  # (N,3,H,W) -> (H,W,3,N)
               "y": np.where(y == 0, 10, y).astype(np.uint8).reshape(-1, 1)}
        _atomic_write(root / f"{name}_32x32.mat", lambda p, m=mat: savemat(p, m, do_compression=False))


def write_registered(root: str | Path, fmt: str, write: Callable[[], None], info: dict[str, Any]) -> dict[str, str]:
    """Write the files of format ``fmt`` under ``root`` with ``write()`` and record their sha256s (plus
    ``info``) in the marker, which is written last; return {relpath: sha256}. Refuses to overwrite a
    file the marker does not list (possibly real data)."""
    root = Path(root)
    files = dataset_files(fmt)
    marker = read_marker(root)
    known = marker.get("formats", {}).get(fmt, {}).get("files", {})
    for rel in files:
        if (root / rel).exists() and rel not in known:
            raise ConfigError(f"{root / rel} exists and was not written by `ptft-data`: "
                              f"refusing to overwrite (possibly real data); choose another --root")
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--root {root} exists and is not a directory")
    # Forget the old entry first: a crash mid-write must not leave stale hashes that "verify".
    marker.setdefault("formats", {}).pop(fmt, None)
    if marker["formats"]:
        _atomic_write(root / MARKER, lambda p: Path(p).write_text(json.dumps(marker, indent=1)))
    elif (root / MARKER).exists():
        (root / MARKER).unlink()
    write()
    hashes = {rel: sha256_file(root / rel) for rel in files}
    marker["formats"][fmt] = {"files": hashes, **info}
    _atomic_write(root / MARKER, lambda p: Path(p).write_text(json.dumps(marker, indent=1)))
    return hashes
