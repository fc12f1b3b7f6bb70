"""The study engine (ptft.study): statistics, spec validation, planning, and a tiny study end to end."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from ptft import ConfigError
from ptft.analysis import stats
from ptft.study.plan import plan
from ptft.study.spec import StudySpec, load, looks, names


# ---- statistics ------------------------------------------------------------------------------------------
def test_interval_is_student_t():
    x = np.array([0.3, 0.1, 0.4, 0.15, 0.9])
    m, lo, hi = stats.interval(x, 0.9)
    half = sps.t.ppf(0.95, 4) * x.std(ddof=1) / math.sqrt(5)
    assert m == pytest.approx(x.mean()) and lo == pytest.approx(m - half) and hi == pytest.approx(m + half)
    assert math.isnan(stats.interval([1.0])[1])


@pytest.mark.parametrize("lo,hi,expect,word", [
    (0.1, 0.5, "better", stats.HOLDS), (-0.5, -0.1, "better", stats.CONTRADICTED),
    (-0.5, -0.1, "worse", stats.HOLDS), (-0.05, 0.04, "better", stats.NO_EFFECT),
    (-0.05, 0.2, "better", stats.UNRESOLVED), (math.nan, math.nan, "better", stats.UNRESOLVED)])
def test_verdict_words(lo, hi, expect, word):
    assert stats.verdict(lo, hi, 0.1, expect) == word


def test_sequential_false_holds_rate_at_most_alpha():
    """Null arm pair (true difference 0), 4 looks of 5 seeds: the Bonferroni-split intervals declare a false
    'holds' in at most 5% of 4000 simulated studies; with a real effect of 1 sd the same rule finds it."""
    lk = [5, 10, 15, 20]
    rate = stats.simulate_false_holds(4000, lk, alpha=0.05, rng=np.random.default_rng(1))
    assert rate <= 0.05
    # not vacuous: a true effect of 1 sd is declared 'holds' in most studies
    rng = np.random.default_rng(2)
    level = stats.look_level(0.05, len(lk))
    hits = 0
    for _ in range(500):
        d = rng.normal(1.0, 1.0, 20)
        hits += any(stats.judge(d[:n], 0.1, "better", level)["verdict"] == stats.HOLDS for n in lk)
    assert hits / 500 > 0.9


def test_variance_split_recovers_components():
    rng = np.random.default_rng(0)
    seeds = np.repeat(np.arange(400), 4)
    v = rng.normal(0, 2.0, 400)[seeds] + rng.normal(0, 1.0, seeds.size)  # between 4, within 1
    between, within = stats.variance_split(v, seeds)
    assert between == pytest.approx(4.0, rel=0.15) and within == pytest.approx(1.0, rel=0.1)


def test_paired_differences_average_replicates_within_seed():
    import pandas as pd

    idx = pd.MultiIndex.from_tuples([(0, "a"), (0, "b"), (1, "a"), (1, "b")])
    arm = pd.Series([1.0, 3.0, 5.0, 7.0], index=idx)
    base = pd.Series([0.0, 0.0, 1.0, 1.0], index=idx)
    d = stats.paired_per_seed(arm, base)
    assert list(d.index) == [0, 1] and list(d) == [2.0, 5.0]


# ---- specs and plans -------------------------------------------------------------------------------------
def test_every_shipped_spec_loads():
    assert "dln_reuse_refine" in names()
    for n in names():
        s = load(n)
        assert s.name == n and s.description


@pytest.mark.parametrize("override,key", [
    (["app=foo"], "app"), (["baseline=nope"], "baseline"), (["seeds.first=0"], "seeds"),
    (["metric.better=up"], "metric.better"), (["predictions.0.delta=0"], "delta"), (["arms.regime_iv=3"], "arms")])
def test_bad_spec_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.split(".")[0]):
        load("dln_reuse_refine", override)


def test_unknown_study_lists_the_known_ones():
    with pytest.raises(ConfigError, match="dln_reuse_refine"):
        load("no_such_study")


def test_plans_grow_by_looks_and_keep_job_identity():
    s = load("dln_reuse_refine")
    lk = looks(s.seeds)
    first, full = plan(s, lk[0]), plan(s, lk[-1])
    assert {j.id for j in first} <= {j.id for j in full}
    later = plan(s, lk[1], lk[0])
    assert {j.id for j in first} | {j.id for j in later} == {j.id for j in plan(s, lk[1])}
    assert len(first) == len(s.arms) * len(s.x.values)
    ft = StudySpec(app="finetune", description="d", arms={"a": ["init.kappa=0.5"], "b": []}, baseline="b")
    ft.x.key, ft.x.values, ft.name = "n_ft", [10, 50], "t"
    jobs = plan(ft, 3)
    assert len(jobs) == 6 and all("runs.n_ft=[10,50]" in j.args for j in jobs)


# ---- end to end ------------------------------------------------------------------------------------------
SPEC = """
app: dln
description: tiny two-arm DLN study
base: [dln.dim=40, dln.rho_ft=0.05, dln.omega=1, dln.n_test=200, train.max_steps=20000]
x: {key: dln.alpha, values: [0.3, 0.5]}
arms: {iv: [dln.lam_pt=-0.99], ii: [dln.lam_pt=0]}
baseline: ii
metric: {name: test_mse, better: lower, scale: log}
seeds: {first: 3, batch: 2, max: 5}
predictions: [{arm: iv, expect: better, delta: 0.1}]
check: {sample_jobs: 1, rtol: 1.0e-6}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    (d / "tiny.yaml").write_text(SPEC)
    exe = Path(sys.executable).parent / "ptft-study"
    cmd = [str(exe), str(d / "tiny.yaml"), "--store", str(d / "runs"), "--out", str(d / "out")]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=d, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return d, cmd, p


def test_study_end_to_end(tiny):
    d, _, p = tiny
    import pandas as pd

    runs = pd.read_csv(d / "out" / "runs.csv")
    assert list(runs.columns[:7]) == ["study", "arm", "panel", "x", "seed", "replicate", "status"]
    assert runs.columns.is_unique
    v = pd.read_csv(d / "out" / "verdicts.csv")
    assert list(v.columns) == ["prediction", "arm", "baseline", "panel", "x", "diff", "lo", "hi", "delta", "seeds",
                               "replicates", "level", "detectable", "scale", "verdict"]
    assert set(v["verdict"]) <= set(stats.VERDICTS)
    n = int(v["seeds"].iloc[0])
    assert n in looks(load(str(d / "tiny.yaml")).seeds)
    # the verdict's numbers are the paired log differences of the table, recomputed here from scratch
    for _, row in v.iterrows():
        sel = runs[np.isclose(runs["x"], row["x"]) & (runs["status"] == "ok")]
        a = sel[sel["arm"] == "iv"].set_index("seed")["test_mse"]
        b = sel[sel["arm"] == "ii"].set_index("seed")["test_mse"]
        dd = -(np.log(a) - np.log(b)).dropna()
        assert row["diff"] == pytest.approx(dd.mean(), rel=1e-5)
        half = sps.t.ppf(0.5 + row["level"] / 2, len(dd) - 1) * dd.std(ddof=1) / math.sqrt(len(dd))
        assert row["lo"] == pytest.approx(dd.mean() - half, rel=1e-5, abs=1e-9)
    assert (d / "out" / "figure.png").stat().st_size > 1000
    assert "Verdicts" in (d / "out" / "README.md").read_text()


def test_study_rerun_skips_finished_jobs(tiny):
    d, cmd, _ = tiny
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=d, timeout=300)
    assert p.returncode == 0 and "jobs to run" not in p.stderr


def test_check_passes_on_fresh_outputs_and_names_a_stale_file(tiny):
    d, cmd, _ = tiny
    exe = cmd[0]
    ok = subprocess.run([exe, cmd[1], "--check", "--out", str(d / "out")], capture_output=True, text=True, cwd=d,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = d / "stale"
    bad.mkdir()
    for f in ("runs.csv", "summary.csv", "verdicts.csv"):
        (bad / f).write_text((d / "out" / f).read_text())
    (bad / "verdicts.csv").write_text((bad / "verdicts.csv").read_text().replace("iv better", "iv worse", 1))
    p = subprocess.run([exe, cmd[1], "--check", "--out", str(bad)], capture_output=True, text=True, cwd=d,
                       timeout=300)
    assert p.returncode == 1 and "verdicts.csv is stale" in p.stderr


def test_cli_lists_studies_and_refuses_bad_input(tmp_path):
    exe = str(Path(sys.executable).parent / "ptft-study")
    p = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "dln_reuse_refine" in p.stdout
    p = subprocess.run([exe, "dln_reuse_refine", "seeds.max=x", "--store", str(tmp_path / "r")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "seeds.max" in p.stderr
    assert not (tmp_path / "r").exists()


# ---- the freshness registry is the specs -----------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
COMMITTED = sorted(p.parent.name for p in (REPO / "results").glob("*/runs.csv"))


def test_every_committed_study_folder_has_its_spec():
    assert set(COMMITTED) <= set(names())


@pytest.mark.slow
@pytest.mark.parametrize("name", COMMITTED)
def test_committed_study_is_fresh(name, tmp_path):
    """`ptft-study NAME --check`: tables regenerated from the committed runs.csv, and a sample of its jobs rerun."""
    exe = str(Path(sys.executable).parent / "ptft-study")
    p = subprocess.run([exe, name, "--check", "--out", str(REPO / "results" / name)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.slow
def test_killed_study_resumes_to_the_same_verdicts(tiny, tmp_path):
    """kill -9 of the study's driver once a job has finished: its running jobs end too (SIGTERM, checkpoint), and the
    same command then runs only what is missing and ends with the verdicts of the uninterrupted study."""
    import os
    import signal
    import time

    d, cmd, _ = tiny
    args = [cmd[0], cmd[1], "--store", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    p = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    t0 = time.time()
    while not list((tmp_path / "runs").glob("studies/*/jobs/*/study_done.json")) and time.time() - t0 < 300:
        time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)  # the driver only: its jobs must not live on as orphans
    p.wait()
    t1 = time.time()
    while time.time() - t1 < 60:
        alive = subprocess.run(["pgrep", "-f", str(tmp_path / "runs")], capture_output=True, text=True).stdout.split()
        if not alive:
            break
        time.sleep(0.5)
    assert not alive, "jobs outlived their killed study driver"
    done = len(list((tmp_path / "runs").glob("studies/*/jobs/*/study_done.json")))
    assert done >= 1
    q = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert q.returncode == 0, q.stderr[-3000:]
    assert (tmp_path / "out" / "verdicts.csv").read_text() == (d / "out" / "verdicts.csv").read_text()
