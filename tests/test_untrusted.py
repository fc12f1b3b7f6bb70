"""Untrusted files, damaged stores and oversized requests (issue 23): a poisoned data file never runs
code, a damaged run-store file never strands a run, an invalid result is never served, nothing finished
is lost, an oversized request is refused before it allocates, and each of these ends in one line."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ptft import ConfigError
from ptft.vision import synthetic
from ptft.vision.data import load_split

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------
# 1. code execution: CIFAR-format pickles go through one restricted unpickler
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("cifar")
    synthetic.generate(r, "cifar100", 2, 1, seed=3)
    return r


class Payload:
    """Unpickling this calls `open(marker, "w")`, i.e. creates the marker file: code execution."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _poison(root: Path, rel: str, tmp_path: Path, protocol: int = 2) -> tuple[Path, Path]:
    """Replace `rel` by a pickle whose load runs the payload (inside the dict the loader expects) and
    record its sha256 in PTFT_SYNTHETIC.json, as an attacker sharing the folder would."""
    marker = tmp_path / "payload-ran"
    data = pickle.loads((root / rel).read_bytes(), encoding="latin1")
    data["batch_label" if "batch_label" in data else "fine_label_names"] = Payload(marker)
    (root / rel).write_bytes(pickle.dumps(data, protocol=protocol))
    m = json.loads((root / synthetic.MARKER).read_text())
    m["formats"]["cifar100"]["files"][rel] = synthetic.sha256_file(root / rel)
    (root / synthetic.MARKER).write_text(json.dumps(m))
    return root / rel, marker


@pytest.mark.parametrize("rel", ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"])
@pytest.mark.parametrize("protocol", [2, 5])
def test_poisoned_pickle_with_matching_marker_never_runs(cifar_root, tmp_path, rel, protocol):
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    path, marker = _poison(root, rel, tmp_path, protocol)
    with pytest.raises(ConfigError) as e:
        load_split("cifar100", str(root), train=not rel.endswith("test"))
    assert not marker.exists()  # the payload never ran
    msg = str(e.value)
    assert str(path) in msg and "io.open" in msg and "refused" in msg and "\n" not in msg


def test_real_data_path_uses_the_same_restricted_unpickler(cifar_root, tmp_path, monkeypatch):
    """Without the marker the files count as real CIFAR-100: even files that pass the MD5 check load
    through the restricted unpickler."""
    import ptft.vision.data as vd

    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    path, marker = _poison(root, "cifar-100-python/train", tmp_path)
    (root / synthetic.MARKER).unlink()
    monkeypatch.setattr(vd, "_real_problems", lambda root, name: [])  # as if the MD5s matched
    with pytest.raises(ConfigError, match="refused"):
        load_split("cifar100", str(root), train=True)
    assert not marker.exists()


def test_restricted_unpickler_reads_the_real_format(cifar_root):
    """The files ptft-data writes (Python-2 pickles, numpy's _reconstruct) and a Python-3 protocol-5 dict
    of arrays both load; the arrays are those plain pickle gives."""
    from ptft.vision.data import load_data_pickle

    f = cifar_root / "cifar-100-python" / "train"
    ours, plain = load_data_pickle(f), pickle.loads(f.read_bytes(), encoding="latin1")
    assert set(ours) == set(plain) and ours["fine_labels"] == plain["fine_labels"]
    np.testing.assert_array_equal(ours["data"], plain["data"])


def test_restricted_unpickler_accepts_only_plain_data(tmp_path):
    from ptft.vision.data import load_data_pickle

    ok = {"a": np.arange(6, dtype=np.uint8).reshape(2, 3), "b": [1, 2.5, "x", b"y", None, True],
          "c": np.float64(1.5), "d": (1, 2)}
    for proto in (2, 4, 5):
        (tmp_path / "ok").write_bytes(pickle.dumps(ok, protocol=proto))
        got = load_data_pickle(tmp_path / "ok")
        assert got["b"] == ok["b"] and got["c"] == 1.5 and np.array_equal(got["a"], ok["a"])
    for bad in (Path("x"), {1, 2}, np.array([Path("x")], dtype=object), print):
        (tmp_path / "bad").write_bytes(pickle.dumps({"data": bad}, protocol=2))
        with pytest.raises(ConfigError, match="refused"):
            load_data_pickle(tmp_path / "bad")


def _rewrite_registered(root: Path, fmt: str, rel: str, data: bytes) -> Path:
    """Replace a registered file and record its new sha256 (so only the loader's own checks can object)."""
    (root / rel).write_bytes(data)
    m = json.loads((root / synthetic.MARKER).read_text())
    m["formats"][fmt]["files"][rel] = synthetic.sha256_file(root / rel)
    (root / synthetic.MARKER).write_text(json.dumps(m))
    return root / rel


@pytest.mark.parametrize("label", [150, -1, 100])
def test_cifar_labels_out_of_range_reject_the_file(cifar_root, tmp_path, label):
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    rel = "cifar-100-python/train"
    d = pickle.loads((root / rel).read_bytes(), encoding="latin1")
    d["fine_labels"][3] = label
    path = _rewrite_registered(root, "cifar100", rel, pickle.dumps(d))
    with pytest.raises(ConfigError) as e:
        load_split("cifar100", str(root), train=True)
    assert str(path) in str(e.value) and f"outside 0..99 (e.g. {label})" in str(e.value)


def test_svhn_labels_out_of_range_reject_the_file(tmp_path):
    from scipy.io import loadmat, savemat

    root = tmp_path / "svhn"
    synthetic.generate(root, "svhn", 2, 1, seed=0)
    mat = loadmat(str(root / "test_32x32.mat"))
    mat["y"][0, 0] = 150
    savemat(str(root / "tmp.mat"), {"X": mat["X"], "y": mat["y"]})
    path = _rewrite_registered(root, "svhn", "test_32x32.mat", (root / "tmp.mat").read_bytes())
    with pytest.raises(ConfigError) as e:
        load_split("svhn", str(root), train=False)
    assert str(path) in str(e.value) and "outside 0..10 (e.g. 150)" in str(e.value)
