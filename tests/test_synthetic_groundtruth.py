"""Designed ground truths of the synthetic set (`ptft-data synthetic --ground-truth subset|new|dense`):
the recorded feature sets, PT images shared by the three, the default left unchanged, CLI and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ptft import ConfigError
from ptft.vision import synthetic
from ptft.vision.data import DataConfig, load_split, load_task

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for kind in ("subset", "new", "dense"):
        out[kind] = tmp_path_factory.mktemp(kind)
        synthetic.generate(out[kind], "cifar100", 3, 2, seed=5, distractors=1, ground_truth=kind)
    return out


def _truth(root: Path, fmt: str = "cifar100") -> dict:
    return synthetic.read_marker(root)["formats"][fmt]


def test_recorded_feature_sets_are_the_intended_relation(roots: dict[str, Path]) -> None:
    for kind, root in roots.items():
        m = _truth(root)
        assert m["ground_truth"] == kind and m["ft_class_list"] == [98, 99]
        feats = m["class_features"]
        assert len(feats) == len(m["class_weights"]) == 100
        pt = set().union(*map(set, feats[:98]))
        ft = set().union(*map(set, feats[98:]))
        assert sorted(pt) == m["pt_features"] and sorted(ft) == m["ft_features"]
        assert sorted(pt & ft) == m["ft_features_used_in_pt"]
        assert len({tuple(f) for f in feats}) == 100  # every class distinct
        assert max(max(f) for f in feats) < m["bank_features"]
        if kind == "subset":  # a small subset of the PT features
            assert ft <= pt and len(ft) <= 4 and len(pt) >= 20
        elif kind == "new":  # no PT class uses any FT feature
            assert not ft & pt and len(ft) == 4
        else:  # dense: each FT class uses half of the PT features
            assert ft <= pt and all(len(f) == len(pt) // 2 for f in feats[98:])
            w = np.array(m["class_weights"][98])  # energy of a 3-feature class
            assert 3 * 0.6**2 <= (w**2).sum() <= 3 * 1.0**2 + 1e-9


def test_pt_images_are_the_same_for_the_three_ground_truths(roots: dict[str, Path]) -> None:
    x0, y0 = load_split("cifar100", str(roots["subset"]), True)
    pt = y0 < 98
    for kind in ("new", "dense"):
        x, y = load_split("cifar100", str(roots[kind]), True)
        assert torch.equal(y, y0) and torch.equal(x[pt], x0[pt]) and not torch.equal(x[~pt], x0[~pt])
    assert _truth(roots["new"])["class_features"][:98] == _truth(roots["subset"])["class_features"][:98]
    assert torch.bincount(y0).tolist() == [3] * 100


def test_ft_class_list_selects_the_designed_classes(roots: dict[str, Path]) -> None:
    t = load_task(DataConfig(root=str(roots["new"]), ft_class_list=[98, 99], n_ft=4, ft_balanced=True))
    assert t.ft_classes == [98, 99] and len(t.pt_classes) == 98 and torch.bincount(t.ft_train.y).tolist() == [2, 2]


def _old_make_images(n_classes, n_train, n_test, seed, group_size, noise=1.0, max_shift=8, distractors=0):
    """make_images as it was before ground truths existed (commit b2c4c21), verbatim."""
    rng = np.random.default_rng(seed)
    n_features = max(12, -(-n_classes // group_size) + 4)
    bank = synthetic.feature_bank(n_features, rng)
    feats, weights = synthetic.class_recipes(n_classes, n_features, 3, group_size, rng)
    out = []
    for n in (n_train, n_test):
        y = rng.permutation(np.repeat(np.arange(n_classes), n))
        out += [synthetic.render(y, bank, feats, weights, rng, noise, max_shift, distractors), y]
    return out[0], out[1], out[2], out[3]


def test_default_is_todays_generator(tmp_path: Path) -> None:
    """`mixed` (the default) makes the same images as before ground truths existed (on this machine the
    CIFAR files of seed 3, 5/2 per class, 1 distractor, keep their sha256 c4fbeef2... / 90d09885...);
    the marker now also records the class recipes."""
    new = synthetic.make_images(100, 3, 2, 3, 5, 1.0, 8, 1)
    old = _old_make_images(100, 3, 2, 3, 5, 1.0, 8, 1)
    assert all(np.array_equal(a, b) for a, b in zip(new, old))
    synthetic.generate(tmp_path, "cifar100", 2, 1, seed=3)
    m = _truth(tmp_path)
    assert m["ground_truth"] == "mixed" and m["ft_class_list"] is None and len(m["class_features"]) == 100


def test_svhn_and_more_ft_classes(tmp_path: Path) -> None:
    synthetic.generate(tmp_path, "svhn", 2, 1, seed=0, ground_truth="new", ft_classes=4)
    m = _truth(tmp_path, "svhn")
    assert m["ft_class_list"] == [6, 7, 8, 9] and not set(m["ft_features"]) & set(m["pt_features"])
    assert len(m["ft_features"]) == 4  # the pool: 4 features, whose 4 distinct 3-subsets are the 4 classes
    synthetic.generate(tmp_path / "b", "svhn", 2, 1, seed=0, ground_truth="subset", ft_classes=5)
    m = _truth(tmp_path / "b", "svhn")
    assert len(m["ft_features"]) == 5 and set(m["ft_features"]) <= set(m["pt_features"])


def test_bad_options_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ground_truth='sparse' must be one of"):
        synthetic.generate(tmp_path, "svhn", 2, 1, ground_truth="sparse")
    with pytest.raises(ConfigError, match="only with ground_truth=subset"):
        synthetic.generate(tmp_path, "svhn", 2, 1, ft_classes=3)
    with pytest.raises(ConfigError, match=r"ft_classes=9 must be an integer in 2\.\.8"):
        synthetic.generate(tmp_path, "svhn", 2, 1, ground_truth="new", ft_classes=9)
    with pytest.raises(ConfigError, match="too few"):
        synthetic.generate(tmp_path, "svhn", 2, 1, ground_truth="dense", ft_classes=8)
    assert not (tmp_path / synthetic.MARKER).exists()  # nothing written


def test_cli_prints_the_ft_classes_and_describe_shows_the_truth(tmp_path: Path, capsys) -> None:
    root = str(tmp_path / "d")
    assert synthetic.main(["synthetic", "--root", root, "--format", "cifar100", "--n-train-per-class", "2",
                           "--n-test-per-class", "1", "--ground-truth", "subset"]) == 0
    assert "'data.ft_class_list=[98,99]'" in capsys.readouterr().out
    assert synthetic.main(["describe", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "ground truth: subset" in out and "FT class 99: features" in out and "also used by PT classes" in out
    assert synthetic.main(["synthetic", "--root", root, "--format", "svhn", "--n-train-per-class", "2",
                           "--n-test-per-class", "1"]) == 0
    assert "ft_class_list" not in capsys.readouterr().out  # mixed: no designated FT classes
    assert synthetic.main(["describe", "--root", root]) == 0
    assert "svhn: seed 0" in capsys.readouterr().out
    assert synthetic.main(["describe", "--root", str(tmp_path / "none")]) == 2
    assert "no dataset written by `ptft-data synthetic`" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synthetic.main(["synthetic", "--root", root, "--format", "svhn", "--ground-truth", "sparse"])
