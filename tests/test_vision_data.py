"""Synthetic CIFAR-100/SVHN files, loading through torchvision, integrity errors and PT/FT splits."""

from __future__ import annotations

import pickle
import pickletools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ptft import ConfigError
from ptft.vision import synthetic
from ptft.vision.data import DataConfig, load_split, load_task, normalize, split_classes, validate_data_config

torch.set_num_threads(1)
N_TR, N_TE = 12, 4  # images per class


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("data")
    synthetic.generate(r, "cifar100", N_TR, N_TE, seed=1)
    synthetic.generate(r, "svhn", N_TR, N_TE, seed=2)
    return r


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


# ---------------------------------------------------------------- file format
def test_cifar_pickles_are_python2_format(root: Path) -> None:
    raw = (root / "cifar-100-python" / "train").read_bytes()
    ops = {op.name for op, _, _ in pickletools.genops(raw)}
    assert raw[:2] == b"\x80\x02"  # protocol 2
    assert "SHORT_BINSTRING" in ops and not ops & {"BINUNICODE", "SHORT_BINUNICODE", "SHORT_BINBYTES", "BINBYTES"}
    latin1 = pickle.loads(raw, encoding="latin1")
    assert set(latin1) == {"data", "fine_labels", "coarse_labels", "filenames", "batch_label"}
    assert latin1["data"].dtype == np.uint8 and latin1["data"].shape == (100 * N_TR, 3072)
    as_bytes = pickle.loads(raw, encoding="bytes")  # the CIFAR website's unpickle()
    assert set(as_bytes) == {k.encode() for k in latin1}
    np.testing.assert_array_equal(as_bytes[b"data"], latin1["data"])
    assert sorted(set(latin1["fine_labels"])) == list(range(100))
    assert [c // 5 for c in latin1["fine_labels"]] == latin1["coarse_labels"]
    meta = pickle.loads((root / "cifar-100-python" / "meta").read_bytes(), encoding="latin1")
    assert len(meta["fine_label_names"]) == 100 and len(meta["coarse_label_names"]) == 20


def test_torchvision_cifar100_reads_files(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's unmodified CIFAR100 reader (only its MD5 check bypassed) sees our loader's data."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    ds = tv_cifar.CIFAR100(str(root), train=False)
    x, y = load_split("cifar100", str(root), train=False)
    assert x.shape == (100 * N_TE, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert ds.targets == y.tolist() and ds.classes[0] == "synthetic_class_00"
    np.testing.assert_array_equal(ds.data, x.permute(0, 2, 3, 1).numpy())
    raw = pickle.loads((root / "cifar-100-python" / "test").read_bytes(), encoding="latin1")["data"]
    for c in range(3):  # R, G, B planes of 1024 bytes each
        np.testing.assert_array_equal(raw[:, c * 1024:(c + 1) * 1024].reshape(-1, 32, 32), x[:, c].numpy())
    from torchvision import transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    ref = torch.stack([tf(ds[i][0]) for i in range(8)])
    assert torch.equal(normalize(x[:8]), ref)  # bit-identical to the torchvision pipeline


def test_torchvision_svhn_reads_files(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scipy.io import loadmat
    from torchvision.datasets import SVHN

    mat = loadmat(str(root / "train_32x32.mat"))
    assert mat["X"].shape == (32, 32, 3, 10 * N_TR) and mat["X"].dtype == np.uint8
    assert mat["y"].shape == (10 * N_TR, 1) and set(mat["y"].ravel()) == set(range(1, 11))
    monkeypatch.setattr(SVHN, "_check_integrity", lambda self: True)
    ds = SVHN(str(root), split="train")
    x, y = load_split("svhn", str(root), train=True)
    assert y.tolist() == ds.labels.tolist() and set(y.tolist()) == set(range(10))
    assert torch.equal(y, torch.from_numpy((mat["y"].ravel() % 10).astype(np.int64)))  # 10 means digit 0
    np.testing.assert_array_equal(x.numpy(), mat["X"].transpose(3, 2, 0, 1))


# ---------------------------------------------------------------- integrity errors
def test_corrupt_synthetic_file_is_a_clear_error(root: Path, tmp_path: Path) -> None:
    r = _copy(root, tmp_path)
    load_split("cifar100", str(r), train=True)  # intact copy loads
    f = r / "cifar-100-python" / "train"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))
    with pytest.raises(ConfigError) as e:
        load_split("cifar100", str(r), train=True)
    msg = str(e.value)
    assert str(f) in msg and "sha256" in msg and "ptft-data synthetic" in msg


def test_real_data_path_keeps_md5_check(root: Path, tmp_path: Path) -> None:
    """Without the marker the same files are 'real' data: torchvision's MD5 check applies and fails."""
    r = _copy(root, tmp_path)
    (r / synthetic.MARKER).unlink()
    with pytest.raises(ConfigError) as e:
        load_split("svhn", str(r), train=False)
    msg = str(e.value)
    assert "MD5" in msg and "data.download=true" in msg and str(r / "test_32x32.mat") in msg


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_task(DataConfig(root=str(tmp_path / "nowhere")))
    msg = str(e.value)
    for part in ("cifar-100-python/train", "cifar-100-python/meta", "data.download=true", "data.root",
                 "ptft-data synthetic --root", str(tmp_path / "nowhere")):
        assert part in msg


def test_missing_synthetic_file_and_refusal_to_overwrite(root: Path, tmp_path: Path) -> None:
    r = _copy(root, tmp_path)
    (r / "cifar-100-python" / "meta").unlink()
    with pytest.raises(ConfigError, match="meta is missing"):
        load_split("cifar100", str(r), train=True)
    real = tmp_path / "real"
    (real / "cifar-100-python").mkdir(parents=True)
    (real / "cifar-100-python" / "train").write_bytes(b"not ours")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        synthetic.generate(real, "cifar100", 2, 1)
    assert (real / "cifar-100-python" / "train").read_bytes() == b"not ours"


def test_cli_validates_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert synthetic.main(["synthetic", "--root", str(tmp_path), "--format", "svhn", "--n-train-per-class", "0"]) == 2
    assert "n_train_per_class" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synthetic.main(["synthetic", "--root", str(tmp_path), "--format", "mnist"])
    assert synthetic.main(["synthetic", "--root", str(tmp_path), "--format", "svhn",
                           "--n-train-per-class", "2", "--n-test-per-class", "1"]) == 0
    assert load_split("svhn", str(tmp_path), train=True)[0].shape == (20, 3, 32, 32)


# ---------------------------------------------------------------- splits
def test_split_is_deterministic_disjoint_and_remapped(root: Path) -> None:
    cfg = DataConfig(root=str(root), n_ft=10, split_seed=3)
    a, b = load_task(cfg), load_task(cfg)
    assert len(a.pt_classes) == 98 and len(a.ft_classes) == 2 and not set(a.pt_classes) & set(a.ft_classes)
    for s in ("pt_train", "pt_test", "ft_train", "ft_test"):
        sa, sb = getattr(a, s), getattr(b, s)
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)
        assert torch.equal(sa.y_orig, torch.tensor(sa.classes)[sa.y])  # stage label k <-> classes[k]
        assert set(sa.y.tolist()) <= set(range(len(sa.classes)))
    assert len(a.ft_train) == 10 and len(a.ft_test) == 2 * N_TE  # FT test: all test images of FT classes
    assert len(a.pt_train) == 98 * N_TR and len(a.pt_test) == 98 * N_TE
    xtr, ytr = load_split("cifar100", str(root), True)
    pool = torch.isin(ytr, torch.tensor(a.ft_classes))
    assert all(any(torch.equal(img, p) for p in xtr[pool]) for img in a.ft_train.x)  # drawn from FT train pool
    other = load_task(DataConfig(root=str(root), n_ft=10, split_seed=4))
    assert other.ft_classes != a.ft_classes


def test_ft_samples_nested_balanced_and_seeded(root: Path) -> None:
    base = dict(root=str(root), ft_class_list=[7, 3, 11], split_seed=0)
    xs = [load_task(DataConfig(**base, n_ft=n)).ft_train.x for n in (3, 9, 20)]
    flat = [{bytes(img.numpy()) for img in x} for x in xs]
    assert flat[0] <= flat[1] <= flat[2] and [len(f) for f in flat] == [3, 9, 20]
    bal = load_task(DataConfig(**base, n_ft=8, ft_balanced=True)).ft_train
    assert torch.bincount(bal.y, minlength=3).tolist() == [3, 3, 2] and bal.classes == [7, 3, 11]
    s1 = load_task(DataConfig(**base, n_ft=9, sample_seed=1))
    s2 = load_task(DataConfig(**base, n_ft=9, sample_seed=2))
    assert s1.ft_classes == s2.ft_classes and not torch.equal(s1.ft_train.x, s2.ft_train.x)
    full = load_task(DataConfig(**base, n_ft=None))
    assert len(full.ft_train) == 3 * N_TR


def test_svhn_default_split_and_explicit_pt_list(root: Path) -> None:
    t = load_task(DataConfig(name="svhn", root=str(root), n_ft=5))
    assert len(t.pt_classes) == 8 and len(t.ft_classes) == 2 and t.num_classes_total == 10
    pt, ft = split_classes(DataConfig(name="svhn", pt_class_list=[0, 1, 2], ft_classes=3, split_seed=5))
    assert pt == [0, 1, 2] and len(ft) == 3 and not set(ft) & set(pt)


@pytest.mark.parametrize("kw, key", [
    (dict(name="mnist"), "data.name"),
    (dict(pt_class_list=[1, 2, 3], ft_class_list=[3, 4]), "share classes"),
    (dict(ft_class_list=[1, 1]), "repeated"),
    (dict(ft_class_list=[1, 100]), "out of range"),
    (dict(ft_classes=1), "data.ft_classes"),
    (dict(pt_classes=99), "data.pt_classes"),
    (dict(n_ft=0), "data.n_ft"),
    (dict(n_ft=1, ft_balanced=True), "ft_balanced"),
    (dict(split_seed=-1), "data.split_seed"),
])
def test_bad_config_is_a_config_error(kw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        validate_data_config(DataConfig(**kw))


def test_n_ft_larger_than_available(root: Path) -> None:
    with pytest.raises(ConfigError, match="data.n_ft=25 exceeds the 24"):
        load_task(DataConfig(root=str(root), n_ft=25))


# ---------------------------------------------------------------- class structure
def test_synthetic_classes_share_features_and_are_learnable(root: Path) -> None:
    feats, _ = synthetic.class_recipes(100, 24, 3, 5, np.random.default_rng(0))
    assert len({tuple(f) for f in feats}) == 100  # every class distinct
    for c in range(100):  # every class shares a feature with some other class
        assert any(set(feats[c]) & set(feats[d]) for d in range(100) if d != c)
    # nearest class mean in pixel space is far above chance on held-out images
    xtr, ytr = load_split("svhn", str(root), True)
    xte, yte = load_split("svhn", str(root), False)
    xtr, xte = normalize(xtr).flatten(1), normalize(xte).flatten(1)
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(10)])
    acc = (torch.cdist(xte, means).argmin(1) == yte).float().mean().item()
    assert acc > 0.3  # chance 0.1 (0.62 with these seeds)


def test_data_config_is_hydra_structured(root: Path) -> None:
    from omegaconf import OmegaConf

    conf = OmegaConf.merge(OmegaConf.structured(DataConfig),
                           {"root": str(root), "ft_class_list": [4, 9], "n_ft": 6, "ft_balanced": True})
    t = load_task(conf)  # a DictConfig works as the dataclass does
    assert t.ft_classes == [4, 9] and torch.bincount(t.ft_train.y).tolist() == [3, 3]
    with pytest.raises(Exception):
        OmegaConf.merge(OmegaConf.structured(DataConfig), {"n_ft": "many"})  # typed fields


def test_generator_knobs_are_validated_and_recorded(tmp_path: Path) -> None:
    for kw, key in ((dict(distractors=-1), "distractors"), (dict(max_shift=40), "max_shift"),
                    (dict(noise=float("nan")), "noise")):
        with pytest.raises(ConfigError, match=key):
            synthetic.generate(tmp_path / "bad", "svhn", 2, 1, **kw)
    synthetic.generate(tmp_path / "a", "svhn", 3, 1, seed=0, distractors=2)
    synthetic.generate(tmp_path / "b", "svhn", 3, 1, seed=0)
    assert synthetic.read_marker(tmp_path / "a")["formats"]["svhn"]["distractors"] == 2
    xa, ya = load_split("svhn", str(tmp_path / "a"), True)
    xb, yb = load_split("svhn", str(tmp_path / "b"), True)
    assert torch.equal(ya, yb) and not torch.equal(xa, xb)
