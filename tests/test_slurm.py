"""`ptft-dln -m ... hydra/launcher=slurm` on a real single-node SLURM cluster with accounting.

The session fixture brings the cluster up with scripts/slurm_local/start.sh (its own state dir
and ports, so a developer's cluster is left alone) and always tears it down with stop.sh.
Needs root (the daemons) and Debian's slurm/munge/mariadb packages (start.sh installs them).
"""
from __future__ import annotations

import csv
import json
import os
import re
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from ptft.analysis import aggregate as agg

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "slurm_local"
PTFT_DLN = Path(sys.executable).parent / "ptft-dln"
# small DLN jobs: ~4000 steps/s on one CPU here; metrics every 1000 steps
SMALL = ["dln.dim=50", "train.max_steps=2000"]
LONG = ["dln.dim=50", "train.threshold=0", "train.log_every=1000"]  # exactly train.max_steps steps


@pytest.fixture(scope="session")
def slurm_env(tmp_path_factory) -> Iterator[dict[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (scripts/slurm_local/start.sh)")
    if not PTFT_DLN.exists():
        pytest.skip(f"{PTFT_DLN} is not installed (pip install -e .)")
    state = tmp_path_factory.mktemp("slurm_state")
    env = {
        **os.environ,
        "PTFT_SLURM_DIR": str(state),
        "PTFT_SLURM_PORT_BASE": "6917",  # not the default 6817: a running dev cluster is untouched
        "PTFT_SLURM_DB_PORT": "3326",
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    env.pop("SLURM_CONF", None)
    try:
        out = subprocess.run([str(SCRIPTS / "start.sh")], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"start.sh failed:\n{out.stderr[-3000:]}"
        exports = [ln for ln in out.stdout.splitlines() if ln.startswith("export SLURM_CONF=")]
        assert exports, out.stdout
        env["SLURM_CONF"] = exports[-1].split("=", 1)[1]
        yield env
    finally:
        stop = subprocess.run([str(SCRIPTS / "stop.sh")], env=env, capture_output=True, text=True, timeout=300)
        print(stop.stderr[-2000:], file=sys.stderr)


def sh(env: dict, *cmd: str, timeout: float = 30) -> str:
    out = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)}: {out.stderr}"
    return out.stdout


def launch(env: dict, cwd: Path, *overrides: str) -> subprocess.Popen:
    """`ptft-dln -m OVERRIDES hydra/launcher=slurm` in the background (stdout+stderr in .log)."""
    path = cwd / f"launch-{uuid.uuid4().hex[:6]}.log"
    with open(path, "w") as log:
        p = subprocess.Popen([str(PTFT_DLN), "-m", *overrides, "hydra/launcher=slurm"], cwd=cwd, env=env,
                             stdout=log, stderr=subprocess.STDOUT, text=True)
    p._ptft_log = path  # type: ignore[attr-defined]
    return p


def run_multirun(env: dict, cwd: Path, *overrides: str, timeout: float = 240) -> tuple[int, str]:
    p = launch(env, cwd, *overrides)
    return p.wait(timeout=timeout), read_log(p)


def read_log(p: subprocess.Popen) -> str:
    return p._ptft_log.read_text()  # type: ignore[attr-defined]


def wait_until(cond, timeout: float, what: str, every: float = 0.3):
    end = time.time() + timeout
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def job_ids(sweep: Path) -> list[str]:
    """SLURM job ids of a sweep, from its submitit folders (<job> or <array>_<task>)."""
    sub = sweep / ".submitit"
    return sorted(d.name for d in sub.iterdir() if d.is_dir() and any(d.glob("*_submitted.pkl"))) if sub.is_dir() else []


def metric_lines(store: Path) -> int:
    return sum(len(f.read_text().splitlines()) for f in store.glob("dln/*/metrics.jsonl"))


def slurm_state(env: dict, job: str) -> str:
    return sh(env, "squeue", "-h", "-j", job, "-o", "%T").strip()


def wandb_run_record(path: Path):
    """The RunRecord of an offline wandb run file (LevelDB-style log of protobuf Records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # full / first
            buf = chunk
        elif kind in (3, 4):  # middle / last
            buf += chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            if rec.WhichOneof("record_type") == "run":
                return rec.run
    raise AssertionError(f"no run record in {path}")


# ------------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def four_jobs(slurm_env, tmp_path_factory):
    """One 4-job multirun (wandb offline), shared by the checks below."""
    cwd = tmp_path_factory.mktemp("four")
    group = f"fig_{uuid.uuid4().hex[:6]}"
    t0 = time.time()
    rc, log = run_multirun(slurm_env, cwd, *SMALL, "seed=0,1,2,3", f"name={group}", "wandb.mode=offline")
    print(f"4-job multirun: {time.time() - t0:.1f}s", file=sys.stderr)
    assert rc == 0, log[-4000:]
    (sweep,) = (cwd / "multirun" / group).iterdir()
    return cwd, sweep, group


def test_multirun_four_array_tasks(slurm_env, four_jobs):
    cwd, sweep, group = four_jobs
    ids = job_ids(sweep)
    arrays = {i.split("_")[0] for i in ids}
    assert len(ids) == 4 and len(arrays) == 1, ids  # one array job, one task per Hydra job
    assert sorted(int(i.split("_")[1]) for i in ids) == [0, 1, 2, 3]
    array = arrays.pop()

    def states() -> dict[str, str]:  # a task's epilog may still run after the launcher returned
        acct = sh(slurm_env, "sacct", "-X", "-n", "-P", "-j", array, "-o", "JobID,State")
        return dict(ln.split("|") for ln in acct.split())

    wait_until(lambda: set(states().values()) == {"COMPLETED"}, 30, "every task COMPLETED in sacct")
    assert sorted(states()) == sorted(ids)
    # aggregation from the sweep dir (the CLI) and from the run store give the same 4 ok runs
    out = cwd / "res.csv"
    sh(slurm_env, str(PTFT_DLN.parent / "ptft-aggregate"), str(sweep), "--out", str(out))
    rows = list(csv.DictReader(out.open()))
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert sorted(int(r["seed"]) for r in rows) == [0, 1, 2, 3]
    assert sorted(r["job_dir"].rsplit("/", 1)[-1] for r in rows) == ["0", "1", "2", "3"]
    assert len({r["run_dir"] for r in rows}) == 4
    store_rows = agg.collect(cwd / "runs")
    assert sorted(r["run_dir"] for r in store_rows) == sorted(r["run_dir"] for r in rows)


def test_offline_wandb_one_group(four_jobs):
    cwd, sweep, group = four_jobs
    files = sorted((cwd / "runs").glob("dln/*/wandb/offline-run-*/run-*.wandb"))
    runs = [wandb_run_record(f) for f in files]
    assert len(runs) == 4, files  # one wandb run per job, not one run for the whole sweep
    assert len({r.run_id for r in runs}) == 4
    assert {r.run_group for r in runs} == {group}
    # run names are the job's overrides: each names its own seed
    assert sorted(re.search(r"(?:^|,)seed=(\d+)", r.display_name).group(1) for r in runs) == ["0", "1", "2", "3"]


def _interrupt_and_compare(env: dict, tmp_path: Path, interrupt, relaunch_on_race: bool = False) -> bool:
    """Run one long job on SLURM next to an uninterrupted local twin; `interrupt(env, job)` hits
    it while it trains; the job must be requeued, resume from its checkpoint, and end with
    exactly the twin's result (CPU, same config). Returns whether the job resumed from a
    checkpoint (ckpt_every_s=0: only one written on the signal) rather than from scratch."""
    # long enough (~30 s) that the job cannot finish within SLURM's KillWait after the signal
    cfg = [*LONG, "train.max_steps=250000", "train.ckpt_every_s=0", "wandb.mode=disabled", "seed=7"]
    base = subprocess.Popen([str(PTFT_DLN), *cfg, f"store.root={tmp_path / 'base'}"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    store, sweep = tmp_path / "slurm", tmp_path / "sweep"
    p = launch(env, tmp_path, *cfg, f"store.root={store}", f"hydra.sweep.dir={sweep}")
    try:
        (job,) = wait_until(lambda: job_ids(sweep), 60, "the job's submission")
        wait_until(lambda: metric_lines(store) >= 3, 90, "the job to train a while")
        assert slurm_state(env, job) == "RUNNING"
        interrupt(env, job)
        # a requeued job waits ~2 min (BeginTime) before it may start again; release it now
        wait_until(lambda: slurm_state(env, job) == "PENDING", 60, "the requeued job to be pending")
        sh(env, "scontrol", "update", f"jobid={job}", "StartTime=now")
        rc = p.wait(timeout=300)
        log = read_log(p)
        if rc != 0 and relaunch_on_race and "(state: FAILED)" in log:
            # submitit race: the job exits right after requeueing itself and the launcher may read
            # a transient FAILED from sacct. The job still runs again on SLURM; the documented
            # recovery is to launch the same command again, which must find the finished run.
            print("launcher saw a transient FAILED after the requeue; relaunching", file=sys.stderr)
            wait_until(lambda: sh(env, "sacct", "-X", "-n", "-P", "-j", job, "-o", "State").strip() == "COMPLETED",
                       240, "the requeued job to complete")
            p = launch(env, tmp_path, *cfg, f"store.root={store}", f"hydra.sweep.dir={sweep}")
            rc = p.wait(timeout=120)
            log = read_log(p)
            assert any("finished run found" in f.read_text() for f in sweep.glob(".submitit/*/*_log.out"))
        assert rc == 0, log[-4000:]
        base_out, _ = base.communicate(timeout=300)
        assert base.returncode == 0, base_out[-3000:]
    finally:
        for proc in (p, base):
            if proc.poll() is None:
                proc.kill()
    def acct() -> list[str]:
        return sh(env, "sacct", "-D", "-X", "-n", "-P", "-j", job, "-o", "State").split()

    # the launcher returns once the result is readable; the job's epilog (and so its final
    # accounting state) may still be running, as for the array tasks above
    wait_until(lambda: acct()[-1:] not in (["RUNNING"], ["COMPLETING"]), 60, "the job to leave RUNNING in sacct")
    assert acct() == ["REQUEUED", "COMPLETED"], acct()  # it really ran twice
    (run,) = store.glob("dln/*/result.json")
    (ref,) = (tmp_path / "base").glob("dln/*/result.json")
    assert run.parent.name == ref.parent.name  # same scientific config -> same hash
    a, b = json.loads(run.read_text()), json.loads(ref.read_text())
    a.pop("provenance", None), b.pop("provenance", None)  # when and where each ran
    assert a == b  # bit-identical floats
    assert (run.parent / "metrics.jsonl").read_text() == (ref.parent / "metrics.jsonl").read_text()
    return bool(json.loads((run.parent / "timing.json").read_text())["resumed"])


def test_requeue_resumes_bit_identical(slurm_env, tmp_path):
    """`scontrol requeue` (what preemption or a node failure does): SIGTERM, then requeue."""
    resumed = _interrupt_and_compare(slurm_env, tmp_path, lambda env, job: sh(env, "scontrol", "requeue", job))
    assert resumed, "the requeued job started from scratch: no checkpoint written on SIGTERM"


def test_timeout_signal_requeues_and_resumes(slurm_env, tmp_path):
    """The signal SLURM sends signal_delay_s before the time limit (submitit's USR2): submitit
    requeues the job itself (max_num_timeout); the trainer must checkpoint first."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    sig = SlurmJobEnvironment.USR_SIG
    resumed = _interrupt_and_compare(slurm_env, tmp_path,
                                     lambda env, job: sh(env, "scancel", f"--signal={sig}", job),
                                     relaunch_on_race=True)
    assert resumed, f"the trainer did not checkpoint on SIG{sig} before submitit requeued the job"


def test_cancel_reports_error_quickly(slurm_env, tmp_path):
    store, sweep = tmp_path / "runs", tmp_path / "sweep"
    p = launch(slurm_env, tmp_path, *LONG, "train.max_steps=2000000", "wandb.mode=disabled",
               f"store.root={store}", f"hydra.sweep.dir={sweep}")
    try:
        (job,) = wait_until(lambda: job_ids(sweep), 60, "the job's submission")
        wait_until(lambda: metric_lines(store) >= 1, 90, "the job to start training")
        sh(slurm_env, "scancel", job)
        t0 = time.time()
        rc = p.wait(timeout=90)
        waited = time.time() - t0
    finally:
        if p.poll() is None:
            p.kill()
    log = read_log(p)
    print(f"cancel reported after {waited:.1f}s", file=sys.stderr)
    assert rc != 0 and waited < 60
    assert "CANCELLED" in log and job in log, log[-3000:]
    # the killed run is still listed, as incomplete
    rows = agg.collect(sweep)
    assert [r["status"] for r in rows] == [agg.INCOMPLETE], rows


def test_two_multiruns_same_second(slurm_env, tmp_path):
    """Two sweeps started together from one directory: separate sweep dirs, all results there."""
    procs = [launch(slurm_env, tmp_path, *SMALL, seeds, "name=twin") for seeds in ("seed=0,1", "seed=2,3")]
    try:
        rcs = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert rcs == [0, 0], [read_log(p)[-2000:] for p in procs]
    sweeps = sorted((tmp_path / "multirun" / "twin").iterdir())
    assert len(sweeps) == 2, sweeps
    print(f"sweep dirs: {[s.name for s in sweeps]}", file=sys.stderr)  # usually the same second
    for s in sweeps:
        assert sorted(d.name for d in s.iterdir() if not d.name.startswith(".")) == ["0", "1", "multirun.yaml"]
        assert len(job_ids(s)) == 2
    assert not set(job_ids(sweeps[0])) & set(job_ids(sweeps[1]))
    rows = agg.collect(sweeps)
    assert sorted(int(r["seed"]) for r in rows) == [0, 1, 2, 3]
    assert {r["status"] for r in rows} == {"ok"}
    assert len({r["run_dir"] for r in rows}) == 4


def test_vision_finetunes_share_one_pretraining(slurm_env, tmp_path):
    """Two fine-tuning jobs of one pretrained model as two array tasks running at the same time:
    the model is pretrained once (the file lock), the other job waits and reuses it."""
    from ptft.vision import synthetic

    root = tmp_path / "data"
    synthetic.generate(root, "cifar100", n_train_per_class=10, n_test_per_class=20, seed=0, distractors=1)
    store, sweep = tmp_path / "runs", tmp_path / "sweep"
    args = [f"data.root={root}", f"store.root={store}", "model.width=8", "wandb.mode=disabled",
            "runtime.device=cpu", "pretrain.train.max_epochs=2", "pretrain.train.lr=0.05", "train.max_epochs=20",
            "train.lr=0.01", "data.n_ft=10", "ft.rescale=0.5,1", f"hydra.sweep.dir={sweep}", "hydra/launcher=slurm"]
    p = subprocess.run([str(PTFT_DLN.parent / "ptft-finetune"), "-m", *args], cwd=tmp_path, env=slurm_env,
                       capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert len(job_ids(sweep)) == 2
    logs = "".join(f.read_text() for f in sweep.glob(".submitit/*/*_log.out"))
    assert logs.count("[ptft] pretraining ") == 1, logs[-3000:]
    assert len(list((store / "pretrain").glob("*/result.json"))) == 1
    rows = [r for r in agg.collect(sweep) if r["stage"] == "finetune"]
    assert sorted(r["ft.rescale"] for r in rows) == [0.5, 1.0] and all(r["status"] == "ok" for r in rows), rows


def test_study_on_slurm(slurm_env, tmp_path):
    """`ptft-study SPEC --launcher slurm`: every job of the study is a SLURM job; the verdicts equal those of the
    same study run locally (same runs, same store identity)."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text("app: dln\ndescription: tiny\nbase: [dln.dim=40, dln.rho_ft=0.05, dln.omega=1, dln.n_test=200]\n"
                    "x: {key: dln.alpha, values: [0.3]}\narms: {iv: [dln.lam_pt=-0.99], ii: [dln.lam_pt=0]}\n"
                    "baseline: ii\nmetric: {name: test_mse, better: lower, scale: log}\n"
                    "seeds: {first: 3, batch: 1, max: 3}\npredictions: [{arm: iv, expect: better, delta: 0.1}]\n")
    exe = str(PTFT_DLN.parent / "ptft-study")
    outs = {}
    for launcher in ("slurm", "local"):
        p = subprocess.run([exe, str(spec), "--launcher", launcher, "--store", str(tmp_path / launcher),
                            "--out", str(tmp_path / f"out_{launcher}")], cwd=tmp_path, env=slurm_env,
                           capture_output=True, text=True, timeout=400)
        assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
        outs[launcher] = (tmp_path / f"out_{launcher}" / "verdicts.csv").read_text()
    assert outs["slurm"] == outs["local"]
    assert len(job_ids(tmp_path / "slurm" / "studies" / "tiny" / "jobs" / next(
        iter(os.listdir(tmp_path / "slurm" / "studies" / "tiny" / "jobs"))))) == 1
