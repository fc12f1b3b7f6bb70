"""A small synthetic image set written in the EXACT on-disk formats of CIFAR-100 and SVHN.

CIFAR-100 and SVHN cannot be downloaded on every machine (CI, clusters without internet). The
console script ``ptft-data synthetic`` writes a stand-in that torchvision's own ``CIFAR100`` /
``SVHN`` classes read unchanged:

- CIFAR-100: ``<root>/cifar-100-python/{train,test,meta}``, Python-2 pickles (protocol 2, keys and
  strings stored as Python-2 ``str``, i.e. ``SHORT_BINSTRING``/``BINSTRING`` opcodes, the array as
  ``numpy.core.multiarray._reconstruct``), so ``pickle.load(f, encoding="latin1")`` gives ``str``
  keys and ``encoding="bytes"`` gives ``b"data"`` keys, exactly as with the real files.
  train/test hold ``data`` (N x 3072 uint8, R, G, B planes), ``fine_labels``, ``coarse_labels``,
  ``filenames``, ``batch_label``; meta holds ``fine_label_names`` and ``coarse_label_names``.
- SVHN: ``<root>/{train,test}_32x32.mat`` (scipy.io.savemat) with ``X`` (32, 32, 3, N) uint8 and
  ``y`` (N, 1) uint8 in 1..10, where 10 is the digit 0.

Class structure: a shared bank of smooth colour patterns ("features"). Every class is a signed sum
of ``k`` features (a unique subset per class); an image is that sum with per-image amplitude jitter,
a random translation and pixel noise. Classes share features (and CIFAR coarse groups of five
classes share one group feature), so pretraining on some classes learns features that the
fine-tuning classes reuse. ``--distractors D`` adds D random class-independent bank features with
random signs to every image, a nuisance that makes few-shot fine-tuning harder.

Measured (CIFAR-100 format, 50/20 images per class, resnet18_cifar width 8, 8 PT epochs SGD lr 0.05
on 98 classes, then binary FT n=10 with a new head, 6 sample seeds; FT test accuracy
pretrained vs from scratch): D=0: 1.00 vs 0.81 (ceiling); D=1: 0.95 vs 0.70; D=3: 0.87 vs 0.57.
Pretraining helps in all three; D>=1 leaves room below the ceiling for the rescaling effects.

The generator writes ``<root>/PTFT_SYNTHETIC.json`` LAST, recording each file's sha256. The loader
(:mod:`ptft.vision.data`) skips torchvision's MD5 check only for files listed there, and verifies
their sha256 instead. Real data is never written over: a target file that is not listed in the
marker stops the generator.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import sys
import tempfile
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ptft import ArgumentParser, ConfigError

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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_marker(root: Path) -> dict[str, Any]:
    """The marker's content (``{"formats": {fmt: {"files": {relpath: sha256}, ...}}}``), or {}."""
    path = Path(root) / MARKER
    if not path.is_file():
        return {}
    try:
        marker = json.loads(path.read_text())
        assert isinstance(marker.get("formats"), dict)
        return marker
    except (ValueError, AssertionError) as e:
        raise ConfigError(f"{path} is not a valid ptft synthetic-data marker ({e}); delete it and "
                          f"regenerate with `ptft-data synthetic --root {root} --format ...`") from e


# ----------------------------------------------------------------------------------------------
# Python-2 pickles, as the original CIFAR files
# ----------------------------------------------------------------------------------------------
class _Global:
    """A reference ``module.name`` written verbatim as a GLOBAL opcode (never called here)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self) -> None:  # save_reduce requires a callable
        raise TypeError("placeholder")


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol-2 pickler that writes ``str`` as Python-2 byte strings and ndarrays as Python 2 numpy did."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_py2str(self, obj: str) -> None:
        b = obj.encode("latin1")
        if len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + len(b).to_bytes(4, "little") + b)
        self.memoize(obj)

    def _save_global(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))

    dispatch[str] = _save_py2str
    dispatch[_Global] = _save_global

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            state = (1, obj.shape, obj.dtype, False, obj.tobytes().decode("latin1"))
            return (_Global("numpy.core.multiarray", "_reconstruct"),
                    (_Global("numpy", "ndarray"), (0,), "b"), state)
        if isinstance(obj, np.dtype):
            return (_Global("numpy", "dtype"), (obj.str[1:], 0, 1),
                    (3, "|" if obj.itemsize == 1 else "<", None, None, None, -1, -1, 0))
        return NotImplemented


def dumps_py2(obj: Any) -> bytes:
    """Serialise dicts/lists/str/int/uint8 arrays as a Python-2 ``cPickle.dump(obj, f, 2)`` would."""
    import io

    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------
def feature_bank(n_features: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """``(F, 3, size, size)`` smooth colour patterns with unit std: two random low-frequency
    plane waves with random colours plus one coloured Gaussian blob each."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    bank = np.zeros((n_features, 3, size, size))
    for f in range(n_features):
        for _ in range(2):
            k = rng.uniform(0.5, 3.0, size=2) * rng.choice([-1, 1], size=2)
            wave = np.cos(2 * np.pi * (k[0] * xx + k[1] * yy) + rng.uniform(0, 2 * np.pi))
            bank[f] += rng.normal(size=3)[:, None, None] * wave
        cy, cx = rng.uniform(0.2, 0.8, size=2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(0.08, 0.2) ** 2))
        bank[f] += 2 * rng.normal(size=3)[:, None, None] * blob
        bank[f] = (bank[f] - bank[f].mean()) / bank[f].std()
    return bank


def class_recipes(n_classes: int, n_features: int, k: int, group_size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unique feature subsets ``(C, k)`` and signed weights ``(C, k)``; classes ``g*group_size ..``
    share feature ``g`` (their coarse group's feature) as first element."""
    n_groups = -(-n_classes // group_size)
    if n_groups > n_features:
        raise ConfigError(f"{n_classes} classes in groups of {group_size} need >= {n_groups} features")
    feats = np.zeros((n_classes, k), dtype=np.int64)
    used: set[tuple[int, ...]] = set()
    for c in range(n_classes):
        g = c // group_size
        others = [f for f in range(n_features) if f != g]
        options = [s for s in combinations(others, k - 1) if (g, *s) not in used]
        chosen = options[rng.integers(len(options))]
        used.add((g, *chosen))
        feats[c] = (g, *chosen)
    weights = rng.uniform(0.6, 1.0, size=(n_classes, k)) * rng.choice([-1.0, 1.0], size=(n_classes, k))
    return feats, weights


def render(labels: np.ndarray, bank: np.ndarray, feats: np.ndarray, weights: np.ndarray,
           rng: np.random.Generator, noise: float = 1.0, max_shift: int = 8, distractors: int = 0) -> np.ndarray:
    """uint8 images ``(N, 3, 32, 32)`` of the given classes: per-image feature amplitudes in
    [0.6, 1.4] x the class weights, a random circular shift of up to ``max_shift`` pixels, Gaussian
    pixel noise. The shift is what makes the task hard for a pixel-space classifier (nearest class
    mean, 100 classes: 0.88 at max_shift=3, 0.43 at 8); a convnet with global pooling is meant to
    absorb it, and the features it learns on PT classes transfer to the FT classes."""
    n = len(labels)
    amp = rng.uniform(0.6, 1.4, size=(n, feats.shape[1])) * weights[labels]
    x = np.einsum("nk,nkchw->nchw", amp, bank[feats[labels]])
    if distractors:  # class-independent features with random signs: nuisance a readout must ignore
        d_idx = rng.integers(len(bank), size=(n, distractors))
        d_amp = rng.uniform(0.6, 1.4, size=(n, distractors)) * rng.choice([-1.0, 1.0], size=(n, distractors))
        x += np.einsum("nk,nkchw->nchw", d_amp, bank[d_idx])
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    for i in range(n):
        x[i] = np.roll(x[i], tuple(shifts[i]), axis=(1, 2))
    x += noise * rng.normal(size=x.shape)
    return np.clip(np.rint(128 + 40 * x), 0, 255).astype(np.uint8)


def make_images(n_classes: int, n_train: int, n_test: int, seed: int, group_size: int,
                noise: float = 1.0, max_shift: int = 8, distractors: int = 0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test), classes balanced, order shuffled."""
    rng = np.random.default_rng(seed)
    n_features = max(12, -(-n_classes // group_size) + 4)
    bank = feature_bank(n_features, rng)
    feats, weights = class_recipes(n_classes, n_features, 3, group_size, rng)
    out = []
    for n in (n_train, n_test):
        y = rng.permutation(np.repeat(np.arange(n_classes), n))
        out += [render(y, bank, feats, weights, rng, noise, max_shift, distractors), y]
    return out[0], out[1], out[2], out[3]


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
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


def _write_cifar100(root: Path, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray,
                    group_size: int) -> None:
    fine_names = [f"synthetic_class_{c:02d}" for c in range(100)]
    coarse_names = [f"synthetic_group_{g:02d}" for g in range(-(-100 // group_size))]
    for name, x, y, label in (("train", xtr, ytr, "training batch 1 of 1"),
                              ("test", xte, yte, "testing batch 1 of 1")):
        entry = {
            "filenames": [f"{fine_names[c]}_s_{i:06d}.png" for i, c in enumerate(y)],
            "batch_label": label,
            "fine_labels": [int(c) for c in y],
            "coarse_labels": [int(c) // group_size for c in y],
            "data": np.ascontiguousarray(x.reshape(len(x), 3 * 32 * 32)),
        }
        blob = dumps_py2(entry)
        _atomic_write(root / CIFAR_DIR / name, lambda p, b=blob: Path(p).write_bytes(b))
    meta = dumps_py2({"fine_label_names": fine_names, "coarse_label_names": coarse_names})
    _atomic_write(root / CIFAR_DIR / "meta", lambda p: Path(p).write_bytes(meta))


def _write_svhn(root: Path, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray) -> None:
    from scipy.io import savemat

    for name, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        mat = {"X": np.ascontiguousarray(x.transpose(2, 3, 1, 0)),  # (N,3,H,W) -> (H,W,3,N)
               "y": np.where(y == 0, 10, y).astype(np.uint8).reshape(-1, 1)}
        _atomic_write(root / f"{name}_32x32.mat", lambda p, m=mat: savemat(p, m, do_compression=False))


def generate(root: str | Path, fmt: str, n_train_per_class: int = 100, n_test_per_class: int = 20,
             seed: int = 0, noise: float = 1.0, max_shift: int = 8, distractors: int = 0) -> dict[str, str]:
    """Write a synthetic dataset in format ``fmt`` under ``root``; return {relpath: sha256}."""
    root = Path(root)
    files = dataset_files(fmt)
    for key, v in (("n_train_per_class", n_train_per_class), ("n_test_per_class", n_test_per_class)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"{key}={v!r} must be an integer >= 1")
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ConfigError(f"seed={seed!r} must be an integer in [0, 2**63 - 1]")
    if not (isinstance(noise, (int, float)) and 0 <= noise < float("inf")):
        raise ConfigError(f"noise={noise!r} must be a finite number >= 0")
    if not isinstance(max_shift, (int, np.integer)) or not 0 <= max_shift <= 16:
        raise ConfigError(f"max_shift={max_shift!r} must be an integer in 0..16")
    if not isinstance(distractors, (int, np.integer)) or not 0 <= distractors <= 16:
        raise ConfigError(f"distractors={distractors!r} must be an integer in 0..16")
    marker = read_marker(root)
    known = marker.get("formats", {}).get(fmt, {}).get("files", {})
    for rel in files:
        if (root / rel).exists() and rel not in known:
            raise ConfigError(f"{root / rel} exists and was not written by `ptft-data synthetic`: "
                              f"refusing to overwrite (possibly real data); choose another --root")
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--root {root} exists and is not a directory")
    group_size = 5 if fmt == "cifar100" else 1
    xtr, ytr, xte, yte = make_images(NUM_CLASSES[fmt], n_train_per_class, n_test_per_class, seed, group_size,
                                     noise, max_shift, distractors)
    # Forget the old entry first: a crash mid-write must not leave stale hashes that "verify".
    marker.setdefault("formats", {}).pop(fmt, None)
    if marker["formats"]:
        _atomic_write(root / MARKER, lambda p: Path(p).write_text(json.dumps(marker, indent=1)))
    elif (root / MARKER).exists():
        (root / MARKER).unlink()
    if fmt == "cifar100":
        _write_cifar100(root, xtr, ytr, xte, yte, group_size)
    else:
        _write_svhn(root, xtr, ytr, xte, yte)
    hashes = {rel: sha256_file(root / rel) for rel in files}
    marker["formats"][fmt] = {
        "files": hashes,
        "generator": "ptft-data synthetic",
        "seed": seed, "n_train_per_class": n_train_per_class, "n_test_per_class": n_test_per_class,
        "noise": noise, "max_shift": max_shift, "distractors": distractors,
    }
    _atomic_write(root / MARKER, lambda p: Path(p).write_text(json.dumps(marker, indent=1)))
    return hashes


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``ptft-data``."""
    parser = ArgumentParser(prog="ptft-data", description="ptft dataset utilities")
    sub = parser.add_subparsers(dest="command", required=True)
    syn = sub.add_parser("synthetic", help="write a synthetic dataset in the original CIFAR-100/SVHN file format")
    syn.add_argument("--root", required=True, help="dataset root (the value of data.root)")
    syn.add_argument("--format", required=True, choices=sorted(NUM_CLASSES))
    syn.add_argument("--n-train-per-class", type=int, default=100)
    syn.add_argument("--n-test-per-class", type=int, default=20)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--noise", type=float, default=1.0, help="pixel noise std, in feature std units")
    syn.add_argument("--max-shift", type=int, default=8, help="largest random translation in pixels")
    syn.add_argument("--distractors", type=int, default=0,
                     help="random class-independent features added to every image (harder fine-tuning)")
    args = parser.parse_args(argv)
    try:
        hashes = generate(args.root, args.format, args.n_train_per_class, args.n_test_per_class, args.seed,
                          args.noise, args.max_shift, args.distractors)
    except ConfigError as e:
        print(f"ptft-data: error: {e}", file=sys.stderr)
        return 2
    n = NUM_CLASSES[args.format]
    print(f"wrote synthetic {args.format} ({n} classes, {args.n_train_per_class}/{args.n_test_per_class} "
          f"train/test images per class) under {args.root}: {', '.join(hashes)}; "
          f"use it with data.name={args.format} data.root={args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
