"""ptft-plot: fine-tuning runs -> accuracy-vs-n_ft figure (mean, Student-t 95% CI) and LL's table."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ptft.analysis import plot

KAPPAS, NS, SEEDS = (0.5, 1.0), (10, 100, 1000), (0, 1, 2)
MISSING = (1.0, 100, 2)  # (kappa, n_ft, seed) never ran
FAILED = (0.5, 1000, 1)  # diverged
COLS = ["status", "stage", "run_hash", "member", "run_dir", "data.n_ft", "data.name", "data.split_seed",
        "ft.mode", "ft.readout_scale", "init.kappa", "runtime.device", "seed", "mode", "n_ft", "test_acc",
        "test_loss"]


def acc(kappa: float, n: int, seed: int, stl: bool = False) -> float:
    """Deterministic, seed-dependent accuracies (no two seeds equal)."""
    base = 0.6 + 0.1 * np.log10(n) - (0.15 if stl else 0.1 * kappa)
    return round(float(base + 0.013 * seed + 0.004 * seed ** 2 + 0.001 * kappa), 6)


def row(kappa, n, seed, *, mode="finetune", status="ok", y=None, gamma=1.0, name="cifar100") -> dict:
    h = f"{mode[0]}{kappa}-{n}-{seed}-{gamma}-{name}"
    y = acc(kappa, n, seed, mode == "stl") if y is None else y
    return {"status": status, "stage": "finetune", "run_hash": h, "member": "", "run_dir": f"runs/finetune/{h}",
            "data.n_ft": n, "data.name": name, "data.split_seed": seed, "ft.mode": mode, "ft.readout_scale": gamma,
            "init.kappa": kappa, "runtime.device": "cpu" if seed else "cuda", "seed": seed, "mode": mode,
            "n_ft": n, "test_acc": y, "test_loss": 1 - y}


def sweep_rows(**kw) -> list[dict]:
    rows = []
    for k in KAPPAS:
        for n in NS:
            for s in SEEDS:
                if (k, n, s) == MISSING:
                    continue
                if (k, n, s) == FAILED:
                    rows.append(row(k, n, s, status="diverged", y=float("nan"), **kw))
                else:
                    rows.append(row(k, n, s, **kw))
    rows += [row(1.0, n, s, mode="stl", **kw) for n in NS for s in SEEDS]
    rows.append({"status": "max_epochs", "stage": "pretrain", "run_hash": "pt", "run_dir": "runs/pretrain/pt",
                 "init.kappa": 0.5, "seed": 0, "test_acc": 0.2})  # not a fine-tuning: ignored
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    cols = list(dict.fromkeys([*COLS, *(k for r in rows for k in r)]))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def sweep_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "sweep.csv", sweep_rows())


def ok_values(kappa, n, stl=False) -> np.ndarray:
    if stl:
        return np.array([acc(1.0, n, s, True) for s in SEEDS])
    return np.array([acc(kappa, n, s) for s in SEEDS if (kappa, n, s) not in (MISSING, FAILED)])


# ------------------------------------------------------------------------------------------------
def test_ci_is_the_student_t_interval(sweep_csv: Path):
    s = plot.summarise(plot.load([sweep_csv]), "init.kappa")
    assert s.panel is None and s.hues() == [0.5, 1.0]
    assert len(s.points) == 3 * 3  # 2 kappas + STL, 3 n_ft each
    for p in s.points:
        v = ok_values(p.hue, p.n_ft, p.hue is plot.STL)
        lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
        assert p.n == len(v) and p.mean == pytest.approx(v.mean(), abs=1e-12)
        assert p.ci95() == pytest.approx((lo, hi), abs=1e-12)


def test_figure_table_and_incomplete_points(sweep_csv: Path, tmp_path: Path, capsys):
    out = tmp_path / "fig" / "kappa.png"
    assert plot.main([str(sweep_csv), "--hue", "init.kappa", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    # the missing seed and the failed run are named on the console ...
    assert "incomplete point init.kappa=1, n_ft=100: missing seed 2" in err
    assert "incomplete point init.kappa=0.5, n_ft=1000: failed seed 1 (diverged)" in err
    assert err.count("incomplete point") == 2
    # ... and seed / device columns do not count as mixed sweeps (split_seed is tied to seed)
    assert "varies inside" not in err
    # the PNG exists and is an image
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    # table CSV: numbers as numpy computes them, problems listed
    table = read_csv(out.with_suffix(".csv"))
    assert len(table) == 9
    for r in table:
        stl = r["init.kappa"] == "STL"
        v = ok_values(None if stl else float(r["init.kappa"]), int(r["n_ft"]), stl)
        assert int(r["n_seeds"]) == len(v)
        assert float(r["test_acc_mean"]) == pytest.approx(np.mean(v), abs=1e-12)
        assert float(r["test_acc_sem"]) == pytest.approx(np.std(v, ddof=1) / np.sqrt(len(v)), abs=1e-12)
        lo, hi = stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
        assert (float(r["ci95_lo"]), float(r["ci95_hi"])) == pytest.approx((lo, hi), abs=1e-12)
    bad = {(r["init.kappa"], r["n_ft"]): r["incomplete"] for r in table if r["incomplete"]}
    assert bad == {("1", "100"): "missing seed 2", ("0.5", "1000"): "failed seed 1 (diverged)"}
    # Markdown: LL's table, mean +- SEM, STL as a column, incomplete cells marked
    md = out.with_suffix(".md").read_text()
    assert "| n_ft | init.kappa=0.5 | init.kappa=1 | STL |" in md
    v = ok_values(1.0, 100)
    assert f"| 100 | " in md and f"{v.mean():.3f} ± {np.std(v, ddof=1) / np.sqrt(2):.3f} (n=2) †" in md
    v = ok_values(None, 10, stl=True)
    assert f"{v.mean():.3f} ± {stats.sem(v):.3f} (n=3) |" in md


def test_panels_and_mixed_sweeps(tmp_path: Path, capsys):
    rows = sweep_rows() + sweep_rows(gamma=3.0)  # two readout scales pooled under one kappa point
    rows += [r for r in sweep_rows(name="svhn") if r["stage"] == "finetune"]
    src = write_csv(tmp_path / "mixed.csv", rows)
    s = plot.summarise(plot.load([src]), "init.kappa")
    assert s.panel == "data.name" and s.panels() == ["cifar100", "svhn"]  # auto panel: data.name varies
    mixed = [w for w in s.warnings if "varies inside" in w]
    assert len(mixed) == 1 and mixed[0].startswith("ft.readout_scale varies inside")
    assert "--where ft.readout_scale=VALUE" in mixed[0]
    s = plot.summarise(plot.load([src]), "init.kappa", where=["ft.readout_scale=3"], panel="none")
    assert s.panel is None and not [w for w in s.warnings if "varies inside" in w]
    # the hue can be any swept key, e.g. the readout scale itself (kappa then varies inside points)
    s = plot.summarise(plot.load([src]), "ft.readout_scale", panel="data.name")
    assert s.hues() == [1.0, 3.0] and any(w.startswith("init.kappa varies inside") for w in s.warnings)
    out = tmp_path / "panels.png"
    assert plot.main([str(src), "--hue", "init.kappa", "--where", "ft.readout_scale=1", "--out", str(out)]) == 0
    assert {r["data.name"] for r in read_csv(out.with_suffix(".csv"))} == {"cifar100", "svhn"}


@pytest.mark.parametrize("case", ["missing_path", "unknown_hue", "no_ft_rows", "unknown_metric", "bad_suffix",
                                  "bad_where", "unknown_panel", "empty_dir"])
def test_bad_input_exit_2_nothing_written(case: str, sweep_csv: Path, tmp_path: Path, capsys):
    out = tmp_path / "out" / "fig.png"
    args = [str(sweep_csv), "--hue", "init.kappa", "--out", str(out)]
    if case == "missing_path":
        args[0] = str(tmp_path / "nope")
    elif case == "unknown_hue":
        args[2] = "init.kapa"
    elif case == "no_ft_rows":
        args[0] = str(write_csv(tmp_path / "pt.csv", [r for r in sweep_rows() if r["stage"] == "pretrain"]))
    elif case == "unknown_metric":
        args += ["--metric", "test_accuracy"]
    elif case == "bad_suffix":
        args[-1] = str(out.with_suffix(".csv"))
    elif case == "bad_where":
        args += ["--where", "ft.readout_scale"]
    elif case == "unknown_panel":
        args += ["--panel", "data.ground_truth"]
    elif case == "empty_dir":
        (tmp_path / "store").mkdir()
        args[0] = str(tmp_path / "store")
    assert plot.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ptft-plot: error:"), err
    if case == "unknown_hue":
        assert "init.kapa" in err[0] and "init.kappa" in err[0]  # names the keys that do vary
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("*.png"))


# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_store_and_sweep(tmp_path: Path, capsys):
    """A tiny vision sweep (width 4, 1 PT epoch, 2 n_ft x 2 seeds x rescale 0.25/1) + STL, end to end."""
    from ptft.vision import synthetic

    t0 = time.time()
    synthetic.generate(tmp_path / "data", "cifar100", n_train_per_class=8, n_test_per_class=10, seed=0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(plot.__file__).parents[2]),
                                                         os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = ["experiment=vision/demo_synthetic", "data.root=data", "store.root=store", "model.width=4",
           "pretrain.train.max_epochs=1", "train.max_epochs=2", "train.threshold=100", "runs.n_ft=[4,8]",
           "runs.seeds=[0,1]", "wandb.mode=disabled"]
    main = [sys.executable, "-c", "from ptft.pipeline.main import finetune_main; finetune_main()"]
    for args in (["-m", *cmd, "ft.rescale=0.25,1", "hydra.sweep.dir=sweep"],
                 [*cmd, "ft.mode=stl", "hydra.run.dir=stl"]):
        p = subprocess.run(main + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
    agg = tmp_path / "all.csv"
    subprocess.run([sys.executable, "-m", "ptft.analysis.aggregate", "store", "--out", str(agg)], cwd=tmp_path,
                   env=env, check=True, capture_output=True)
    capsys.readouterr()
    out = tmp_path / "fig.png"
    # sweep dir + store + the CSV of the same store: every run counted once
    assert plot.main([str(tmp_path / "sweep"), str(tmp_path / "store"), str(agg), "--hue", "ft.rescale",
                      "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "incomplete" not in err and "varies inside" not in err, err
    table = read_csv(out.with_suffix(".csv"))
    assert [(r["ft.rescale"], r["n_ft"], r["n_seeds"]) for r in table] == [
        ("0.25", "4", "2"), ("0.25", "8", "2"), ("1", "4", "2"), ("1", "8", "2"), ("STL", "4", "2"), ("STL", "8", "2")]
    assert all(0 <= float(r["test_acc_mean"]) <= 1 for r in table)
    assert out.read_bytes()[:4] == b"\x89PNG"
    print(f"real store test: {time.time() - t0:.1f} s")


def test_stages_plot_one_line_per_stage_against_the_knob(tmp_path: Path, capsys):
    """--stages diag/movement: every stage's points, x = the knob, mean and t-interval over seeds."""
    rows = sweep_rows()
    for r in rows:
        if r["stage"] != "finetune":
            continue
        r["diag/movement/early"] = 0.1 * r["seed"] + r["init.kappa"]
        r["diag/movement/head"] = 2.0 - r["init.kappa"] + 0.05 * r["seed"] ** 2
    path = write_csv(tmp_path / "d.csv", rows)
    out = tmp_path / "stages.png"
    assert plot.main([str(path), "--hue", "init.kappa", "--stages", "diag/movement", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    table = read_csv(out.with_suffix(".csv"))
    assert {r["stage"] for r in table} == {"early", "head"}
    for t in table:
        if t["init.kappa"] == "STL" or not int(t["n_seeds"]):
            continue
        k, n = float(t["init.kappa"]), int(t["n_ft"])
        vals = [r[f"diag/movement/{t['stage']}"] for r in rows if r.get("n_ft") == n and r["init.kappa"] == k
                and r["ft.mode"] == "finetune" and r["status"] == "ok"]
        assert float(t["mean"]) == pytest.approx(np.mean(vals))
        assert int(t["n_seeds"]) == len(vals)
    # an unknown prefix: one line, exit 2, nothing written
    bad = tmp_path / "bad.png"
    assert plot.main([str(path), "--hue", "init.kappa", "--stages", "diag/cka", "--out", str(bad)]) == 2
    assert "--stages diag/cka" in capsys.readouterr().err and not bad.exists()
