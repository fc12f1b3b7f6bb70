"""The handwritten-digits study presets (conf/experiment/digits/*.yaml) and its driver (scripts/study_digits.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ptft import app
from ptft.pipeline.config import validate
from ptft.pipeline.main import run_finetune

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"digits/relative_scale": ("init.kappa", [0.25, 0.5, 1, 2]),
           "digits/absolute_scale": ("init.scale", [0.5, 1, 2]),
           "digits/readout_scale": ("ft.readout_scale", [0.1, 1, 3]),
           "digits/rescale": ("ft.rescale", [0.25, 1])}


def _sweep(name: str) -> dict:
    """The preset's Hydra sweep (read from the file: app.compose leaves out the hydra node)."""
    import yaml

    return {k: str(v) for k, v in yaml.safe_load((app.conf_dir() / "experiment" / f"{name}.yaml").read_text())
            ["hydra"]["sweeper"]["params"].items()}


def _driver():
    spec = importlib.util.spec_from_file_location("study_digits", REPO / "scripts" / "study_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_composes_validates_and_follows_the_svhn_protocol(name):
    cfg = app.compose("finetune", [f"experiment={name}", "seed=7"])
    validate(cfg)
    assert cfg.name == name.replace("/", "_") and cfg.data.name == "svhn" and cfg.data.root == "data/digits"
    assert cfg.data.split_seed == cfg.data.sample_seed == cfg.pretrain.seed == 7  # per seed: split, draw, PT
    assert cfg.data.ft_classes == 2 and cfg.data.pt_classes is None               # 8 PT / 2 FT digits
    assert cfg.model.name == "resnet18" and cfg.model.width == 8
    assert cfg.ft.head == "new" and cfg.ft.mode == "finetune" and cfg.runtime.device == "cpu"
    assert (cfg.train.lr, cfg.train.momentum, cfg.train.threshold, cfg.train.max_epochs) == (1e-3, 0.9, 0.01, 1000)
    assert (cfg.pretrain.train.lr, cfg.pretrain.train.max_epochs) == (0.05, 15)
    assert list(cfg.runs.n_ft) == [4, 10, 20, 50]
    key, values = PRESETS[name]
    sweep = _sweep(name)
    assert [float(v) for v in sweep[key].split(",")] == values and sweep["seed"] == "range(0,10)"


def test_all_presets_share_one_pretraining_per_kappa_scale_seed():
    """FT-side knobs do not change the pretraining's identity, so the study trains it once per (kappa, scale, seed)."""
    from ptft.pipeline.config import pretrain_identity
    from ptft.train.store import RunDir

    hashes = set()
    for name in PRESETS:
        cfg = app.compose("finetune", [f"experiment={name}", "seed=3", "ft.rescale=0.25", "ft.readout_scale=3"])
        hashes.add(RunDir("", "pretrain", pretrain_identity(validate(cfg), cfg)).run_hash)
    assert len(hashes) == 1


def test_driver_runs_every_preset_value_and_stl():
    mod = _driver()
    ran: dict = {}
    for chain in mod.chains("store", "data/digits"):
        for cmd in chain:
            exp = next(a.split("=", 1)[1] for a in cmd if a.startswith("experiment="))
            if "ft.mode=stl" in cmd:
                ran.setdefault("stl", []).append(exp)
                continue
            key = PRESETS[exp][0]
            ran.setdefault(exp, set()).update(float(v) for a in cmd if a.startswith(key + "=")
                                              for v in a.split("=", 1)[1].split(","))
    assert ran.pop("stl") == ["digits/relative_scale"]
    assert 1.0 in ran["digits/relative_scale"]  # the reference (every knob at 1), shared by all four knobs
    for exp, (key, values) in PRESETS.items():
        assert ran[exp] | {1.0} == set(values), exp  # the reference value 1 is run once, in the kappa chain


def test_tiny_run_of_a_preset(tmp_path):
    """digits/rescale at a shrunk size (64 PT images, 1 PT epoch, 2 FT epochs, n_ft 4): trains end to end."""
    pytest.importorskip("sklearn", reason="pip install 'ptft[digits]'")
    from ptft.vision import synthetic

    root = tmp_path / "digits"
    assert synthetic.main(["digits", "--root", str(root)]) == 0
    cfg = app.compose("finetune", ["experiment=digits/rescale", f"data.root={root}", f"store.root={tmp_path / 's'}",
                                   "wandb.mode=disabled", "data.n_pt=64", "pretrain.train.max_epochs=1",
                                   "train.max_epochs=2", "runs.n_ft=[4]", "runs.seeds=[0,1]", "ft.rescale=0.25"])
    done = run_finetune(cfg)
    assert len(done) == 2 and len({r["pretrain"] for _, r in done}) == 2  # per seed its own pretraining
    for _, r in done:
        assert r["n_ft"] == 4 and r["rescale"] == 0.25 and r["head"] == "new" and r["n_test"] > 50
        assert r["status"] in ("ok", "max_epochs") and 0.0 <= r["test_acc"] <= 1.0
        assert r["pt_test_acc"] is not None and "diag/movement/stem" in r
