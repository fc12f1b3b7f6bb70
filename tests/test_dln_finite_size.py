"""scripts/dln_finite_size.py: the points it studies and the power-law fit it reports."""
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import dln_finite_size as fs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_points_are_the_distinct_disagreements_and_three_steep_agreements():
    import csv

    rows = list(csv.DictReader((REPO / "results" / "dln_panels" / "dln_agreement.csv").open()))
    bad = {(tuple(float(r[k]) for k in fs.CONFIG_KEYS), float(r["alpha"])) for r in rows if r["agree"] == "False"}
    pts = fs.points(REPO / "results" / "dln_panels" / "dln_agreement.csv")
    dis = [p for p in pts if p["kind"] == "disagree"]
    assert {(tuple(p["cfg"][k] for k in fs.CONFIG_KEYS), p["alpha"]) for p in dis} == bad
    steep = [p for p in pts if p["kind"] == "agree_steep"]
    assert len(steep) == fs.N_STEEP and all(p["theory"] > 0 for p in pts)


def test_fit_recovers_a_known_decay_exponent():
    rng = np.random.default_rng(0)
    rows = []
    for point, (A, p) in enumerate([(0.5, 0.5), (2.0, 1.0)]):
        for D, seeds in fs.DIMS.items():
            se = 0.02 * A * D ** (-p)  # 2% noise on each mean
            gap = A * D ** (-p) + se * rng.standard_normal()
            rows.append({"point": point, "kind": "disagree", **{k: 0.0 for k in fs.CONFIG_KEYS}, "alpha": 0.3,
                         "theory": 0.1, "dim": D, "seeds": seeds, "gap": gap, "ratio": 1 + gap / 0.1,
                         "sim_ci95": se * stats.t.ppf(0.975, seeds - 1)})
    fit = {f["point"]: f for f in fs.fits(rows)}
    for point, p in ((0, 0.5), (1, 1.0)):
        assert abs(fit[point]["p"] - p) < 3 * fit[point]["p_se"] + 0.02
    assert np.isfinite(fit["pooled"]["p"])


def test_table_round_trips_for_merge(tmp_path):
    """--merge reads the previous table back: numbers and labels come back as written."""
    rows = [{"point": i, "kind": "disagree", **{k: 0.1 * i for k in fs.CONFIG_KEYS}, "alpha": 0.353, "dim": D,
             "seeds": 4, "status": "ok", "sim_mean": 1 / 3, "sim_ci95": 0.01, "theory": 0.2, "gap": 1 / 3 - 0.2,
             "ratio": 5 / 3, "job_cpu_s": 12.5, "job_points": 2} for i, D in ((0, 250), (1, 4000))]
    fs.write(rows, tmp_path / "t.csv")
    assert fs._read(tmp_path / "t.csv") == rows


def test_offset_by_support_counts_and_averages_per_rho(tmp_path):
    import csv

    rows = list(csv.DictReader((REPO / "results" / "dln_panels" / "dln_agreement.csv").open()))[:6]
    ratios = [2.0, 0.5, 1.5, 1.0, 1.25, 0.8]
    for i, (r, q) in enumerate(zip(rows, ratios)):
        r.update(rho_ft=str(0.1 if i < 3 else 0.9), alpha=str(0.1 + 0.01 * i), status="ok", theory="0.2",
                 sim_mean=str(0.2 * q))
    path = tmp_path / "agreement.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = {o["rho_ft"]: o for o in fs.offset_by_support(path)}
    assert out[0.1]["points"] == 3 and out[0.1]["sim_above_theory"] == 2
    assert np.isclose(out[0.1]["median_ratio"], 1.5) and np.isclose(out[0.1]["mean_log_ratio"], np.log(1.5) / 3)
    assert out[0.9]["sim_above_theory"] == 1 and np.isclose(out[0.9]["median_ratio"], 1.0)


@pytest.mark.parametrize("args, needle", [(["--dims", "300"], "--dims [300]"),
                                          (["--alphas", "0.2"], "--alphas [0.2]"),
                                          (["--points", "12"], "--points [12]"),
                                          (["--alphas", "0.059", "--points", "0"], "at those --alphas"),
                                          (["--merge", "--out", "{tmp}/none"], "does not exist"),
                                          (["--ib", "--dims", "8000"], "--dims [8000]"),
                                          (["--ib", "--merge", "--out", "{tmp}/none"], "dln_finite_size_ib.csv does not"),
                                          (["--workers", "0"], "--workers must be"),
                                          (["--threshold", "0"], "--threshold must be")])
def test_bad_selections_are_refused_before_any_job(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.setattr(sys, "argv", ["dln_finite_size.py", "--store", str(tmp_path / "store"),
                                      *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    with pytest.raises(SystemExit) as e:
        fs.main()
    assert e.value.code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_gd_lands_near_the_implicit_bias_minimiser_that_ib_row_reports(tmp_path, monkeypatch):
    """--ib: the minimiser's test error for the seeds of a finished GD run of the same point, and GD / minimiser
    on those seeds; GD (panel protocol: lr 0.5, stop at train MSE 1e-4) converges to the minimiser
    (Theorem 4.1) up to its stopping point, so the ratio is near 1."""
    from ptft.analysis.dln_sims import _run_group

    p = next(q for q in fs.points(REPO / "results" / "dln_panels" / "dln_agreement.csv") if q["point"] == 6)
    monkeypatch.setattr(fs, "DIMS", {60: 2})
    store = str(tmp_path / "store")
    row = fs.ib_row(p, 60, 4, store)
    assert row["seeds"] == 4 and np.isnan(row["gd_over_ib"])  # no GD run yet
    _run_group(fs.group_overrides([p["cfg"]], p["alpha"], 60, 2, store))
    row = fs.ib_row(p, 60, 4, store)
    print("GD / minimiser at D = 60:", row["gd_over_ib"])
    assert 0.8 < row["gd_over_ib"] < 1.25
    assert row["ratio"] == row["sim_mean"] / p["theory"] and row["sim_ci95"] > 0
