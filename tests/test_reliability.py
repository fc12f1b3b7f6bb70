"""Reliability (issue 11): bad input ends in one line before compute, damaged files are moved aside
and the run recovers, a full disk leaves the previous files intact, every result says what made it."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ptft import ConfigError, app
from ptft.analysis import aggregate as agg
from ptft.dln.cli import main as dln_main
from ptft.dln.main import run_job, scientific
from ptft.train import store
from ptft.train.store import RunDir, StoreError, read_checkpoint
from ptft.train.trainer import Preempted, TrainConfig, Trainer

SMALL = ["dln.dim=60", "dln.alpha=0.4", "wandb.mode=disabled"]
PROV_KEYS = ("ptft_version", "git_commit", "git_dirty", "torch", "cuda", "device", "host", "start", "end", "wall_s")


def compose(root: Path, *ov: str):
    return app.compose("dln", [f"store.root={root}", *SMALL, *ov])


def science(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "provenance"}


def run_cli(monkeypatch, capsys, main, *argv: str) -> tuple[int, str]:
    """A console script in-process: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# the five failures of the issue
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override,needle", [
    ("dln.alpha=inf", "dln.alpha=inf must be a finite number"),        # was: OverflowError traceback
    ("seed=-1", "seed=-1 must be an integer in [0, 2**63 - 1]"),       # was: numpy traceback
    ("dln.c_pt=1e400", "dln.c_pt=inf must be a finite number"),        # was: trained, status diverged
    ("train.lr=inf", "train.lr=inf must be a finite number"),          # was: trained, status diverged
    ("store.root=/proc/nope", "store.root=/proc/nope: cannot create"),  # was: FileNotFoundError traceback
])
def test_issue_failures_end_in_one_line_exit_2_and_no_run_dir(tmp_path, monkeypatch, capsys, override, needle):
    monkeypatch.chdir(tmp_path)
    args = [*SMALL, *( [] if override.startswith("store.") else ["store.root=st"]), override]
    code, err = run_cli(monkeypatch, capsys, dln_main, *args)
    assert code == 2
    assert err.strip() == f"ptft: error: {err.strip()[len('ptft: error: '):]}" and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # no run store, no Hydra output dir


def test_issue_failures_from_the_real_console_script(tmp_path, cli):
    p = cli("ptft-dln", "dln.alpha=inf", "store.root=/proc/nope", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip() == "ptft: error: dln.alpha=inf must be a finite number"
    assert not any(tmp_path.iterdir())


def test_bad_value_inside_a_sweep_fails_before_any_job(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(monkeypatch, capsys, dln_main, "-m", *SMALL, "dln.alpha=0.2,0.3,inf", "store.root=st")
    assert code == 2 and "dln.alpha=inf" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_preset_sweep_values_are_checked(monkeypatch, tmp_path):
    """experiment presets put their sweep in hydra.sweeper.params: it is prechecked too."""
    monkeypatch.chdir(tmp_path)
    seen = []
    monkeypatch.setattr(app, "check", lambda name, ov: seen.append(list(ov)) or app.compose_fast(name, ov))
    app.precheck("dln", ["-m", "experiment=dln/panel_a", "dln.c_pt=1e-3"])
    alphas = {o for combo in seen for o in combo if o.startswith("dln.alpha=")}
    assert len(alphas) == 11 and all("dln.c_pt=1e-3" in combo for combo in seen)
    assert not any(tmp_path.iterdir())  # the store root was probed, not made


# ------------------------------------------------------------------------------------------------
# damaged checkpoint
# ------------------------------------------------------------------------------------------------
class Quad:
    """B least-squares members, minibatches drawn from (seed, epoch): resumable bit for bit."""

    def __init__(self, B=2, n=32, d=4, batch=8):
        g = torch.Generator().manual_seed(0)
        self.X = torch.randn(B, n, d, generator=g, dtype=torch.float64)
        self.y = torch.einsum("bnd,bd->bn", self.X, torch.randn(B, d, generator=g, dtype=torch.float64))
        self.w = torch.zeros(B, d, dtype=torch.float64, requires_grad=True)
        self.n_members, self.n, self.batch, self.full_batch = B, n, batch, False
        self.stop_at: set[int] = set()
        self.calls = 0

    def parameters(self):
        return [self.w]

    def batches(self, epoch):
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(1000 + epoch))
        for i in range(0, self.n, self.batch):
            self.calls += 1
            if self.calls in self.stop_at:
                os.kill(os.getpid(), signal.SIGUSR1)
            yield perm[i:i + self.batch]

    def loss(self, idx):
        r = torch.einsum("bnd,bd->bn", self.X[:, idx], self.w) - self.y[:, idx]
        return (r * r).mean(1)

    def evaluate(self):
        return {"mse": self.loss(torch.arange(self.n)).detach()}

    def state_dict(self):
        return {"w": self.w.detach().clone()}

    def load_state_dict(self, s):
        with torch.no_grad():
            self.w.copy_(s["w"])


CFG = dict(lr=0.05, momentum=0.9, threshold=1e-10, max_epochs=60, ckpt_every_s=0)


def _two_checkpoints(ck: Path) -> None:
    """A run preempted twice: checkpoint.prev.pt from the first stop, checkpoint.pt from the second."""
    task = Quad()
    task.stop_at = {10, 30}
    for _ in range(2):
        tr = Trainer(task, TrainConfig(**CFG), checkpoint=ck)
        tr.try_resume()
        with pytest.raises(Preempted):
            tr.run()
    assert read_checkpoint(ck)["step"] > read_checkpoint(store.previous_checkpoint(ck))["step"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_checkpoint_resumes_from_the_previous_one_and_equals_an_uninterrupted_run(tmp_path, capsys,
                                                                                          damage):
    ref = Quad()
    ref_out = Trainer(ref, TrainConfig(**CFG)).run()
    ck = tmp_path / "checkpoint.pt"
    _two_checkpoints(ck)
    prev_step = read_checkpoint(store.previous_checkpoint(ck))["step"]
    data = ck.read_bytes()
    if damage == "truncate":
        ck.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # torch.load alone reads this without complaint: the sha256 catches it
        b = bytearray(data)
        b[len(b) // 2] ^= 0xFF
        ck.write_bytes(bytes(b))
    else:
        ck.write_bytes(b"\0" * 100)
    capsys.readouterr()
    task = Quad()
    tr = Trainer(task, TrainConfig(**CFG), checkpoint=ck)
    assert tr.try_resume() and tr.step == prev_step
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "checkpoint.pt is unreadable" in out[0] and "resuming from" in out[0]
    assert (tmp_path / "checkpoint.pt.damaged-1").read_bytes() != data or damage == "garbage"
    assert tr.run() == ref_out and torch.equal(task.w, ref.w)


def test_both_checkpoints_damaged_starts_over_and_keeps_them(tmp_path, capsys):
    ref = Quad()
    ref_out = Trainer(ref, TrainConfig(**CFG)).run()
    ck = tmp_path / "checkpoint.pt"
    _two_checkpoints(ck)
    for p in (ck, store.previous_checkpoint(ck)):
        p.write_bytes(p.read_bytes()[:100])
    capsys.readouterr()
    task = Quad()
    tr = Trainer(task, TrainConfig(**CFG), checkpoint=ck)
    assert not tr.try_resume() and tr.step == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "starting the run over" in out[0]
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint.pt.damaged-1", "checkpoint.prev.pt.damaged-1"}
    assert tr.run() == ref_out and torch.equal(task.w, ref.w)


def test_pipeline_with_a_damaged_checkpoint_finishes_with_the_uninterrupted_result(tmp_path, capsys):
    _, ref = run_job(compose(tmp_path / "ref"))
    cfg = compose(tmp_path / "st")

    run = RunDir(tmp_path / "st", "dln", scientific(cfg))
    run.path.mkdir(parents=True)
    (run.path / "checkpoint.pt").write_bytes(b"PK\x03\x04 half a zip")
    _, res = run_job(cfg)
    assert science(res) == science(ref)
    assert "starting the run over" in capsys.readouterr().out
    assert (run.path / "checkpoint.pt.damaged-1").read_bytes() == b"PK\x03\x04 half a zip"
    assert not (run.path / "checkpoint.pt").exists() and not (run.path / "checkpoint.prev.pt").exists()


# ------------------------------------------------------------------------------------------------
# damaged result.json / config.yaml / artifacts
# ------------------------------------------------------------------------------------------------
def _finished(tmp_path: Path):
    run, res = run_job(compose(tmp_path))
    return run, res


@pytest.mark.parametrize("what", ["truncated", "not-an-object", "other-run", "config-garbage", "config-other-run"])
def test_damaged_result_or_config_is_never_served_and_the_run_reruns(tmp_path, capsys, what):
    run, res = _finished(tmp_path)
    r, c = run.path / "result.json", run.path / "config.yaml"
    if what == "truncated":
        r.write_text(r.read_text()[:40])
    elif what == "not-an-object":
        r.write_text("[1, 2]")
    elif what == "other-run":
        d = json.loads(r.read_text())
        d["provenance"]["run_hash"] = "0123456789ab"
        r.write_text(json.dumps(d))
    elif what == "config-garbage":
        c.write_bytes(b"dln: [unclosed\n\xff\xfe")
    else:
        c.write_text(c.read_text().replace(run.run_hash, "0123456789ab", 1))
    damaged = (c if what.startswith("config") else r).read_bytes()
    capsys.readouterr()
    run2, res2 = run_job(compose(tmp_path))
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "moved aside" in ln]
    assert len(lines) == 1 and "runs again" in lines[0] and "not training again" not in out
    assert science(res2) == science(res) and json.loads(r.read_text())["provenance"]["run_hash"] == run.run_hash
    kept = run.path / (("config.yaml" if what.startswith("config") else "result.json") + ".damaged-1")
    assert kept.read_bytes() == damaged  # kept, never deleted


def test_damaged_artifact_is_detected_by_its_recorded_sha256(tmp_path, capsys):
    run = RunDir(tmp_path, "pretrain", {"x": 1})
    with run.lock():
        run.write_config("a: 1\n")
        store.atomic_write_bytes(run.file("model.pt"), b"weights" * 100)
        run.write_result({"status": "ok", "steps": 1, "epochs": 1, "train_loss": 0.5})  # a valid pretrain result
    assert run.finished
    assert json.loads(run.file("result.json").read_text())["provenance"]["files"]["model.pt"] == \
        store.sha256_file(run.file("model.pt"))
    run.file("model.pt").write_bytes(b"weights" * 50)  # truncated copy
    assert not run.finished
    line = capsys.readouterr().out.strip()
    assert "model.pt does not match its sha256" in line and "runs again" in line
    assert sorted(p.name for p in run.path.iterdir()) == ["config.yaml", "model.pt.damaged-1", "result.json.damaged-1"]


@pytest.mark.slow
def test_finetune_retrains_a_damaged_pretrained_model_under_the_lock(tmp_path, capsys):
    from ptft.vision import synthetic
    from ptft.pipeline.main import run_finetune

    synthetic.generate(tmp_path / "data", "cifar100", n_train_per_class=4, n_test_per_class=2, seed=0)
    ov = [f"data.root={tmp_path / 'data'}", f"store.root={tmp_path / 'st'}", "model.width=4", "wandb.mode=disabled",
          "runtime.device=cpu", "pretrain.train.max_epochs=1", "train.max_epochs=1", "data.n_ft=6"]
    (_, first), = run_finetune(app.compose("finetune", ov))
    model = next((tmp_path / "st" / "pretrain").glob("*/model.pt"))
    model.write_bytes(model.read_bytes()[:1000])
    capsys.readouterr()
    (_, again), = run_finetune(app.compose("finetune", [*ov, "force=true"]))
    out = capsys.readouterr().out
    assert "model.pt does not match its sha256" in out and "[ptft] pretraining" in out
    assert science(again) == science(first)  # the retrained model is the same model (CPU, same seed)
    assert (model.parent / "model.pt.damaged-1").exists()


# ------------------------------------------------------------------------------------------------
# no space left on device
# ------------------------------------------------------------------------------------------------
def _enospc_on(monkeypatch, prefix: str) -> None:
    """os.fsync fails with ENOSPC for temporary files whose name starts with `.<prefix>`."""
    real = os.fsync

    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("." + prefix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_checkpoint_pt_exists_at_every_moment_of_a_rewrite(tmp_path, monkeypatch):
    """A kill at any point of a checkpoint rewrite leaves checkpoint.pt (the old or the new one): the old one
    becomes checkpoint.prev.pt through a hard link, not a rename that would leave a moment without it."""
    ck = tmp_path / "checkpoint.pt"
    store.write_checkpoint(ck, {"v": torch.tensor(1)})
    seen, real = [], os.replace

    def spy(src, dst):
        seen.append(ck.exists())
        real(src, dst)
        seen.append(ck.exists())

    monkeypatch.setattr(os, "replace", spy)
    store.write_checkpoint(ck, {"v": torch.tensor(2)})
    assert seen and all(seen)
    assert int(read_checkpoint(ck)["v"]) == 2 and int(read_checkpoint(store.previous_checkpoint(ck))["v"]) == 1
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint.pt", "checkpoint.prev.pt"}


def test_enospc_on_a_checkpoint_keeps_the_previous_one_and_leaves_no_temp_file(tmp_path, monkeypatch):
    ck = tmp_path / "checkpoint.pt"
    _two_checkpoints(ck)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _enospc_on(monkeypatch, "checkpoint.pt")
    task = Quad()
    tr = Trainer(task, TrainConfig(**CFG), checkpoint=ck)
    assert tr.try_resume()
    with pytest.raises(StoreError, match="no space left on device") as e:
        tr.save_checkpoint()
    assert str(ck) in str(e.value) and "\n" not in str(e.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_enospc_on_the_result_ends_in_one_line_and_keeps_the_run_resumable(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _enospc_on(monkeypatch, "result.json")
    code, err = run_cli(monkeypatch, capsys, dln_main, *SMALL, "store.root=st", "hydra.run.dir=out")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "no space left on device" in err and "result.json" in err
    run_dir = next(p for p in (tmp_path / "st" / "dln").iterdir() if p.is_dir())
    assert not (run_dir / "result.json").exists() and not list(run_dir.glob(".*.tmp"))
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    _, res = run_job(compose(tmp_path / "st"))  # space again: the same command finishes the run
    assert res["status"] == "ok" and (run_dir / "result.json").exists()


# ------------------------------------------------------------------------------------------------
# provenance
# ------------------------------------------------------------------------------------------------
def test_result_carries_provenance(tmp_path):
    run, res = run_job(compose(tmp_path))
    prov = json.loads(run.file("result.json").read_text())["provenance"]
    for k in PROV_KEYS:
        assert k in prov, k
    assert prov["torch"] == torch.__version__ and prov["device"] == "cpu" and prov["run_hash"] == run.run_hash
    assert prov["wall_s"] >= 0 and prov["start"] <= prov["end"]
    repo = Path(__file__).resolve().parents[1]
    if (repo / ".git").exists():
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert prov["git_commit"] == head.strip() and isinstance(prov["git_dirty"], bool)


def test_aggregate_shows_provenance_and_warns_on_mixed_commits(tmp_path, capsys):
    run_job(compose(tmp_path, "seed=0"))
    run_job(compose(tmp_path, "seed=1"))
    rows = agg.collect(tmp_path)
    assert all(r["prov_git_commit"] == rows[0]["prov_git_commit"] for r in rows)
    cols = agg.columns(rows)
    assert cols[-1].startswith("prov_") and "prov_host" in cols and "prov_wall_s" in cols
    assert agg.commit_warning(rows) is None
    # one result as if made by another commit
    r = sorted((tmp_path / "dln").glob("*/result.json"))[0]
    d = json.loads(r.read_text())
    d["provenance"]["git_commit"] = "f" * 40
    r.write_text(json.dumps(d))
    assert agg.main([str(tmp_path), "--out", str(tmp_path / "t.csv")]) == 0
    err = capsys.readouterr().err
    assert "warning: the table mixes results made by 2 different commits" in err and "ffffffffff: 1 rows" in err


def test_study_pool_workers_die_with_their_driver(tmp_path):
    """A study driver killed with SIGKILL leaves no pool worker training on (ptft.analysis.dln_sims.worker_init)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    driver = tmp_path / "driver.py"
    driver.write_text(
        "import os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from multiprocessing import get_context\n"
        "from ptft.analysis.dln_sims import worker_init\n"
        "def work(_):\n"
        "    print(os.getpid(), flush=True); time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    with ProcessPoolExecutor(1, mp_context=get_context('spawn'), initializer=worker_init) as ex:\n"
        "        ex.submit(work, 0).result()\n")
    p = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE, text=True)
    worker = int(p.stdout.readline())
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    for _ in range(100):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    raise AssertionError(f"pool worker {worker} outlived its killed driver")


def test_orphaned_study_worker_checkpoints_then_exits(tmp_path):
    """A real DLN study job in a pool worker whose driver is SIGKILLed: the worker writes its checkpoint
    (SIGTERM from worker_init's PR_SET_PDEATHSIG) and then exits instead of waiting for work forever."""
    import os
    import signal
    import subprocess
    import sys
    import time

    store = tmp_path / "store"
    driver = tmp_path / "driver.py"
    driver.write_text(
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from multiprocessing import get_context\n"
        "from ptft.analysis.dln_sims import _timed_group, group_overrides, worker_init\n"
        "from ptft.analysis.panels import curve_config\n"
        "if __name__ == '__main__':\n"
        "    cfg = curve_config({'c_pt': 1e-6, 'lam_pt': -0.99, 'omega': 0.5})  # a slow curve\n"
        f"    ov = group_overrides([cfg], 0.35, 300, 1, {str(store)!r}) + ['wandb.mode=disabled']\n"
        "    with ProcessPoolExecutor(1, mp_context=get_context('spawn'), initializer=worker_init) as ex:\n"
        "        ex.submit(_timed_group, ov).result()\n")
    p = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(store.glob("dln/*/metrics.jsonl")):  # training has started
        assert time.time() < deadline and p.poll() is None, "the study job did not start"
        time.sleep(0.2)
    children = {int(c) for t in Path(f"/proc/{p.pid}/task").iterdir()
                for c in (t / "children").read_text().split()}
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    t0 = time.time()
    while time.time() - t0 < 30:
        alive = [c for c in children if Path(f"/proc/{c}").exists()
                 and Path(f"/proc/{c}/stat").read_text().split()[2] != "Z"]
        if not alive:
            break
        time.sleep(0.2)
    for c in alive:
        os.kill(c, signal.SIGKILL)
    assert not alive, f"pool processes {alive} outlived their killed driver"
    assert list(store.glob("dln/*/checkpoint.pt")), "no checkpoint written on the way out"
