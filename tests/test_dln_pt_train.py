"""`pt_train`: pretraining's own training settings in `ptft-dln` (dln.pt=train), LL's protocol of
docs/paper.md section 7 (PT lr 0.5 up to 1e6 steps, FT lr 0.1 up to 1e5 steps); whether a PT met its
criterion, in the PT store, on the console and in result.json."""
import csv
import json
from pathlib import Path

import pytest
import torch

from ptft import ConfigError, app
from ptft.analysis import aggregate
from ptft.dln.main import pt_identity, run_job, scientific
from ptft.dln.multi import run_multi
from ptft.train.store import run_hash, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
SMALL = ["dln.pt=train", "dln.dim=40", "dln.n_pt=60", "dln.n_ft=12", "dln.seeds=[0,1]", "train.lr=0.1",
         "train.threshold=1e-6", "train.max_steps=2000", "wandb.mode=disabled"]


def compose(root, *ov):
    return app.compose("dln", [f"store.root={root}", *SMALL, *ov])


def _pt_files(root):
    return sorted((Path(root) / "dln_pt").glob("*/seed*.pt"))


@pytest.mark.parametrize("override,key", [
    (["pt_train.lr=-0.5"], "pt_train.lr"),
    (["pt_train.lr=0"], "pt_train.lr"),
    (["pt_train.lr=inf"], "pt_train.lr"),
    (["pt_train.max_steps=0"], "pt_train.max_steps"),
    (["pt_train.threshold=-1"], "pt_train.threshold"),
    (["pt_train.momentum=1.5"], "pt_train.momentum"),
    (["pt_train.diverge_above=0"], "pt_train.diverge_above"),
    (["dln.pt=exact", "dln.n_pt=null", "pt_train.lr=0.5"], "pt_train.lr"),  # no PT is trained
])
def test_bad_pt_train_fails_in_one_line_naming_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError) as err:
        run_job(compose(tmp_path, *override))
    msg = str(err.value)
    assert key + "=" in msg and "\n" not in msg, msg
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # before any compute, nothing written


def test_identities_default_pt_train_is_train_and_only_used_settings_count(tmp_path):
    base = compose(tmp_path)
    sci = scientific(base)
    assert "pt_train" not in sci and pt_identity(base)["train"] == sci["train"]
    # spelling out train's own values is the same run and the same PT
    same = compose(tmp_path, "pt_train.lr=0.1", "pt_train.threshold=1e-6", "pt_train.log_every=7")
    assert run_hash(scientific(same)) == run_hash(sci) and pt_identity(same) == pt_identity(base)
    other = compose(tmp_path, "pt_train.lr=0.5", "pt_train.max_steps=50000")
    assert scientific(other)["train"] == sci["train"]  # FT settings untouched
    assert (scientific(other)["pt_train"]["lr"], pt_identity(other)["train"]["max_steps"]) == (0.5, 50000)
    assert run_hash(pt_identity(other)) != run_hash(pt_identity(base))
    # PT with pt_train.lr=X is the PT of a job whose train.lr is X
    assert pt_identity(other) == pt_identity(compose(tmp_path, "train.lr=0.5", "train.max_steps=50000"))
    # STL trains no PT: pt_train is not part of its identity
    stl = ["dln.mode=stl", "pt_train.lr=0.5"]
    assert run_hash(scientific(compose(tmp_path, *stl))) == run_hash(scientific(compose(tmp_path, "dln.mode=stl")))


def test_committed_demo_runs_keep_their_run_hashes():
    """results/demo/demo_dln.csv (ptft-aggregate of a real sweep): each run's config columns give its run_hash."""
    with open(REPO / "results" / "demo" / "demo_dln.csv") as f:
        rows = {r["run_hash"]: r for r in csv.DictReader(f)}
    assert len(rows) >= 10
    for h, r in rows.items():
        ov = [f"{k}={v.replace(' ', '').replace('False', 'false').replace('True', 'true')}" for k, v in r.items()
              if k.split(".")[0] in ("dln", "train") and v != ""]
        cfg = app.compose_fast("dln", ov + [f"seed={r['seed']}", "name=demo"])
        assert run_hash(scientific(cfg)) == h, r


def test_pt_uses_pt_train_and_a_missed_criterion_is_reported(tmp_path, capsys):
    # train.lr=0.2 for FT, pt_train.lr=0.05 for PT with a budget too small for its threshold
    ov = ["train.lr=0.2", "pt_train.lr=0.05", "pt_train.max_steps=30", "pt_train.threshold=1e-9"]
    run, res = run_job(compose(tmp_path / "a", *ov))
    out = capsys.readouterr().out
    warn = [line for line in out.splitlines() if "PT missed its criterion" in line]
    assert len(warn) == 1 and "1e-09" in warn[0] and "2 of 2 seeds" in warn[0], out
    for m in res["members"]:
        assert (m["pt_status"], m["pt_steps"]) == ("max_steps", 30) and m["pt_train_mse"] > 1e-9
    on_disk = json.loads(run.file("result.json").read_text())
    assert [m["pt_status"] for m in on_disk["members"]] == ["max_steps"] * 2
    rows = aggregate.collect(tmp_path / "a")
    assert [(r["pt_status"], r["pt_steps"]) for r in rows] == [("max_steps", 30)] * 2
    assert all(r["pt_train.lr"] == 0.05 for r in rows)
    # the same PT from a job that trains everything at lr 0.05 for 30 steps: PT used pt_train, not train
    ref = ["train.lr=0.05", "train.max_steps=30", "train.threshold=1e-9"]
    run_job(compose(tmp_path / "b", *ref))
    keys = [{p.parent.name for p in _pt_files(tmp_path / r)} for r in ("a", "b")]
    assert keys[0] == keys[1] and len(keys[0]) == 1  # one PT store key
    for fa, fb in zip(_pt_files(tmp_path / "a"), _pt_files(tmp_path / "b")):
        sa, sb = read_checkpoint(fa), read_checkpoint(fb)
        for k in ("wp", "wm", "vp", "vm"):
            assert torch.equal(sa[k], sb[k])
    # a PT that meets its criterion is ok and prints nothing
    capsys.readouterr()
    run_job(compose(tmp_path / "c", "pt_train.lr=0.5", "pt_train.max_steps=20000", "pt_train.threshold=1e-3"))
    res = json.loads(next((tmp_path / "c" / "dln").glob("*/result.json")).read_text())
    assert all(m["pt_status"] == "ok" and m["pt_train_mse"] < 1e-3 for m in res["members"])
    assert "PT missed" not in capsys.readouterr().out


def test_multi_configuration_jobs_share_the_pt_and_carry_its_status(tmp_path):
    ov = ["pt_train.lr=0.05", "pt_train.max_steps=30", "pt_train.threshold=1e-9",
          "dln.configs=[{alpha: 0.2, n_ft: null},{alpha: 0.3, n_ft: null}]"]
    out = run_multi(compose(tmp_path, *ov))
    assert len(out) == 2 and len(_pt_files(tmp_path)) == 2  # two seeds, one PT each, shared by both configurations
    for _, res in out:
        assert [(m["pt_status"], m["pt_steps"]) for m in res["members"]] == [("max_steps", 30)] * 2
