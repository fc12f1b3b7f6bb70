"""scikit-learn's handwritten digits written as an SVHN-format set (``ptft-data digits``).

A real image set that needs no download: ``sklearn.datasets.load_digits`` ships 1,797 grey 8x8
images of the digits 0-9 (values 0..16, about 180 per class). ``write_digits`` writes them in the
exact files of SVHN, so ``data.name=svhn data.root=DIR`` runs the SVHN protocol (8 PT digits, 2 FT
digits) on real images:

- ``<root>/{train,test}_32x32.mat`` (scipy.io.savemat, via :func:`ptft.vision.formats._write_svhn`):
  ``X`` (32, 32, 3, N) uint8, ``y`` (N, 1) uint8 in 1..10, 10 for the digit 0 (SVHN's convention).
- Pixels: value ``v`` in 0..16 -> ``p = floor(255 v / 16)`` (0, 15, 31, ..., 239, 255: injective,
  full uint8 range; ink is bright on a dark background, as in sklearn). Inverse:
  ``v = ceil(16 p / 255)``. Each 8x8 pixel becomes a 4x4 block of equal pixels (nearest-neighbour
  upsampling to 32x32), the same in all three channels. Inverse: ``x[c, ::4, ::4]`` of any channel
  (:func:`to_8x8` also checks that every block is constant and the channels are equal).
- Split, fixed, no randomness: for each digit, the first ``ceil(0.7 n_c)`` images in sklearn's order
  are train, the rest test (1,262 train / 535 test). Each file lists its images in sklearn's order.
  sklearn's order is not random (it is the UCI optdigits test file); a logistic regression on the
  raw 64 pixels scores 0.91 on this split vs 0.96 on a random 70/30 split, so the test images are
  somewhat harder than a random split's.

The files are recorded in ``<root>/PTFT_SYNTHETIC.json`` (sha256s, ``kind: digits``) under the
``svhn`` format through :func:`ptft.vision.formats.write_registered`, so the suite's loader verifies
them by sha256 instead of torchvision's MD5, and the run fingerprint is the hash of these sha256s,
never ``torchvision`` (real SVHN). Generating ``ptft-data synthetic --format svhn`` in the same root
replaces them (one SVHN-format set per root).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ptft import ConfigError
from ptft.vision.formats import _write_svhn, read_marker, write_registered

TRAIN_FRACTION = 0.7
UPSAMPLE = 4  # 8x8 -> 32x32
# The 116-byte descriptive text of a MAT 5 header; scipy writes the creation time there, which would
# give every regeneration new sha256s (hence a new run fingerprint) for the same images.
HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, written by ptft-data digits from sklearn load_digits".ljust(116)
INSTALL_HINT = "scikit-learn is needed for `ptft-data digits`: pip install 'ptft[digits]' (or pip install scikit-learn)"


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits: images (1797, 8, 8) int64 in 0..16 and labels (1797,) int64 in 0..9."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ConfigError(INSTALL_HINT) from e
    d = load_digits()
    images = np.asarray(d.images)
    if images.shape[1:] != (8, 8) or not np.array_equal(images, np.rint(images)) or images.min() < 0 \
            or images.max() > 16:
        raise ConfigError(f"sklearn's load_digits returned unexpected images {images.shape}, "
                          f"values {images.min()}..{images.max()}")
    return images.astype(np.int64), np.asarray(d.target, dtype=np.int64)


def to_uint8(v: np.ndarray) -> np.ndarray:
    """0..16 -> 0..255: ``floor(255 v / 16)``."""
    return (255 * np.asarray(v, dtype=np.int64) // 16).astype(np.uint8)


def from_uint8(p: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_uint8`: ``ceil(16 p / 255)``."""
    return -(-16 * np.asarray(p, dtype=np.int64) // 255)


def to_32x32(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0..16 -> (N, 3, 32, 32) uint8: 4x4 blocks, three equal channels."""
    x = to_uint8(images).repeat(UPSAMPLE, axis=1).repeat(UPSAMPLE, axis=2)
    return np.ascontiguousarray(np.broadcast_to(x[:, None], (len(x), 3, 32, 32)))


def to_8x8(x: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_32x32`: (N, 3, 32, 32) uint8 -> (N, 8, 8) values 0..16."""
    x = np.asarray(x)
    small = x[:, 0, ::UPSAMPLE, ::UPSAMPLE]
    if not np.array_equal(to_32x32(from_uint8(small)), x):
        raise ValueError("not an image written by `ptft-data digits` (blocks, channels or values differ)")
    return from_uint8(small)


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices, each ascending: per class the first ceil(0.7 n_c) are train."""
    train = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        train.append(idx[:int(np.ceil(TRAIN_FRACTION * len(idx)))])
    tr = np.sort(np.concatenate(train))
    return tr, np.setdiff1d(np.arange(len(labels)), tr)


def write_digits(root: str | Path) -> dict[str, str]:
    """Write the digits as SVHN files under ``root`` and register them; return {relpath: sha256}."""
    root = Path(root)
    images, labels = load_sklearn_digits()
    tr, te = split_indices(labels)
    x = to_32x32(images)

    def write() -> None:
        _write_svhn(root, x[tr], labels[tr], x[te], labels[te])
        for name in ("train_32x32.mat", "test_32x32.mat"):  # savemat's header holds the time: make it fixed
            with open(root / name, "r+b") as f:
                if not f.read(len(HEADER)).startswith(b"MATLAB 5.0 MAT-file"):
                    raise ConfigError(f"{root / name}: unexpected MAT header from scipy.io.savemat")
                f.seek(0)
                f.write(HEADER)

    return write_registered(root, "svhn", write, {
        "generator": "ptft-data digits", "kind": "digits",
        "source": "sklearn.datasets.load_digits", "n_train": int(len(tr)), "n_test": int(len(te)),
        "split": f"per class, the first ceil({TRAIN_FRACTION} n_c) in sklearn's order are train",
        "pixels": "p = floor(255 v / 16), 4x4 blocks, 3 equal channels; inverse v = ceil(16 p / 255)",
    })


def main_digits(root: str) -> int:
    """``ptft-data digits --root DIR`` (argparse lives in :func:`ptft.vision.synthetic.main`)."""
    import sys

    try:
        hashes = write_digits(root)
    except ConfigError as e:
        print(f"ptft-data: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only or unwritable root, a file where a directory should be, ...
        print(f"ptft-data: error: {e.filename or root}: {e.strerror or e}; choose a writable --root", file=sys.stderr)
        return 2
    info = read_marker(Path(root))["formats"]["svhn"]
    print(f"wrote sklearn's handwritten digits as SVHN files ({info['n_train']}/{info['n_test']} train/test "
          f"images) under {root}: {', '.join(hashes)}; use it with data.name=svhn data.root={root}")
    return 0

