"""Lippl & Lindsey's DLN variant (docs/paper.md section 7): teachers, inputs, the rescaling re-initialisation,
the shared PT store, and the divergence policy (restart with lr / 10) of the trainer."""
import numpy as np
import pytest

from ptft import ConfigError, app
from ptft.dln.config import DLNConfig
from ptft.dln.cli import run_jobs
from ptft.dln.main import run_job, scientific
from ptft.dln.model import beta, finetune_rescale, init_state, pt_end_state
from ptft.dln import task as dln_task
from ptft.dln.task import DLNTask, member_data
from ptft.dln.teachers import make_inputs, make_ll_teachers
from ptft.train.trainer import MAX_RESTARTS, TrainConfig, Trainer

# the preset at a size a test can afford; everything else is the preset's
TINY = ["experiment=dln/ll_rescale", "dln.dim=60", "dln.k_pt=6", "dln.k_ft=3", "dln.overlap=3", "dln.n_pt=80",
        "dln.n_ft=12", "train.max_steps=3000", "train.threshold=1e-8", "pt_train.max_steps=3000",
        "pt_train.threshold=1e-8", "dln.seeds=[0,1]", "wandb.mode=disabled"]


def compose(root, *ov):
    return app.compose("dln", [f"store.root={root}", *TINY, *ov])


def test_ll_init_is_c_2e6_lambda_0():
    """LL start all four factors at 1e-3: in the suite's terms c = 2 * (1e-3)^2, lambda = 0."""
    st = init_state(2e-6, 0.0, (3, 7))
    for f in st:
        np.testing.assert_allclose(f, 1e-3, rtol=1e-12)
    cfg = app.compose("dln", ["experiment=dln/ll_rescale"])
    assert (cfg.dln.c_pt, cfg.dln.lam_pt) == (2e-6, 0.0)


@pytest.mark.parametrize("overlap", [0, 2, 5])
def test_ll_teachers(overlap):
    rng = np.random.default_rng(3)
    b_pt, b_ft = make_ll_teachers(200, 40, 5, overlap, rng)
    s_pt, s_ft = np.flatnonzero(b_pt), np.flatnonzero(b_ft)
    assert len(s_pt) == 40 and len(s_ft) == 5
    np.testing.assert_allclose(np.abs(b_pt[s_pt]), 1 / np.sqrt(40))
    np.testing.assert_allclose(np.abs(b_ft[s_ft]), 1 / np.sqrt(5))
    shared = np.intersect1d(s_pt, s_ft)
    assert len(shared) == overlap
    assert np.all(np.sign(b_ft[shared]) == np.sign(b_pt[shared]))  # shared coordinates keep the PT sign
    # the PT teacher is drawn first: the same for every FT task at a seed
    b_pt2, _ = make_ll_teachers(200, 40, 3, 0, np.random.default_rng(3))
    np.testing.assert_array_equal(b_pt, b_pt2)


def test_unit_norm_inputs_and_their_test_error():
    X = make_inputs(300, 50, np.random.default_rng(0), "unit_norm")
    np.testing.assert_allclose((X**2).mean(axis=1), 1.0, rtol=1e-12)
    # rows of mean square 1 with isotropic directions: E[(e . x)^2] = ||e||^2
    err = np.random.default_rng(1).normal(size=(2, 50))
    np.testing.assert_allclose(dln_task.test_mse(err, 20000, inputs="unit_norm"), (err**2).sum(axis=1), rtol=0.05)


def test_rescale_reinit_keeps_pathways_separate():
    rng = np.random.default_rng(0)
    st = pt_end_state(rng.normal(size=9), 1e-3, 0.3)
    ft = finetune_rescale(st, 0.01, 1e-5)
    np.testing.assert_allclose(ft.wp, 0.01 * st.wp)
    np.testing.assert_allclose(ft.wm, 0.01 * st.wm)
    assert np.all(ft.vp == 1e-5) and np.all(ft.vm == 1e-5)
    np.testing.assert_allclose(beta(ft), 1e-5 * 0.01 * (st.wp - st.wm))


def test_sample_counts_replace_alphas_and_old_identities_do_not_move():
    d = DLNConfig(dim=100, n_ft=17, alpha=0.9)
    m = member_data(d, 0)
    assert m.X.shape == (17, 100)
    base = app.compose("dln", [])
    sci = scientific(base)
    for k in ("teacher", "k_pt", "inputs", "n_ft", "ft_reinit", "w_rescale", "readout_const"):
        assert k not in sci["dln"]  # at their defaults the new keys leave a stored run's hash alone
    assert "restart_on_divergence" not in sci["train"] and "diverge_above" not in sci["train"]
    ll = scientific(app.compose("dln", ["experiment=dln/ll_rescale"]))
    assert "alpha" not in ll["dln"] and "alpha_pt" not in ll["dln"]  # replaced by n_ft / n_pt
    assert ll["dln"]["n_ft"] == 32 and ll["train"]["restart_on_divergence"] is True


def test_preset_runs_and_pt_is_trained_once_per_seed(tmp_path):
    run_a, a = run_job(compose(tmp_path, "dln.w_rescale=0.01", "dln.readout_const=1e-5"))
    (pt_dir,) = (tmp_path / "dln_pt").iterdir()
    files = sorted(pt_dir.glob("seed*.pt"))
    assert [f.name for f in files] == ["seed0.pt", "seed1.pt"]
    stamp = [f.stat().st_mtime_ns for f in files]
    # another FT job (other n_ft, other arm, other task) at the same seeds reuses the PT store
    run_b, b = run_job(compose(tmp_path, "dln.n_ft=20", "dln.overlap=0"))
    assert [f.stat().st_mtime_ns for f in files] == stamp
    assert [m["pt_steps"] for m in a["members"]] == [m["pt_steps"] for m in b["members"]]
    # a job with one more seed trains only that seed's PT
    run_job(compose(tmp_path, "dln.seeds=[0,1,2]"))
    assert [f.stat().st_mtime_ns for f in files] == stamp and (pt_dir / "seed2.pt").exists()
    assert not list(tmp_path.glob("dln/*/pt_state.pt"))  # nothing PT-related per FT run
    for m in a["members"]:
        assert m["restarts"] == 0 and m["lr_final"] == 0.1 and np.isfinite(m["test_mse"])
        assert m["pt_train_mse"] < 1e-3
    # the PT store holds no config.yaml: ptft-aggregate does not list it as a run
    from ptft.analysis import aggregate

    assert {r["stage"] for r in aggregate.collect(tmp_path)} == {"dln"}


def test_stl_starts_from_the_same_small_init(tmp_path):
    from ptft.dln.task import start_state

    cfg = compose(tmp_path, "dln.mode=stl")
    st = start_state(cfg.dln, [member_data(cfg.dln, 0)])
    for f in st:
        np.testing.assert_allclose(f, 1e-3, rtol=1e-12)
    assert not (tmp_path / "dln_pt").exists() or not list((tmp_path / "dln_pt").rglob("seed*.pt"))


@pytest.mark.parametrize("override,needle", [
    (["dln.overlap=4"], "dln.overlap=4"),                 # overlap > k_ft = 3
    (["dln.k_ft=61", "dln.overlap=0"], "dln.k_ft=61"),     # k_ft > D
    (["dln.w_rescale=0"], "dln.w_rescale"),
    (["dln.w_rescale=-1"], "dln.w_rescale"),
    (["dln.readout_const=-1e-6"], "dln.readout_const"),
    (["dln.ft_reinit=shrink"], "dln.ft_reinit"),
    (["dln.teacher=lippl"], "dln.teacher"),
    (["dln.inputs=sphere"], "dln.inputs"),
    (["dln.n_ft=0"], "dln.n_ft"),
    (["dln.pt=exact"], "dln.n_pt"),                       # n_pt only means something with pt=train
    (["train.diverge_above=0"], "train.diverge_above"),
])
def test_bad_ll_input_fails_before_compute_and_writes_nothing(tmp_path, override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        run_jobs(compose(tmp_path, *override))
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


# ---- divergence policy ---------------------------------------------------------------------------

def _task(seeds, lr_high: bool):
    """Tiny DLN fine-tuning whose step at lr = 40 diverges for seed 0 (loss > 100 within a few steps)."""
    d = DLNConfig(dim=30, n_ft=10, mode="stl", c_pt=0.5, teacher="ll", k_pt=4, k_ft=3, overlap=3, inputs="unit_norm")
    ms = [member_data(d, s) for s in seeds]
    return DLNTask([m.X for m in ms], [m.y for m in ms], init_state(d.c_pt, 0.0, (len(ms), d.dim)))


def _cfg(lr, **kw):
    return TrainConfig(lr=lr, threshold=1e-12, max_steps=20000, log_every=10**9, **kw)


@pytest.mark.parametrize("seeds", [[0], [0, 1]])  # one model (torch.optim) and batched members (masked step)
def test_restart_on_divergence_equals_a_run_started_at_the_final_lr(seeds):
    task = _task(seeds, True)
    out = Trainer(task, _cfg(4.0, restart_on_divergence=True, diverge_above=100.0)).run()
    assert out["restarts"][0] >= 1, out
    lr_final = out["lr_final"][0]
    assert lr_final == 4.0 / 10 ** out["restarts"][0]
    assert out["status"][0] == "converged"
    ref_task = _task([seeds[0]], False)
    ref = Trainer(ref_task, _cfg(lr_final)).run()
    assert ref["status"] == ["converged"] and ref["steps"][0] == out["steps"][0]  # steps since the restart
    np.testing.assert_allclose(task.beta().detach().numpy()[0], ref_task.beta().detach().numpy()[0],
                               rtol=1e-10, atol=1e-13)
    # without the policy the same run stops as diverged
    plain = Trainer(_task(seeds, True), _cfg(4.0, diverge_above=100.0)).run()
    assert plain["status"][0] == "diverged" and "restarts" not in plain


def test_restarts_are_bounded_and_resume_from_a_checkpoint(tmp_path):
    task = _task([0], True)
    out = Trainer(task, _cfg(1e6, restart_on_divergence=True, diverge_above=1e-9)).run()
    assert out["status"] == ["diverged"] and out["restarts"] == [MAX_RESTARTS]
    # a run killed after a restart resumes from its checkpoint with the reduced lr: same result
    cfg = TrainConfig(**{**vars(_cfg(4.0, restart_on_divergence=True, diverge_above=100.0)), "log_every": 50})
    full_task = _task([0, 1], True)
    full = Trainer(full_task, cfg).run()
    ck = tmp_path / "ck.pt"

    class Killed(Exception):
        pass

    cut = Trainer(_task([0, 1], True), cfg, checkpoint=ck)

    def kill(step, row):
        if int(cut.restarts[0]) >= 1 and step >= 100:
            cut.save_checkpoint()
            raise Killed

    cut._log = kill
    with pytest.raises(Killed):
        cut.run()
    resumed_task = _task([0, 1], True)
    tr = Trainer(resumed_task, cfg, checkpoint=ck)
    assert tr.try_resume() and int(tr.restarts[0]) >= 1
    out = tr.run()
    assert out["lr_final"] == full["lr_final"] and out["restarts"] == full["restarts"] and out["steps"] == full["steps"]
    np.testing.assert_array_equal(resumed_task.beta().detach().numpy(), full_task.beta().detach().numpy())
