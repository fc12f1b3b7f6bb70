"""The deep-track knob study (scripts/study_vision.py, preset vision/synthetic_knobs): the preset and every job of the
driver compose and validate; the driver's job list runs end to end at a shrunk size and its report is written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ptft import app
from ptft.pipeline.config import validate
from ptft.pipeline.main import run_finetune
from ptft.vision import synthetic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import study_vision  # noqa: E402

SHRINK = ["model.width=2", "pretrain.train.max_epochs=1", "train.max_epochs=2", "runtime.device=cpu",
          "wandb.mode=disabled"]


def test_preset_and_every_job_compose_and_validate():
    cfg = app.compose("finetune", ["experiment=vision/synthetic_knobs", "seed=3"])
    validate(cfg)
    assert (cfg.name, cfg.data.name, cfg.model.name, cfg.model.width) == ("synthetic_knobs", "svhn", "resnet18_cifar", 4)
    assert list(cfg.data.ft_class_list) == [8, 9] and cfg.pretrain.seed == cfg.data.split_seed == 3
    assert list(cfg.runs.n_ft) == [10, 20, 40, 80] and len(cfg.runs.seeds) == 5
    todo = study_vision.jobs([10, 20, 40, 80], [0, 1, 2, 3, 4])
    assert len(todo) == 36  # 3 ground truths x (11 settings) + 3 bn_recalibrate jobs
    for args in todo:
        validate(app.compose("finetune", args))
    # one pretraining per (kappa, scale, seed): the FT-side jobs add no pretraining setting
    pt_side = {(a[-1] if a[-1].startswith("init.") else "base") for a in todo if "experiment=vision/synthetic_knobs" in a}
    assert pt_side >= {"init.kappa=0.25", "init.scale=2", "base"}


@pytest.mark.slow  # about 20 pretrainings and 40 fine-tunings at width 2 (~1 min on a loaded 2-core CPU)
def test_job_list_runs_at_a_shrunk_size_and_reports(tmp_path):
    gts = study_vision.GTS[:2]  # the third ground truth is one more data root: not worth a minute of CI
    for gt in gts:
        synthetic.generate(tmp_path / f"vknobs_{gt}", "svhn", 6, 3, seed=0, distractors=1, ground_truth=gt)
    store = tmp_path / "store"
    todo = study_vision.jobs([4, 6], [0, 1], data_dir=str(tmp_path), gts=gts, bn=False)
    for args in todo:
        for _, r in run_finetune(app.compose("finetune", [*args, f"store.root={store}", *SHRINK])):
            assert r["status"] in ("ok", "max_epochs") and "diag/movement/layer1" in r
    out = tmp_path / "results"
    study_vision.report(store, out)
    df = pd.read_csv(out / "vision_knobs.csv")
    assert (df["stage"] == "finetune").sum() == len(todo) * 4
    summary = pd.read_csv(out / "vision_knobs_summary.csv")
    for knob in [*study_vision.KNOBS, "ft.mode"]:
        assert set(summary.loc[summary["knob"] == knob, "ground_truth"]) == set(gts), knob
    assert (out / "vision_knobs_kappa.png").is_file() and (out / "vision_knobs_rescale.md").is_file()


def test_missing_ground_truth_data_is_refused_before_any_job(tmp_path):
    store = tmp_path / "store"
    p = subprocess.run([sys.executable, str(Path(study_vision.__file__)), "--store", str(store), "--data",
                        str(tmp_path), "--ground-truths", "dense", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "no data for dense" in p.stderr and "--ground-truth dense" in p.stderr
    assert not store.exists() and not (tmp_path / "out").exists()
