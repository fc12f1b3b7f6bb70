"""Multi-configuration DLN jobs (dln.configs) on the shared-X engine: each configuration's run equals
its single-configuration job, on a grid that mixes converging, slow, diverging and capped members."""
import json

import numpy as np
import pytest
import torch

from ptft import ConfigError, app
from ptft.dln.cli import run_jobs
from ptft.dln.main import run_job
from ptft.dln.multi import member_configs
from ptft.dln.sharedx import Member, SharedXEngine
from ptft.dln.task import ft_inputs, member_data, start_state

BASE = ["dln.dim=120", "dln.alpha=0.4", "wandb.mode=disabled", "dln.seeds=[0,1]", "train.max_steps=5000"]
# fast (default), slow enough to hit max_steps (rich FT onto new features), diverging (gamma = 10 at
# lr 0.5), the same with the step capped, PT-dependent rich, single-task learning
GRID = {"{}": [], "{c_pt:1e-6,omega:0.0}": ["dln.c_pt=1e-6", "dln.omega=0.0"], "{gamma:10.0}": ["dln.gamma=10.0"],
        "{gamma:10.0,lr_cap:true}": ["dln.gamma=10.0", "dln.lr_cap=true"],
        "{lam_pt:-0.99,omega:0.5}": ["dln.lam_pt=-0.99", "dln.omega=0.5"], "{mode:stl}": ["dln.mode=stl"]}


def compose(root, *ov):
    return app.compose("dln", [f"store.root={root}", *BASE, *ov])


def configs_arg(entries):
    return "dln.configs=[" + ",".join(entries) + "]"


def assert_same_members(multi, single):
    assert multi["status"] == single["status"]
    for m, s in zip(multi["members"], single["members"]):
        assert m["seed"] == s["seed"] and m["status"] == s["status"]
        assert abs(m["steps"] - s["steps"]) <= 1
        if m["status"] != "diverged":
            for k in ("test_mse", "train_mse", "param_mse", "beta_l1"):
                assert m[k] == pytest.approx(s[k], rel=1e-8, abs=1e-14), k


def test_each_configuration_equals_its_single_job(tmp_path):
    multi = run_jobs(compose(tmp_path / "m", configs_arg(GRID)))
    statuses = set()
    for (run, res), ov in zip(multi, GRID.values()):
        srun, single = run_job(compose(tmp_path / "s", *ov))
        assert run.path.name == srun.path.name  # the same run identity (hash of the scientific config)
        assert (run.path / "config.yaml").read_text().replace(str(tmp_path / "m"), "R") == \
            (srun.path / "config.yaml").read_text().replace(str(tmp_path / "s"), "R")
        assert set(res) == set(single)
        assert_same_members(res, single)
        assert (run.path / "metrics.jsonl").exists() and not (run.path / "checkpoint.pt").exists()
        statuses |= {m["status"] for m in res["members"]}
    assert statuses == {"ok", "diverged", "max_steps"}  # the grid really mixes the three endings
    # a configuration's result is written when its own members stop, not at the end of the job
    its = [json.loads((r.path / "timing.json").read_text())["job_iterations"] for r, _ in multi]
    assert its[0] < its[1] == 5000


def engine_members(entries) -> tuple[dict, list[Member]]:
    """The inputs (one X per seed) and engine members of `entries` at seeds 0 and 1."""
    X, members = {}, []
    for c in member_configs(compose("unused", configs_arg(entries))):
        data = [member_data(c.dln, s, X.setdefault(s, ft_inputs(c.dln, s))) for s in (0, 1)]
        st = start_state(c.dln, data)
        members += [Member(s, m.y, type(st)(*(f[b] for f in st))) for b, (s, m) in enumerate(zip((0, 1), data))]
    return X, members


def test_device_style_masked_stepping_equals_host_compaction():
    """The GPU code path (stops masked on the device, compaction every sync_every steps) on the CPU."""
    X, members = engine_members(GRID)
    out = []
    for sync in (1, 7):
        eng = SharedXEngine(X, members, lr=0.5, threshold=1e-4, max_steps=3000, sync_every=sync)
        eng.run()
        out.append(eng.snapshot())
    (f1, s1, st1, l1), (f2, s2, st2, l2) = out
    assert st1 == st2 and list(s1) == list(s2)
    ok = np.array([s != "diverged" for s in st1])
    for a, b in zip(f1, f2):
        np.testing.assert_allclose(a[ok], b[ok], rtol=1e-10, atol=1e-14)


def test_block_stepping_is_bit_identical_to_lockstep_and_reports_every_log_step():
    """CPU groups run `block` iterations each in turn (their X stays in cache): every member's factors,
    status and steps are the same bits as in lockstep (block 1), with max_steps falling inside a block,
    and on_step still sees every multiple of `every`."""
    X, members = engine_members(GRID)
    out, seen = [], []
    for block in (1, 5, 64):
        eng = SharedXEngine(X, members, lr=0.5, threshold=1e-4, max_steps=2999, block=block)
        ts = []
        eng.run(lambda e: ts.append(e.t), every=100)
        out.append(eng.snapshot())
        seen.append(ts)
    eng = SharedXEngine(X, members, lr=0.5, threshold=1e-4, max_steps=2999)  # CPU default: blocks, no `every`
    eng.run()
    out.append(eng.snapshot())
    f1, s1, st1, l1 = out[0]
    assert {"converged", "diverged", "max_steps"} <= set(st1)
    for f, s, st, l in out[1:]:
        assert st == st1 and list(s) == list(s1)
        for a, b in zip(f, f1):
            assert np.array_equal(a, b, equal_nan=True)
        assert np.array_equal(l, l1, equal_nan=True)
    for block, ts in zip((1, 5, 64), seen):
        assert ts == sorted(set(ts)) and np.diff([0] + ts).max() <= block
        assert set(range(100, ts[-1] + 1, 100)) <= set(ts)
    ts = []  # an X larger than the cache (here: any X) gains nothing from blocks: on_step every iteration
    SharedXEngine(X, members, lr=0.5, threshold=1e-4, max_steps=300, block=64, fused_min_bytes=0).run(
        lambda e: ts.append(e.t))
    assert ts == list(range(1, len(ts) + 1))
    with pytest.raises(ValueError, match="block"):
        SharedXEngine(X, members, lr=0.5, threshold=1e-4, max_steps=10, block=0)


def test_fused_pass_over_x_equals_two_products():
    """The one-pass (row blocks) step used when X does not fit in cache gives the same trajectories."""
    X, members = engine_members(["{}", "{lam_pt:-0.99,omega:0.5}", "{gamma:10.0}"])
    out = []
    for fused_bytes in (float("inf"), 0):
        eng = SharedXEngine(X, members, lr=0.5, threshold=1e-4, max_steps=3000, fused_min_bytes=fused_bytes,
                            fused_rows=7)
        eng.run()
        out.append(eng.snapshot())
    (f1, s1, st1, _), (f2, s2, st2, _) = out
    assert st1 == st2 and "diverged" in st1 and np.abs(np.array(s1) - np.array(s2)).max() <= 1
    ok = np.array([s != "diverged" for s in st1])
    for a, b in zip(f1, f2):
        np.testing.assert_allclose(a[ok], b[ok], rtol=1e-8, atol=1e-12)


def test_finished_configurations_are_skipped_and_single_jobs_find_them(tmp_path):
    entries = ["{}", "{gamma:1.0}"]
    first = run_jobs(compose(tmp_path, configs_arg(entries)))
    mtimes = [(r.path / "result.json").stat().st_mtime_ns for r, _ in first]
    again = run_jobs(compose(tmp_path, configs_arg(entries + ["{lam_pt:0.5}"])))
    assert [r.path for r, _ in again[:2]] == [r.path for r, _ in first]
    assert [(r.path / "result.json").stat().st_mtime_ns for r, _ in again[:2]] == mtimes  # not retrained
    assert again[2][1]["status"] == "ok"
    run, res = run_job(compose(tmp_path, "dln.gamma=1.0"))
    assert run.path == first[1][0].path and res == first[1][1]


def test_resumes_a_configuration_from_its_trainer_checkpoint(tmp_path):
    """A single job preempted mid-run leaves a trainer checkpoint; the multi job resumes from it."""
    import os
    import signal

    from ptft.dln.task import DLNTask
    from ptft.train.trainer import Preempted, Trainer

    entries = configs_arg(["{}", "{c_pt:1e-6,omega:0.0}"])
    ref = run_jobs(compose(tmp_path / "ref", entries))
    c = member_configs(compose(tmp_path / "cut", entries))[1]
    ckpt = tmp_path / "cut" / "dln" / ref[1][0].path.name / "checkpoint.pt"
    data = [member_data(c.dln, s) for s in (0, 1)]
    task = DLNTask([m.X for m in data], [m.y for m in data], start_state(c.dln, data))
    tcfg = c.train.copy()
    tcfg.log_every, tcfg.ckpt_every_s = 1000, 0
    sig = lambda step, row: os.kill(os.getpid(), signal.SIGUSR1)  # noqa: E731  (preempted at step 1000)
    with pytest.raises(Preempted):
        Trainer(task, tcfg, checkpoint=ckpt, log=sig).run()
    resumed = run_jobs(compose(tmp_path / "cut", entries))
    assert json.loads((resumed[1][0].path / "timing.json").read_text())["resumed"] is True
    assert json.loads((resumed[0][0].path / "timing.json").read_text())["resumed"] is False
    assert_same_members(resumed[1][1], ref[1][1])
    assert not ckpt.exists()


@pytest.mark.parametrize("entries,needle", [
    (["{nope:1}"], r"dln.configs\[0\] has key\(s\) \['nope'\]"),
    (["{}", "{seeds:[1]}"], r"dln.configs\[1\] has key\(s\) \['seeds'\]"),
    (["{lam_pt:2.0}"], r"dln.configs\[0\]: dln.lam_pt=2.0 must be in \[-1, 1\]"),
    (["{dim:many}"], r"dln.configs\[0\]: .*many"),
    (["{gamma:0.0}", "{}"], r"dln.configs\[1\] is the same run as dln.configs\[0\]"),
    ([], r"dln.configs=\[\] is empty"),
])
def test_bad_configurations_fail_before_compute_and_write_nothing(tmp_path, entries, needle):
    with pytest.raises(ConfigError, match=needle):
        run_jobs(compose(tmp_path, configs_arg(entries)))
    assert not any(tmp_path.iterdir())


def test_cli_spelling_prints_one_run_dir_per_configuration(tmp_path, cli):
    p = cli("ptft-dln", "dln.dim=60", "wandb.mode=disabled", "dln.configs=[{c_pt:1e-3},{c_pt:1.0,omega:0.0}]",
            "dln.seeds=[0,1]", cwd=tmp_path, check=True)
    dirs = [ln for ln in p.stdout.splitlines() if ln.startswith(str(tmp_path))]
    assert len(dirs) == 2
    for d in dirs:
        res = json.loads((tmp_path / d / "result.json").read_text())
        assert res["status"] == "ok" and [m["seed"] for m in res["members"]] == [0, 1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_engine_matches_cpu(tmp_path):
    entries = configs_arg(["{}", "{c_pt:1e-6,omega:0.0}", "{gamma:10.0}", "{lam_pt:-0.99,omega:0.5}"])
    cpu = run_jobs(compose(tmp_path / "cpu", entries))
    gpu = run_jobs(compose(tmp_path / "gpu", entries, "device=cuda"))
    for (_, a), (_, b) in zip(cpu, gpu):
        assert_same_members(b, a)


def test_panel_presets_hold_the_drivers_points(tmp_path):
    """experiment=dln/panel_X at one alpha: one job whose configurations are the panel's curves, with the
    run directories ptft.analysis.dln_sims uses for those points."""
    from ptft.analysis.dln_sims import job_overrides
    from ptft.analysis.panels import PANELS, curve_config
    from ptft.dln.main import scientific
    from ptft.train.store import run_hash

    for p, (_, curves) in PANELS.items():
        cfg = app.compose("dln", [f"experiment=dln/panel_{p}", "dln.alpha=0.108", f"store.root={tmp_path}"])
        got = sorted(run_hash(scientific(c)) for c in member_configs(cfg))
        want = sorted(run_hash(scientific(app.compose("dln", job_overrides(curve_config(c), 0.108, 1000, 5,
                                                                             str(tmp_path)))))
                      for c in curves)
        assert got == want, p
