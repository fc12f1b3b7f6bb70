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

Ground truths (``--ground-truth``, docs/paper.md section 10): the default ``mixed`` is the construction
above, unchanged (same files for the same seed), with no designated FT classes. ``subset`` / ``new`` /
``dense`` designate the last ``--ft-classes`` classes (default 2: CIFAR 98, 99; SVHN 8, 9) as FT
classes built from a small subset of the PT classes' features / from bank features no PT class uses /
from half of the PT features (see :func:`ground_truth_recipes`); the PT images are the same for all
three. The marker records the ground truth, ``ft_class_list`` and every class's features and weights;
``ptft-data describe --root DIR`` prints them.

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
import pickle
import sys
from itertools import combinations
from math import comb
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ptft import ArgumentParser, ConfigError
from ptft.train.store import sha256_file  # noqa: F401  (tests use synthetic.sha256_file)
from ptft.vision.formats import (CIFAR_DIR, MARKER, NUM_CLASSES, _atomic_write, _write_svhn,
                                 dataset_files, read_marker, write_registered)

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


def n_bank_features(n_classes: int, group_size: int) -> int:
    """Bank features the classes are built from (today's rule: 4 more than the coarse groups, >= 12)."""
    return max(12, -(-n_classes // group_size) + 4)


def make_images(n_classes: int, n_train: int, n_test: int, seed: int, group_size: int,
                noise: float = 1.0, max_shift: int = 8, distractors: int = 0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test), classes balanced, order shuffled (ground truth ``mixed``)."""
    return make_dataset(n_classes, n_train, n_test, seed, group_size, noise, max_shift, distractors)[:4]


def make_dataset(n_classes: int, n_train: int, n_test: int, seed: int, group_size: int,
                 noise: float = 1.0, max_shift: int = 8, distractors: int = 0,
                 ground_truth: str = "mixed", ft_classes: int = 2
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(x_train, y_train, x_test, y_test, truth): images as :func:`make_images`; ``truth`` records the
    ground truth (see :func:`ground_truth_recipes`) and every class's features and signed weights."""
    if ground_truth == "mixed":  # today's generator, unchanged (same bytes for the same seed)
        rng = np.random.default_rng(seed)
        n_features = n_bank_features(n_classes, group_size)
        bank = feature_bank(n_features, rng)
        feats, weights = class_recipes(n_classes, n_features, 3, group_size, rng)
        out: list = []
        for n in (n_train, n_test):
            y = rng.permutation(np.repeat(np.arange(n_classes), n))
            out += [render(y, bank, feats, weights, rng, noise, max_shift, distractors), y]
        truth = {"ground_truth": "mixed", "ft_class_list": None, "bank_features": n_features,
                 "class_features": feats.tolist(), "class_weights": np.round(weights, 4).tolist()}
        return out[0], out[1], out[2], out[3], truth
    (bank, n_pt_features, pt_recipe, ft_recipe, truth) = ground_truth_recipes(
        ground_truth, n_classes, ft_classes, group_size, seed)
    n_pt = n_classes - ft_classes
    out = []
    for split, n in enumerate((n_train, n_test)):  # PT and FT images from separate streams: the PT
        xs, ys = [], []                             # images do not depend on the ground truth
        for stage, (offset, count, (feats, weights)) in enumerate(((0, n_pt, pt_recipe),
                                                                   (n_pt, ft_classes, ft_recipe))):
            rng = np.random.default_rng([seed, 2 + 2 * split + stage])
            y = np.repeat(np.arange(count), n)
            xs.append(render(y, bank, feats, weights, rng, noise, max_shift, distractors))
            ys.append(y + offset)
        perm = np.random.default_rng([seed, 6 + split]).permutation(n * n_classes)
        out += [np.concatenate(xs)[perm], np.concatenate(ys)[perm]]
    return out[0], out[1], out[2], out[3], truth


GROUND_TRUTHS = ("mixed", "subset", "new", "dense")


def ground_truth_recipes(kind: str, n_classes: int, ft_classes: int, group_size: int, seed: int
                         ) -> tuple[np.ndarray, int, tuple, tuple, dict[str, Any]]:
    """Feature bank and class recipes of a designed ground truth (docs/paper.md section 10).

    The FT classes are the LAST ``ft_classes`` labels; the PT classes (all others) are built as in
    ``mixed`` (coarse-group feature + 2 others, 3 per class) from the first ``n_bank_features`` bank
    features. The bank has ``p`` more features that no PT class uses (``p`` = the smallest pool >= 4
    with enough distinct 3-subsets for the FT classes). The FT classes then use:

    - ``subset``: distinct 3-subsets of a pool of ``p`` features drawn from those the PT classes use;
    - ``new``: distinct 3-subsets of the ``p`` features no PT class uses;
    - ``dense``: ``m = max(6, |PT features| // 2)`` PT features each (distinct random sets), weights
      scaled by sqrt(3 / m) so that an image has the energy of a 3-feature image.

    The bank, the PT recipes and the PT images are the same for all three (for a given seed); only
    the FT classes differ. Distractors (``--distractors``) are drawn from the whole bank, as in
    ``mixed``: with them the PT images also show the ``new`` features, as class-independent nuisance
    that pretraining learns to ignore (without them no PT image contains a ``new`` feature).
    Returns (bank, n_pt_features, (pt_feats, pt_weights), (ft_feats, ft_weights), truth).
    """
    if kind not in GROUND_TRUTHS[1:]:
        raise ConfigError(f"ground_truth={kind!r} must be one of {list(GROUND_TRUTHS)}")
    if not isinstance(ft_classes, (int, np.integer)) or not 2 <= ft_classes <= n_classes - 2:
        raise ConfigError(f"ft_classes={ft_classes!r} must be an integer in 2..{n_classes - 2} "
                          f"(>= 2 FT classes and >= 2 PT classes of {n_classes})")
    k, n_pt = 3, n_classes - ft_classes
    n_pt_features = n_bank_features(n_classes, group_size)
    p = 4
    while comb(p, k) < ft_classes:
        p += 1
    rng = np.random.default_rng([seed, 0])
    bank = feature_bank(n_pt_features + p, rng)
    pt_feats, pt_weights = class_recipes(n_pt, n_pt_features, k, group_size, rng)
    pt_used = sorted({int(f) for f in pt_feats.ravel()})
    rng = np.random.default_rng([seed, 1, GROUND_TRUTHS.index(kind)])
    if kind == "dense":
        m = min(max(2 * k, len(pt_used) // 2), len(pt_used))
        if comb(len(pt_used), m) < ft_classes:
            raise ConfigError(f"ground_truth=dense: the {n_pt} PT classes use only {len(pt_used)} features, too few "
                              f"for {ft_classes} distinct FT classes of {m} features; use fewer FT classes")
        sets: set[tuple[int, ...]] = set()
        while len(sets) < ft_classes:
            sets.add(tuple(sorted(int(f) for f in rng.choice(pt_used, m, replace=False))))
        ft_feats = np.array(sorted(sets), dtype=np.int64)[rng.permutation(ft_classes)]
        scale = np.sqrt(k / m)
    else:
        if kind == "subset" and p > len(pt_used):
            raise ConfigError(f"ground_truth=subset: the {n_pt} PT classes use only {len(pt_used)} features, fewer "
                              f"than the pool of {p} that {ft_classes} FT classes need; use fewer FT classes")
        pool = (rng.choice(pt_used, p, replace=False) if kind == "subset"
                else np.arange(n_pt_features, n_pt_features + p))
        options = list(combinations(sorted(int(f) for f in pool), k))
        ft_feats = np.array([options[i] for i in rng.choice(len(options), ft_classes, replace=False)],
                            dtype=np.int64)
        scale = 1.0
    ft_weights = scale * rng.uniform(0.6, 1.0, size=ft_feats.shape) * rng.choice([-1.0, 1.0], size=ft_feats.shape)
    ft_used = sorted({int(f) for f in ft_feats.ravel()})
    truth = {
        "ground_truth": kind,
        "ft_class_list": list(range(n_pt, n_classes)),
        "bank_features": n_pt_features + p,
        "pt_features": pt_used,
        "ft_features": ft_used,
        "ft_features_used_in_pt": sorted(set(ft_used) & set(pt_used)),
        "class_features": pt_feats.tolist() + ft_feats.tolist(),
        "class_weights": np.round(pt_weights, 4).tolist() + np.round(ft_weights, 4).tolist(),
    }
    return bank, n_pt_features, (pt_feats, pt_weights), (ft_feats, ft_weights), truth


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
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


def generate(root: str | Path, fmt: str, n_train_per_class: int = 100, n_test_per_class: int = 20,
             seed: int = 0, noise: float = 1.0, max_shift: int = 8, distractors: int = 0,
             ground_truth: str = "mixed", ft_classes: int | None = None) -> dict[str, str]:
    """Write a synthetic dataset in format ``fmt`` under ``root``; return {relpath: sha256}.

    ``ground_truth`` (see :func:`ground_truth_recipes`): ``mixed`` (default, the generator as it always
    was: no designated FT classes, pick them with data.split_seed) or ``subset`` / ``new`` / ``dense``
    (the last ``ft_classes`` classes, default 2, are the FT classes). The marker records the ground
    truth, the FT classes and every class's features (``ptft-data describe --root ROOT`` prints them)."""
    root = Path(root)
    dataset_files(fmt)  # validates fmt
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
    if ground_truth not in GROUND_TRUTHS:
        raise ConfigError(f"ground_truth={ground_truth!r} must be one of {list(GROUND_TRUTHS)}")
    if ground_truth == "mixed" and ft_classes is not None:
        raise ConfigError("ft_classes designates FT classes of a ground truth: give it only with "
                          "ground_truth=subset|new|dense (with mixed, data.ft_classes picks them)")
    ft_classes = 2 if ft_classes is None else ft_classes
    from ptft.limits import check_memory

    n_images = NUM_CLASSES[fmt] * (n_train_per_class + n_test_per_class)  # rendered in float64, ~4 copies
    check_memory(f"--n-train-per-class={n_train_per_class} --n-test-per-class={n_test_per_class} ({n_images} "
                 f"{fmt} images)", 4.0 * 8 * 3072 * n_images, "lower --n-train-per-class / --n-test-per-class")
    group_size = 5 if fmt == "cifar100" else 1
    xtr, ytr, xte, yte, truth = make_dataset(NUM_CLASSES[fmt], n_train_per_class, n_test_per_class, seed,
                                             group_size, noise, max_shift, distractors, ground_truth, ft_classes)
    if fmt == "cifar100":
        write = lambda: _write_cifar100(root, xtr, ytr, xte, yte, group_size)  # noqa: E731
    else:
        write = lambda: _write_svhn(root, xtr, ytr, xte, yte)  # noqa: E731
    return write_registered(root, fmt, write, {
        "generator": "ptft-data synthetic",
        "seed": seed, "n_train_per_class": n_train_per_class, "n_test_per_class": n_test_per_class,
        "noise": noise, "max_shift": max_shift, "distractors": distractors, **truth,
    })


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
    dig = sub.add_parser("digits", help="write scikit-learn's handwritten digits as an SVHN-format set")
    dig.add_argument("--root", required=True, help="dataset root (the value of data.root, with data.name=svhn)")
    syn.add_argument("--ground-truth", default="mixed", choices=GROUND_TRUTHS,
                     help="how the FT classes relate to the PT classes' features: mixed (default, the generator "
                          "as it always was: no designated FT classes), or the last --ft-classes classes use a "
                          "small subset of the PT features (subset), features no PT class uses (new), or many "
                          "PT features (dense)")
    syn.add_argument("--ft-classes", type=int, default=None,
                     help="number of FT classes of --ground-truth subset|new|dense (default 2)")
    desc = sub.add_parser("describe", help="print what a synthetic dataset root holds (ground truth, FT classes)")
    desc.add_argument("--root", required=True)
    args = parser.parse_args(argv)
    if args.command == "digits":
        from ptft.vision.digits import main_digits
        return main_digits(args.root)
    try:
        if args.command == "describe":
            print(describe(args.root))
            return 0
        hashes = generate(args.root, args.format, args.n_train_per_class, args.n_test_per_class, args.seed,
                          args.noise, args.max_shift, args.distractors, args.ground_truth, args.ft_classes)
    except ConfigError as e:
        print(f"ptft-data: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only or unwritable root, a file where a directory should be, ...
        print(f"ptft-data: error: {e.filename or args.root}: {e.strerror or e}; choose a writable --root",
              file=sys.stderr)
        return 2
    n = NUM_CLASSES[args.format]
    print(f"wrote synthetic {args.format} ({n} classes, {args.n_train_per_class}/{args.n_test_per_class} "
          f"train/test images per class) under {args.root}: {', '.join(hashes)}; "
          f"use it with data.name={args.format} data.root={args.root}")
    ft_list = read_marker(Path(args.root))["formats"][args.format]["ft_class_list"]
    if ft_list is not None:
        print(f"ground truth {args.ground_truth}: FT classes {ft_list}, use them with "
              f"'data.ft_class_list=[{','.join(map(str, ft_list))}]' (`ptft-data describe --root {args.root}`)")
    return 0


def describe(root: str | Path) -> str:
    """A readable summary of the synthetic datasets under ``root`` (from the marker)."""
    root = Path(root)
    formats = read_marker(root).get("formats", {})
    if not formats:
        raise ConfigError(f"{root} holds no dataset written by `ptft-data synthetic` (no {root / MARKER})")
    lines = []
    for fmt, m in sorted(formats.items()):
        lines.append(f"{fmt}: seed {m.get('seed')}, {m.get('n_train_per_class')}/{m.get('n_test_per_class')} "
                     f"train/test images per class, noise {m.get('noise')}, max_shift {m.get('max_shift')}, "
                     f"distractors {m.get('distractors')}")
        gt, feats = m.get("ground_truth"), m.get("class_features")
        if gt is None or feats is None:
            lines.append("  ground truth not recorded (written by an older ptft-data: today's `mixed`)")
            continue
        lines.append(f"  ground truth: {gt}; bank of {m['bank_features']} features, 3+ per class")
        ft = m.get("ft_class_list")
        if ft is None:
            lines.append("  no designated FT classes: every class mixes bank features shared with other classes; "
                         "data.split_seed picks the FT classes")
            continue
        lines.append(f"  FT classes {ft}: 'data.ft_class_list=[{','.join(map(str, ft))}]'; PT classes: all others")
        lines.append(f"  features used by PT classes: {m['pt_features']}")
        for c in ft:
            lines.append(f"  FT class {c}: features {feats[c]}, weights {m['class_weights'][c]}")
        lines.append(f"  FT features also used by PT classes: {m['ft_features_used_in_pt']} "
                     f"({len(m['ft_features_used_in_pt'])} of {len(m['ft_features'])})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
