"""Tests of ptft.analysis.dln_figures: every command on reduced inputs, real (tiny) simulations, the
unconverged-point marking, and (slow) replica theory vs gradient-descent simulation at D = 1000."""
from __future__ import annotations

import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ptft import ConfigError  # noqa: E402
from ptft.analysis import dln_figures as F  # noqa: E402
from ptft.analysis import dln_sims  # noqa: E402
from ptft.analysis.panels import GROUND_TRUTHS, REGIMES, curve_config, unique_curves  # noqa: E402
from ptft.dln.replica import generalization_error  # noqa: E402
from ptft.dln.theory import L_SPLIT, PD_SPLIT, l_order, pt_dependence, regime_of  # noqa: E402

ALPHAS = np.linspace(0.05, 0.5, 6)
LAZY = [dict(c_pt=1.0, omega=0.0), dict(c_pt=1.0, omega=1.0)]  # gradient descent converges in ~100s of steps


def read(path):
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return r.fieldnames, list(r)


def test_regime_map_files_bounds_and_regimes(tmp_path):
    out = F.regime_map(tmp_path, n_beta=40, n_lam=21)
    cols, rows = read(tmp_path / "regime_map.csv")
    assert cols == F.REGIME_MAP_COLUMNS and len(rows) == 40 * 21
    assert (tmp_path / "regime_map.png").stat().st_size > 10_000
    b, lam = (np.array([float(r[k]) for r in rows]) for k in ("beta_pt", "lam"))
    lo, pd = (np.array([float(r[k]) for r in rows]) for k in ("l_order", "pd"))
    assert b.min() == pytest.approx(5e-4) and b.max() == pytest.approx(2e3) and lam.min() == -1 and lam.max() == 1
    # the paper's bounds, and the CSV is the library's descriptors at c = 0.1, gamma = 0, beta_FT = 1
    assert np.all((lo >= 1 - 1e-12) & (lo <= 2 + 1e-12)) and np.all((pd >= -1 - 1e-12) & (pd <= 1e-12))
    assert np.all((lo + pd >= 1 - 1e-9) & (lo + pd <= 2 + 1e-9))
    np.testing.assert_allclose(lo, l_order(1.0, b, 0.1, lam, 0.0), rtol=1e-7)  # CSV keeps 8 digits
    np.testing.assert_allclose(pd, pt_dependence(1.0, b, 0.1, lam, 0.0), rtol=1e-7, atol=1e-12)
    reg = regime_of(l_order(1.0, b, 0.1, lam, 0.0), pt_dependence(1.0, b, 0.1, lam, 0.0))
    assert [r["regime"] for r in rows] == list(reg)
    assert set(out["counts"]) == {"I", "II", "III", "IV"} and min(out["counts"].values()) > 0
    # limits: lam = -1 (k = 0) is l1 and PT-independent; |beta_PT| << c is PT-independent; huge |beta_PT| lazy
    assert np.all(lo[lam == -1] == pytest.approx(1.0)) and np.all(np.abs(pd[lam == -1]) < 1e-12)
    assert np.all(np.abs(pd[b == b.min()]) < 1e-3)
    assert np.all(lo[(b == b.max()) & (lam >= 0)] > 1.99)
    assert np.all(lo[(b == b.max()) & (lam >= 0)] > L_SPLIT) and np.all(pd[(b == b.max()) & (lam >= 0)] < PD_SPLIT)


def test_theory_command_writes_every_panel_curve(tmp_path, capsys):
    F.main(["theory", "--out", str(tmp_path), "--n-alpha", "4"])
    cols, rows = read(tmp_path / "dln_theory.csv")
    assert cols == F.THEORY_COLUMNS
    curves = {tuple(r[k] for k in F.CONFIG_KEYS) for r in rows}
    assert len(curves) == len(unique_curves()) and len(rows) == 4 * len(curves)
    assert "total" in capsys.readouterr().out
    # every value is the replica's, at the config written on its row
    r0 = [r for r in rows if float(r["c_pt"]) == 1e-6 and float(r["omega"]) == 1.0]
    cfg = {k: float(r0[0][k]) for k in F.CONFIG_KEYS}
    ref = generalization_error([float(r["alpha"]) for r in r0], **cfg)
    np.testing.assert_allclose([float(r["error"]) for r in r0], ref.error, rtol=1e-9)
    assert all(r["converged"] == "True" for r in rows)
    err = np.array([float(r["error"]) for r in rows])
    assert np.all(err > 0) and np.all(np.isfinite(err))


def test_unconverged_point_is_marked_not_drawn(tmp_path, capsys):
    res = F.theory(curve_config(LAZY[0]), ALPHAS, max_iter=2)
    assert res.converged.any() and not res.converged.all()  # a mix: both paths are exercised
    fig, ax = plt.subplots()
    n = F.plot_theory(ax, res, color="k")
    assert n == int((~res.converged).sum())
    line, marks = ax.lines[0], ax.lines[1]
    np.testing.assert_array_equal(line.get_xdata(), res.alphas[res.converged])  # dropped from the line
    np.testing.assert_array_equal(marks.get_xdata(), res.alphas[~res.converged])  # ... and marked
    assert marks.get_color() == "red" and marks.get_marker() == "x"
    plt.close(fig)
    # the figure commands count them on the console and keep them in their CSVs
    out = F.regimes(tmp_path, ALPHAS, max_iter=2)
    assert out["unconverged"] > 0
    assert f"{out['unconverged']} unconverged" in capsys.readouterr().out
    _, rows = read(tmp_path / "dln_regimes.csv")
    assert sum(r["converged"] == "False" for r in rows) == out["unconverged"]
    spec = {"a": ("test", LAZY)}
    p = F.panels(tmp_path, None, scale="tiny", alphas=ALPHAS, panel_spec=spec, max_iter=2)
    n_both = sum(int((~F.theory(curve_config(c), ALPHAS, max_iter=2).converged).sum()) for c in LAZY)
    assert p["unconverged"] == n_both > 0 and "unconverged theory points" in capsys.readouterr().out
    pts = [q for q in p["points"] if q["kind"] == "theory"]
    assert sum(not q["converged"] for q in pts) == n_both  # kept in the CSV, flagged


def test_regimes_command(tmp_path):
    F.main(["regimes", "--out", str(tmp_path), "--n-alpha", "5"])
    cols, rows = read(tmp_path / "dln_regimes.csv")
    assert cols == F.REGIMES_COLUMNS and len(rows) == len(GROUND_TRUTHS) * len(REGIMES) * 5
    assert {r["regime"] for r in rows} == set(REGIMES) and all(float(r["c_pt"]) == 1e-3 for r in rows)
    assert (tmp_path / "dln_regimes.png").stat().st_size > 10_000
    # docs/paper.md section 6: regime III (l2) is the worst on a sparse ground truth at the largest alpha
    last = [r for r in rows if float(r["alpha"]) == 0.5 and r["ground_truth"] == "omega=1, rho_ft=0.01"]
    worst = max(last, key=lambda r: float(r["error"]))
    assert worst["regime"].startswith("III")


@pytest.fixture(scope="module")
def tiny_sims(tmp_path_factory):
    """A real dln_sims CSV: two curves x two alphas at scale tiny (D = 200, 3 seeds), through `simulate`."""
    tmp = tmp_path_factory.mktemp("sims")
    mp = pytest.MonkeyPatch()
    mp.setattr(dln_sims, "PANELS", {"a": ("lazy c = 1", LAZY)})
    mp.setattr(dln_sims, "SIM_ALPHAS", np.array([0.206, 0.402]))
    try:
        dln_sims.simulate("tiny", str(tmp / "store"), workers=1, out=tmp / "sims.csv", panels="a")
    finally:
        mp.undo()
    return tmp


def test_panels_with_real_tiny_sims(tiny_sims, tmp_path, capsys):
    spec = {"a": ("lazy c = 1", LAZY), "b": ("lazy, omega = 0 only", LAZY[:1])}
    out = F.panels(tmp_path, tiny_sims / "sims.csv", scale="tiny", alphas=ALPHAS, panel_spec=spec)
    text = capsys.readouterr().out
    assert "simulations incomplete: 6 of 33" in text and "(a)" in text and "worst" in text
    for f in ("dln_panels.png", "dln_panels.pdf", "dln_panels_points.csv", "dln_agreement.csv"):
        assert (tmp_path / f).stat().st_size > 0
    cols, pts = read(tmp_path / "dln_panels_points.csv")
    assert cols == F.POINT_COLUMNS
    _, sims = read(tiny_sims / "sims.csv")
    sim_pts = [p for p in pts if p["kind"] == "sim"]
    assert len(sim_pts) == 6 and len([p for p in pts if p["kind"] == "theory"]) == 3 * len(ALPHAS)
    by = {(r["omega"], r["alpha"]): r for r in sims}
    for p in sim_pts:  # plotted sims are the CSV's numbers, with D and seeds
        s = by[(p["omega"], p["alpha"])]
        assert float(p["error"]) == float(s["error_mean"]) and float(p["ci95"]) == float(s["error_ci95"])
        assert p["dim"] == "200" and p["seeds"] == "3"
    cols, ag = read(tmp_path / "dln_agreement.csv")
    assert cols == F.AGREE_COLUMNS and len(ag) == len(out["agreement"]) > 0
    for r in ag:  # judged against the replica computed exactly at the simulated alpha
        cfg = {k: float(r[k]) for k in F.CONFIG_KEYS}
        th = generalization_error([float(r["alpha"])], **cfg).error[0]
        # rel 1e-5: the replica fixed point stops at a relative residual of 1e-6, so continuation paths differ
        assert float(r["theory"]) == pytest.approx(th, rel=1e-5) and float(r["sim_mean"]) > F.ERROR_FLOOR
        dev = float(r["sim_mean"]) - th
        expect = abs(dev) <= float(r["sim_ci95"]) or abs(dev / th) <= F.REL_TOL
        assert (r["agree"] == "True") == expect
    s = out["summary"]["a"]
    assert s["sims"] == 4 and s["n"] == sum(r["panel"] == "a" for r in ag)


def test_panels_from_run_store_match_csv(tiny_sims, tmp_path, capsys):
    """Missing CSV: said so; finished jobs found in the run store give exactly the CSV's points."""
    spec = {"a": ("lazy c = 1", LAZY)}
    out = F.panels(tmp_path, tiny_sims / "missing.csv", scale="tiny", alphas=ALPHAS, panel_spec=spec,
                   store=tiny_sims / "store")
    text = capsys.readouterr().out
    assert "does not exist" in text and "4 sim points taken from finished jobs" in text
    _, sims = read(tiny_sims / "sims.csv")
    got = sorted(float(p["error"]) for p in out["points"] if p["kind"] == "sim")
    assert got == sorted(float(r["error_mean"]) for r in sims)


def test_all_without_sims_is_theory_only(tmp_path, capsys):
    F.main(["all", "--sims", str(tmp_path / "none.csv"), "--out", str(tmp_path), "--n-alpha", "3",
            "--n-beta", "12", "--n-lam", "7"])
    text = capsys.readouterr().out
    assert "does not exist" in text and "theory only" in text
    for f in ("regime_map.png", "regime_map.csv", "dln_theory.csv", "dln_panels.png", "dln_panels.pdf",
              "dln_panels_points.csv", "dln_agreement.csv", "dln_regimes.png", "dln_regimes.csv"):
        assert (tmp_path / f).exists(), f
    _, ag = read(tmp_path / "dln_agreement.csv")
    assert ag == []


def test_bad_input_fails_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        F.main(["regime-map", "--out", str(tmp_path), "--n-beta", "1"])
    assert e.value.code == 2 and "must be at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        F.main(["panels", "--sims", "x.csv", "--scale", "huge"])
    bad = tmp_path / "bad.csv"
    bad.write_text("alpha,error\n0.1,0.5\n")
    with pytest.raises(ConfigError, match="lacks columns"):
        F.load_sims(bad)
    with pytest.raises(ConfigError, match="alphas"):
        F.theory(curve_config({}), [0.1, -0.2])
    assert not (tmp_path / "regime_map.csv").exists()


@pytest.mark.slow
def test_replica_matches_simulation_d1000(tmp_path):
    """docs/paper.md Prop. 4.2 vs gradient descent at D = 1000, 5 seeds: one curve of each of panels (a), (c), (f),
    two alphas each where the error is > 1e-2; the simulated mean is within its 95% CI of the theory or 10%."""
    cases = [({"c_pt": 1.0, "omega": 0.0}, [0.108, 0.206]),                 # (a) lazy, new features
             ({"lam_pt": 0.0, "omega": 0.5}, [0.108, 0.157]),               # (c) half PT features
             ({"lam_pt": -0.99, "rho_ft": 0.1, "omega": 1.0}, [0.059, 0.108])]  # (f) rich, PT features
    for curve, alphas in cases:
        cfg = curve_config(curve)
        th = generalization_error(alphas, **{k: cfg[k] for k in F.CONFIG_KEYS}).require_converged()
        for a, t in zip(alphas, th.error):
            assert t > 1e-2
            res = dln_sims._run(dln_sims.job_overrides(cfg, a, 1000, 5, str(tmp_path)))
            assert res["status"] == "ok"
            err = np.array([m["test_mse"] for m in res["members"]])
            sim = {**{k: cfg[k] for k in F.CONFIG_KEYS}, "alpha": a, "dim": 1000, "seeds": 5, "status": "ok",
                   "error_mean": err.mean(), "error_ci95": dln_sims.ci95(err)}
            row = F.agreement(sim, float(t), 0.0, True, "slow")
            assert row["agree"], row
