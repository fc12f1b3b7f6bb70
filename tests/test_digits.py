"""`ptft-data digits`: sklearn's handwritten digits as an SVHN-format set, read by torchvision and the suite."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ptft.vision import digits, synthetic
from ptft.vision.track import data_fingerprint
from ptft.vision.data import DataConfig, load_split, load_task

torch.set_num_threads(1)
pytest.importorskip("sklearn", reason="pip install 'ptft[digits]'")

COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # images per digit in load_digits
N_TRAIN = [math.ceil(0.7 * n) for n in COUNTS]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("digits")
    assert synthetic.main(["digits", "--root", str(r)]) == 0
    return r


@pytest.fixture(scope="module")
def sk() -> tuple[np.ndarray, np.ndarray]:
    return digits.load_sklearn_digits()


def _torchvision_svhn(root: Path, split: str):
    from torchvision.datasets import SVHN

    class NoMD5(SVHN):  # only the MD5 check of the real files is bypassed, as the suite's loader does
        def _check_integrity(self) -> bool:
            return True

    return NoMD5(str(root), split=split, download=False)


def test_torchvision_reads_the_files_and_labels_map_0_to_10(root: Path, sk) -> None:
    from scipy.io import loadmat

    images, labels = sk
    tr, te = digits.split_indices(labels)
    for split, idx in (("train", tr), ("test", te)):
        raw = loadmat(str(root / f"{split}_32x32.mat"))
        assert raw["X"].shape == (32, 32, 3, len(idx)) and raw["X"].dtype == np.uint8
        assert raw["y"].shape == (len(idx), 1) and raw["y"].min() == 1 and raw["y"].max() == 10
        np.testing.assert_array_equal(raw["y"][:, 0], np.where(labels[idx] == 0, 10, labels[idx]))
        ds = _torchvision_svhn(root, split)
        assert ds.data.shape == (len(idx), 3, 32, 32) and ds.data.dtype == np.uint8
        np.testing.assert_array_equal(ds.labels, labels[idx])  # torchvision maps 10 back to 0
        x, y = load_split("svhn", str(root), train=split == "train")  # the suite's loader: same arrays
        np.testing.assert_array_equal(x.numpy(), ds.data)
        np.testing.assert_array_equal(y.numpy(), labels[idx])
        # pixels round-trip: the 8x8 sklearn images come back exactly
        np.testing.assert_array_equal(digits.to_8x8(ds.data), images[idx])


def test_pixel_map_is_injective_with_documented_inverse() -> None:
    v = np.arange(17)
    p = digits.to_uint8(v)
    assert p[0] == 0 and p[16] == 255 and np.all(np.diff(p.astype(int)) >= 15)
    np.testing.assert_array_equal(digits.from_uint8(p), v)
    x = digits.to_32x32(v[:16].reshape(1, 4, 4).repeat(2, 1).repeat(2, 2))
    x[0, 1, 5, 6] ^= 1  # one pixel off: not a digits image
    with pytest.raises(ValueError, match="ptft-data digits"):
        digits.to_8x8(x)


def test_split_is_fixed_disjoint_with_documented_counts(sk) -> None:
    _, labels = sk
    assert np.bincount(labels).tolist() == COUNTS
    tr, te = digits.split_indices(labels)
    assert not set(tr) & set(te) and len(tr) + len(te) == len(labels) == 1797
    assert np.bincount(labels[tr]).tolist() == N_TRAIN and len(tr) == 1262 and len(te) == 535
    for c in range(10):  # the first ceil(0.7 n_c) of each class, in sklearn's order
        idx = np.flatnonzero(labels == c)
        assert set(idx[:N_TRAIN[c]]) <= set(tr)


def test_loader_svhn_protocol_8_pt_2_ft_digits(root: Path) -> None:
    for seed in (0, 3):
        t = load_task(DataConfig(name="svhn", root=str(root), split_seed=seed, n_ft=None))
        assert len(t.pt_classes) == 8 and len(t.ft_classes) == 2 and not set(t.pt_classes) & set(t.ft_classes)
        assert len(t.pt_train) == sum(N_TRAIN[c] for c in t.pt_classes)
        assert len(t.pt_test) == sum(COUNTS[c] - N_TRAIN[c] for c in t.pt_classes)
        assert len(t.ft_train) == sum(N_TRAIN[c] for c in t.ft_classes)
        assert len(t.ft_test) == sum(COUNTS[c] - N_TRAIN[c] for c in t.ft_classes)
        assert torch.bincount(t.pt_train.y).tolist() == [N_TRAIN[c] for c in t.pt_classes]
        assert torch.bincount(t.ft_test.y, minlength=2).tolist() == [COUNTS[c] - N_TRAIN[c] for c in t.ft_classes]
    t = load_task(DataConfig(name="svhn", root=str(root), n_ft=10))
    assert len(t.ft_train) == 10 and set(t.ft_train.y_orig.tolist()) <= set(t.ft_classes)


def test_fingerprint_is_not_real_svhn_and_is_stable(root: Path, tmp_path: Path) -> None:
    fp = data_fingerprint(DataConfig(name="svhn", root=str(root)))
    assert fp != "torchvision" and fp.startswith("synthetic:")
    marker = synthetic.read_marker(root)["formats"]["svhn"]
    assert marker["kind"] == "digits" and marker["generator"] == "ptft-data digits"
    digits.write_digits(tmp_path / "again")  # regenerating gives the same files, so the same identity
    assert data_fingerprint(DataConfig(name="svhn", root=str(tmp_path / "again"))) == fp
    synthetic.generate(tmp_path / "syn", "svhn", 2, 1)
    assert data_fingerprint(DataConfig(name="svhn", root=str(tmp_path / "syn"))) not in (fp, "torchvision")


def test_without_sklearn_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert synthetic.main(["digits", "--root", str(tmp_path / "d")]) == 2
    out = capsys.readouterr()
    assert "pip install 'ptft[digits]'" in out.err and out.err.count("\n") == 1 and not out.out
    assert not (tmp_path / "d").exists()


def test_refuses_to_overwrite_files_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "train_32x32.mat").write_bytes(b"real svhn")
    assert synthetic.main(["digits", "--root", str(tmp_path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "train_32x32.mat").read_bytes() == b"real svhn"
