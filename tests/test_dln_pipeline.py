"""The `ptft-dln` pipeline end to end: run store, resume, batching, bad input, multirun, wandb."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptft import ConfigError, app
from ptft.dln.main import run_job

SMALL = ["dln.dim=120", "dln.alpha=0.4", "wandb.mode=disabled"]


def compose(tmp_path, *ov):
    return app.compose("dln", [f"store.root={tmp_path}", *SMALL, *ov])


def test_result_has_the_documented_fields_and_converges(tmp_path):
    run, res = run_job(compose(tmp_path))
    assert res["status"] == "ok" and res["train_mse"] < 1e-4
    for k in ("steps", "test_mse", "param_mse", "beta_l1", "c_drift", "lam_drift", "seed"):
        assert k in res
    # test error is the parameter error in expectation (x ~ N(0, I/D)): ||b - b*||^2 / D
    assert res["test_mse"] == pytest.approx(res["param_mse"], rel=0.1)
    assert (run.path / "config.yaml").exists() and (run.path / "metrics.jsonl").exists()
    assert not (run.path / "checkpoint.pt").exists()  # a finished run keeps no checkpoint


def test_finished_run_is_skipped_and_force_reruns(tmp_path):
    run, res = run_job(compose(tmp_path))
    mtime = (run.path / "result.json").stat().st_mtime_ns
    run2, res2 = run_job(compose(tmp_path))
    assert run2.path == run.path and res2 == res
    assert (run.path / "result.json").stat().st_mtime_ns == mtime  # not rewritten: no training
    run3, res3 = run_job(compose(tmp_path, "force=true"))
    assert (run.path / "result.json").stat().st_mtime_ns != mtime
    assert {**res3, "provenance": None} == {**res, "provenance": None}  # deterministic (times differ)


def test_run_identity_ignores_logging_keys_but_not_science(tmp_path):
    a, _ = run_job(compose(tmp_path))
    b, _ = run_job(compose(tmp_path, "train.log_every=7", "name=other"))
    c, _ = run_job(compose(tmp_path, "dln.gamma=0.5"))
    assert a.path == b.path and a.path != c.path


def test_batched_seeds_match_separate_runs(tmp_path):
    _, batched = run_job(compose(tmp_path, "dln.seeds=[0,1,2]"))
    assert [m["seed"] for m in batched["members"]] == [0, 1, 2]
    for m in batched["members"]:
        _, single = run_job(compose(tmp_path, f"seed={m['seed']}"))
        assert single["steps"] == m["steps"]
        for k in ("train_mse", "test_mse", "param_mse", "beta_l1"):
            assert single[k] == pytest.approx(m[k], rel=1e-9, abs=1e-12)


def test_converged_member_stops_while_others_go_on(tmp_path):
    _, res = run_job(compose(tmp_path, "dln.seeds=[0,1,2,3]"))
    steps = [m["steps"] for m in res["members"]]
    assert len(set(steps)) > 1  # each member stopped at its own step
    assert all(m["train_mse"] < 1e-4 for m in res["members"])


def test_stl_and_trained_pretraining_modes(tmp_path):
    _, stl = run_job(compose(tmp_path, "dln.mode=stl"))
    assert stl["status"] == "ok"
    _, trained = run_job(compose(tmp_path, "dln.pt=train", "dln.alpha_pt=1.5"))
    _, exact = run_job(compose(tmp_path))
    assert trained["status"] == "ok" and trained["pt_status"] == "ok"
    # finite but ample PT data reaches the same PT end state, hence nearly the same FT solution
    assert trained["param_mse"] == pytest.approx(exact["param_mse"], rel=0.05, abs=1e-4)


def test_divergence_is_reported_never_ok(tmp_path):
    run, res = run_job(compose(tmp_path, "train.lr=500"))
    assert res["status"] == "diverged"
    assert json.loads((run.path / "result.json").read_text())["status"] == "diverged"


def test_max_steps_is_not_ok(tmp_path):
    _, res = run_job(compose(tmp_path, "train.max_steps=5"))
    assert res["status"] == "max_steps" and res["steps"] == 5


@pytest.mark.parametrize("override,key", [
    ("dln.lam_pt=1.5", "dln.lam_pt"), ("dln.lam_pt=-1.01", "dln.lam_pt"), ("dln.c_pt=0", "dln.c_pt"),
    ("dln.c_pt=-1", "dln.c_pt"), ("dln.gamma=-0.1", "dln.gamma"), ("dln.alpha=0", "dln.alpha"),
    ("dln.alpha=-0.2", "dln.alpha"), ("dln.rho_ft=0.5", "dln.omega"), ("dln.mode=foo", "dln.mode"),
    ("dln.pt=bar", "dln.pt"), ("train.lr=0", "train.lr"), ("dln.seeds=[]", "dln.seeds"),
    ("wandb.mode=sometimes", "wandb.mode"),
])
def test_bad_values_fail_before_compute_and_write_nothing(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run_job(compose(tmp_path, override))
    assert not any(tmp_path.iterdir())


def test_infeasible_teacher_names_the_constraint(tmp_path):
    with pytest.raises(ConfigError, match="infeasible"):
        run_job(compose(tmp_path, "dln.rho_pt=0.9", "dln.rho_ft=0.5", "dln.omega=0"))


@pytest.mark.parametrize("override,needle", [("dln.lam_pt=2", "dln.lam_pt=2.0 must be in [-1, 1]"),
                                             ("dln.nope=1", "Key 'nope' not in 'DLNConfig'"),
                                             ("dln.dim=many", "could not be converted to Integer")])
def test_cli_bad_input_is_one_clear_message(tmp_path, cli, override, needle):
    p = cli("ptft-dln", override, "store.root=store", cwd=tmp_path)
    assert p.returncode != 0
    assert needle in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "store").exists()


def test_cli_defaults_print_run_dir_last(tmp_path, cli):
    p = cli("ptft-dln", "wandb.mode=disabled", cwd=tmp_path, check=True)
    last = p.stdout.strip().splitlines()[-1]
    res = json.loads((Path(last) / "result.json").read_text())
    assert res["status"] == "ok" and Path(last).is_relative_to(tmp_path / "runs" / "dln")
    p2 = cli("ptft-dln", "wandb.mode=disabled", cwd=tmp_path, check=True)
    assert "not training again" in p2.stdout and p2.stdout.strip().splitlines()[-1] == last


def test_kill_minus_9_then_rerun_resumes_bit_identical(tmp_path, cli, kill9_after_checkpoint):
    args = ["dln.dim=1500", "dln.alpha=0.3", "wandb.mode=disabled", "train.ckpt_every_s=0.3"]
    ref = cli("ptft-dln", *args, "store.root=ref", cwd=tmp_path, check=True)
    ref_dir = Path(ref.stdout.strip().splitlines()[-1])
    run_dir = tmp_path / "killed" / "dln" / ref_dir.name
    kill9_after_checkpoint("ptft-dln", [*args, "store.root=killed"], run_dir, tmp_path)
    again = cli("ptft-dln", *args, "store.root=killed", cwd=tmp_path, check=True)
    assert Path(again.stdout.strip().splitlines()[-1]) == run_dir
    assert json.loads((run_dir / "timing.json").read_text())["resumed"] is True
    results = [json.loads((d / "result.json").read_text()) for d in (run_dir, ref_dir)]
    assert [{**r, "provenance": None} for r in results][0] == {**results[1], "provenance": None}
    # the metrics stream is also the uninterrupted one (rows past the checkpoint were dropped)
    assert (run_dir / "metrics.jsonl").read_text() == (ref_dir / "metrics.jsonl").read_text()


def test_sigterm_writes_checkpoint_and_exits_then_resumes(tmp_path, cli):
    args = ["dln.dim=1500", "dln.alpha=0.3", "wandb.mode=disabled", "train.ckpt_every_s=0.2", "store.root=s"]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ptft-dln"), *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((tmp_path / "s" / "dln").glob("*/checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.05)  # training has started once the first cadence checkpoint exists
    (ckpt,) = list((tmp_path / "s" / "dln").glob("*/checkpoint.pt"))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by signal SIGTERM after writing a checkpoint" in err and "Traceback" not in err
    assert not (ckpt.parent / "result.json").exists()
    cli("ptft-dln", *args, cwd=tmp_path, check=True)
    assert json.loads((ckpt.parent / "result.json").read_text())["status"] == "ok"
    assert json.loads((ckpt.parent / "timing.json").read_text())["resumed"] is True


def test_multirun_and_offline_wandb_runs(tmp_path, cli):
    cli("ptft-dln", "-m", "dln.lam_pt=-0.99,0,0.99", "dln.omega=0,1", "dln.dim=80", "name=mr",
        cwd=tmp_path, env={"WANDB_MODE": "offline"}, check=True)
    results = sorted((tmp_path / "runs" / "dln").glob("*/result.json"))
    assert len(results) == 6
    assert all(json.loads(r.read_text())["status"] == "ok" for r in results)
    offline = sorted((tmp_path / "runs" / "dln").glob("*/wandb/offline-run-*"))
    assert len(offline) == 6
    for r in results:  # each offline run holds the metrics stream
        assert any(f.suffix == ".wandb" and f.stat().st_size > 0 for f in (r.parent / "wandb").rglob("*.wandb"))
    assert len(list((tmp_path / "multirun" / "mr").iterdir())) == 1


def test_wandb_disabled_writes_nothing(tmp_path, cli):
    cli("ptft-dln", "dln.dim=80", cwd=tmp_path, env={"WANDB_MODE": "disabled"}, check=True)
    assert not list(tmp_path.rglob("wandb"))
    assert not list(tmp_path.rglob("offline-run-*"))


def test_lr_cap_keeps_a_large_readout_scale_stable(tmp_path):
    # gamma = 10 puts c_FT = 50 on every coordinate: at n = 6 the paper's lr 0.5 is far above the
    # stability limit n / (2 c sigma_max^2) and gradient descent diverges; the cap makes it converge
    _, raw = run_job(compose(tmp_path, "dln.gamma=10", "dln.alpha=0.05"))
    assert raw["status"] == "diverged"
    _, capped = run_job(compose(tmp_path, "dln.gamma=10", "dln.alpha=0.05", "dln.lr_cap=true"))
    assert capped["status"] == "ok"
    # lazy regime III: the l2 min-norm interpolator, error close to 1 - alpha (up to finite-D noise)
    assert 0.5 < capped["param_mse"] < 1.5
    # without gamma the cap is inactive (lr 0.5 is stable) and the run is the same
    _, a = run_job(compose(tmp_path))
    _, b = run_job(compose(tmp_path, "dln.lr_cap=true"))
    assert a["steps"] == b["steps"] and a["test_mse"] == b["test_mse"]
