"""Tests of the `ptft-theory advise` command (ptft.dln.advise)."""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from ptft import ConfigError
from ptft.dln.advise import REGIME_CORNERS, default_candidates, main, rank
from ptft.dln.replica import generalization_error


def test_default_grid_contains_the_regime_corners():
    grid = default_candidates()
    assert len(grid) == len(set(grid)) == 28
    for corner in REGIME_CORNERS.values():
        assert corner in grid


def test_rank_orders_by_replica_prediction():
    rows = rank(rho_pt=0.1, rho_ft=0.1, omega=1.0, alpha=0.2)
    errs = [r.error for r in rows]
    assert errs == sorted(errs) and all(r.converged for r in rows)
    # each row's error is the replica prediction for that candidate
    for r in rows[:3] + rows[-2:]:
        ref = generalization_error([0.2], rho_pt=0.1, rho_ft=0.1, omega=1.0, c_pt=r.c, lam_pt=r.lam, gamma=r.gamma)
        assert r.error == pytest.approx(ref.error[0], rel=1e-9)
    # the regime column names the corners as in docs/paper.md section 6
    by_init = {(r.c, r.lam, r.gamma): r.regime for r in rows}
    assert {name: by_init[v] for name, v in REGIME_CORNERS.items()} == {n: n for n in REGIME_CORNERS}
    # a sparse FT task on new features: a rich, PT-independent init beats the lazy l2 corner
    rows = rank(rho_pt=0.1, rho_ft=0.02, omega=0.0, alpha=0.2, candidates=[(1e-3, -0.999999, 1e-6), (1e-3, 0.0, 10.0)])
    assert rows[0].regime == "I" and rows[0].error < 0.5 * rows[1].error


def test_cli_prints_table_and_writes_csv(tmp_path, capsys):
    out = tmp_path / "advice.csv"
    code = main(["advise", "--rho-pt", "0.1", "--rho-ft", "0.1", "--omega", "1", "--alpha", "0.2",
                 "--candidates", "1e-3,0,0", "1e-3,-0.99,0", "1e-3,0,10", "--csv", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "rank" in text and "pred. error" in text and "best: c=0.001 lam=0 gamma=0" in text
    rows = list(csv.DictReader(out.open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3"]
    errs = np.array([float(r["pred_error"]) for r in rows])
    assert np.all(np.diff(errs) >= 0) and all(float(r["residual"]) < 1e-6 for r in rows)
    assert [r["regime"] for r in rows] == ["II", "IV", "III"]


@pytest.mark.parametrize("args,msg", [
    (["--rho-pt", "0.1", "--rho-ft", "0.5", "--omega", "1", "--alpha", "0.2"], "infeasible"),
    (["--rho-pt", "0.1", "--rho-ft", "0.1", "--omega", "1", "--alpha", "0"], "--alpha"),
    (["--rho-pt", "0.1", "--rho-ft", "0.1", "--omega", "1", "--alpha", "0.2", "--candidates", "0,0,0"], "c=0"),
    (["--rho-pt", "0.1", "--rho-ft", "0.1", "--omega", "1", "--alpha", "0.2", "--candidates", "1e-3,-1,0"], "k = 0"),
])
def test_cli_bad_input_exits_2_with_message(args, msg, capsys):
    assert main(["advise", *args]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def test_cli_malformed_candidate_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["advise", "--rho-pt", "0.1", "--rho-ft", "0.1", "--omega", "1", "--alpha", "0.2",
              "--candidates", "1e-3,0"])
    assert exc.value.code == 2 and "C,LAM,GAMMA" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        rank(rho_pt=0.1, rho_ft=0.1, omega=1.0, alpha=float("nan"))


def test_module_entry_point_exit_code():
    proc = subprocess.run([sys.executable, "-m", "ptft.dln.advise", "advise", "--rho-pt", "0.1", "--rho-ft", "0.1",
                           "--omega", "2", "--alpha", "0.2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--omega=2.0 must be in [0, 1]" in proc.stderr
