"""Freshness check of results/: is every committed result what today's code produces?

    python scripts/check_results.py                                  # every checked file (what CI runs)
    python scripts/check_results.py dln_theory/regime_map.csv        # some of them (unchecked ones too)
    python scripts/check_results.py --list                           # the registry, and results/ files it misses
    python scripts/check_results.py --update FILE                    # regenerate FILE (and its `also`) into results/
    python scripts/check_results.py --committed DIR FILE             # compare with DIR/FILE instead of results/FILE

RESULTS below is the registry of results/: every committed file outside the engine studies' folders
(results/<study>/ with a runs.csv, checked by `ptft-study NAME --check`, tests/test_study.py) is a registered
`file`, or one of the `also` files of an entry (figures and side tables its command writes from the same data),
or a folder's README.md. Each entry carries the `command` that writes it, run from the repository root as
written (`python` and the console scripts are this interpreter's), with results/ paths that are the commands'
own defaults. The check runs it in a sandbox (a temporary folder holding copies of src/, conf/, scripts/ and of
the entry's `inputs` under results/) and compares the regenerated CSV with the committed one: same columns; rows
matched by `keys` (or in order); every column not in `ignore` equal, exactly when rtol = 0, else within rtol
(relative). A mismatch names the file and its first differing row. `also` files are not compared.

An expensive file (hours of simulation) registers a `sample` function instead: it reruns a few of the file's
rows with today's code and returns them, committed row -> regenerated row. A file too costly for CI even so
is registered with checked=False (`why` says what a rerun costs): the plain check skips it, naming it on the
command line runs it.

To register a new result: add one Result(...) to RESULTS, mention its folder in results/README.md, and run this
script on it.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "results"


@dataclass(frozen=True)
class Result:
    file: str                      # path under results/: "<folder>/<name>.csv"
    command: str                   # what writes it, run from the repository root (entries sharing it run it once)
    keys: tuple[str, ...] = ()     # columns that identify a row (rows matched in order when empty)
    ignore: tuple[str, ...] = ()   # columns not compared (paths, hashes)
    rtol: float = 0.0              # 0: exact text equality of every compared cell
    inputs: tuple[str, ...] = ()   # committed results/ files the command reads
    also: tuple[str, ...] = ()     # other files (glob patterns under results/) the command writes: not compared
    sample: Optional[Callable[["Result", Path, Path], list[tuple[dict, dict]]]] = None
    checked: bool = True           # False: not rerun by the plain check (too costly; `why` says so)
    why: str = ""                  # how it is checked, for --list


def sample_dln_sims(res: Result, committed: Path, work: Path, n: int = 2) -> list[tuple[dict, dict]]:
    """Rerun n of the CSV's ptft-dln jobs (the cheapest one, then ones spread over the cheapest third by
    steps_max) exactly as `python -m ptft.analysis.dln_sims` runs them; return committed -> rerun rows."""
    import numpy as np
    import torch

    from ptft.analysis.dln_sims import CONFIG_KEYS, _run, ci95, job_overrides

    torch.set_num_threads(1)
    rows = sorted(read_csv(committed)[1], key=lambda r: int(r["steps_max"]))
    picks = sorted({round(i * (len(rows) // 3) / max(n - 1, 1)) for i in range(n)})
    out = []
    for r in (rows[i] for i in picks):
        curve = {k: float(r[k]) for k in CONFIG_KEYS}
        got = _run(job_overrides(curve, float(r["alpha"]), int(r["dim"]), int(r["seeds"]), str(work / "runs")))
        members = got.get("members", [got])
        err = np.array([m["test_mse"] for m in members])
        fresh = {**r, "seeds": str(len(err)), "error_mean": repr(float(err.mean())),
                 "error_ci95": repr(ci95(err)), "status": got["status"],
                 "steps_max": str(max(m["steps"] for m in members))}
        out.append((r, fresh))
    return out


def sample_dln_ib(res: Result, committed: Path, work: Path, n: int = 2) -> list[tuple[dict, dict]]:
    """Rerun the implicit-bias minimiser of n rows of the finite-size study (the first points at the smallest
    D) exactly as `scripts/dln_finite_size.py --ib` computes them; return committed -> rerun rows."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dln_finite_size", REPO / "scripts" / "dln_finite_size.py")
    fs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fs)
    rows = read_csv(committed)[1]
    dmin = min(int(r["dim"]) for r in rows)
    pts = {p["point"]: p for p in fs.points(RESULTS_DIR / "dln_panels" / "dln_agreement.csv")}
    out = []
    for r in [r for r in rows if int(r["dim"]) == dmin][:n]:
        got = fs.ib_row(pts[int(r["point"])], dmin, int(r["seeds"]), str(work / "runs"))
        out.append((r, {**r, **{k: repr(v) if isinstance(v, float) else str(v) for k, v in got.items()}}))
    return out


# Theory (quadrature + Newton solves to 1e-6 relative) and float64 GD on DLNs: numbers agree to rounding across
# numpy / torch builds, so rtol = 1e-6 (the solver's tolerance); a Newton solve's leftover residual changes with
# rounding (up to 90% of itself, always below the tolerance) and is not compared; `converged` is, exactly.
# Training a ResNet amplifies any rounding difference into different accuracies: exact.
THEORY = "rtol 1e-6 (the replica's tolerance); residual columns not compared"
PANELS = "python -m ptft.analysis.dln_figures panels --sims results/dln_panels/dln_sims_cpu.csv --scale cpu"
FINITE = "python scripts/dln_finite_size.py --store runs/dln_finite_size --workers 2"
STORE_COLS = ("run_dir", "job_dir", "run_hash")  # where a run lives: differs in every store


def threshold(t: str) -> Result:
    out = f"results/dln_finite_size/dln_threshold/{t}"
    gd = f"python scripts/dln_finite_size.py --threshold {t} --dims 250 --points 1 3 4 --store runs/dln_threshold"
    return Result(f"dln_finite_size/dln_threshold/{t}/dln_finite_size_ib.csv",
                  f"{gd} --out {out} && {gd} --ib --out {out}", keys=("point", "dim"), rtol=1e-6,
                  ignore=("job_cpu_s",), inputs=("dln_panels/dln_agreement.csv",),
                  also=(f"dln_finite_size/dln_threshold/{t}/dln_finite_size.csv",), checked=False,
                  why=f"not checked: GD to train MSE < {t} at D = 250 for 3 points, 32 seeds (up to 431 445 steps)")


RESULTS = [
    Result("dln_theory/regime_map.csv", "python -m ptft.analysis.dln_figures regime-map", rtol=1e-6,
           also=("dln_theory/regime_map.png",), why="rtol 1e-6 (values written to 8 significant digits)"),
    Result("dln_theory/dln_theory.csv", "python -m ptft.analysis.dln_figures theory", rtol=1e-6,
           ignore=("residual",), why=THEORY),
    Result("dln_theory/dln_regimes.csv", "python -m ptft.analysis.dln_figures regimes", rtol=1e-6,
           ignore=("residual",), also=("dln_theory/dln_regimes.png",), why=THEORY),
    Result("dln_panels/dln_panels_points.csv", PANELS, rtol=1e-6, ignore=("residual",),
           inputs=("dln_panels/dln_sims_cpu.csv",), also=("dln_panels/dln_panels.png", "dln_panels/dln_panels.pdf"),
           why=THEORY + "; from the committed dln_sims_cpu.csv"),
    Result("dln_panels/dln_agreement.csv", PANELS, rtol=1e-6, ignore=("theory_residual",),
           inputs=("dln_panels/dln_sims_cpu.csv",), why=THEORY + "; from the committed dln_sims_cpu.csv"),
    Result("demo/demo_dln.csv", "python scripts/demo.py --out results/demo", keys=("dln.lam_pt", "dln.alpha", "member"),
           rtol=1e-6, ignore=("run_dir", "job_dir"), also=("demo/demo_dln.png",),
           why="rtol 1e-6 (float64 GD); run_dir, job_dir not compared"),
    Result("vision_synthetic/vision_synthetic_rescale.csv",
           "ptft-data synthetic --root data/synthetic --format cifar100 --n-train-per-class 30 --n-test-per-class 100"
           " --distractors 1 && ptft-finetune -m experiment=vision/demo_synthetic"
           " && ptft-finetune experiment=vision/demo_synthetic ft.mode=stl"
           " && ptft-aggregate runs/finetune --out results/vision_synthetic/vision_synthetic_rescale.csv",
           keys=("ft.mode", "ft.rescale", "data.n_ft", "seed"), ignore=STORE_COLS,
           why="exact (CPU, OMP_NUM_THREADS=1; rounding changes the accuracies); "
               "run_dir, job_dir, run_hash not compared"),
    Result("dln_panels/dln_sims_cpu.csv", "python -m ptft.analysis.dln_sims --scale cpu --store runs --workers 2",
           keys=("rho_pt", "a_pt", "c_pt", "lam_pt", "gamma", "rho_ft", "omega", "alpha"),
           rtol=1e-6, sample=sample_dln_sims,
           why="sample: 2 of its 308 jobs rerun (the cheapest, and the one at a third of the jobs by steps_max); "
               "rtol 1e-6 (float64 GD)"),
    Result("dln_finite_size/dln_finite_size_ib.csv", f"{FINITE} --ib", keys=("point", "dim"), rtol=1e-6,
           ignore=("gd_over_ib", "job_cpu_s"), sample=sample_dln_ib,
           also=("dln_finite_size/dln_finite_size_ib_fit.csv", "dln_finite_size/dln_finite_size_ib.png"),
           why="sample: 2 of its 60 (point, D) rows rerun (the minimiser at the smallest D); rtol 1e-6 (Newton to "
               "1e-10); gd_over_ib (needs the GD store) and job_cpu_s not compared"),
    # ---- registered for their provenance, too costly to rerun in CI (named on the command line, they run)
    Result("dln_panels/dln_sims_paper_slice.csv",
           "python -m ptft.analysis.dln_sims --scale paper --alphas 0.059 --seeds 2 --store runs/paper_slice "
           "--out results/dln_panels/dln_sims_paper_slice.csv --workers 1",
           keys=("rho_pt", "a_pt", "c_pt", "lam_pt", "gamma", "rho_ft", "omega", "alpha"), rtol=1e-6, checked=False,
           why="not checked: D = 5000 GD, 305 s wall, 1.5 GB"),
    Result("dln_finite_size/dln_finite_size.csv",
           f"{FINITE} --dims 250 500 1000 2000 && {FINITE} --dims 4000 --alphas 0.5 0.304 0.108 0.059 --merge"
           " && python scripts/dln_finite_size.py --store runs/dln_finite_size --workers 1 --dims 4000 --alphas 0.353"
           " --merge", keys=("point", "dim"), rtol=1e-6, ignore=("job_cpu_s",), inputs=("dln_panels/dln_agreement.csv",),
           also=("dln_finite_size/dln_finite_size_fit.csv", "dln_finite_size/dln_finite_size.png",
                 "dln_finite_size/dln_sim_theory_offset.csv"), checked=False,
           why="not checked: 3.3 CPU hours of GD (D = 250 to 4000)"),
    threshold("1e-06"),
    threshold("1e-08"),
    Result("ll_dln_rescale_v1/ll_dln_rescale.csv", "python scripts/study_ll_dln.py --store runs/ll_dln --workers 2",
           keys=("task", "arm", "n_ft", "seed"), rtol=1e-6, also=("ll_dln_rescale_v1/*",), checked=False,
           why="not checked: ~1 h wall on 2 cores; superseded by the engine study ll_dln_rescale"),
    Result("modarith_knobs_v1/modarith_study.csv", "python scripts/study_modarith.py --store runs/modarith_study --workers 2",
           ignore=STORE_COLS, also=("modarith_knobs_v1/*",), checked=False,
           why="not checked: 90 jobs, ~19 CPU min per seed; superseded by the engine study modarith_knobs"),
    Result("vision_knobs_v1/vision_knobs.csv",
           " && ".join(f"ptft-data synthetic --root data/vknobs_{gt} --format svhn --n-train-per-class 150 "
                       f"--n-test-per-class 50 --distractors 1 --ground-truth {gt} --seed 0"
                       for gt in ("subset", "new", "dense"))
           + " && ptft-data synthetic --root data/synthetic --format cifar100 --n-train-per-class 30"
             " --n-test-per-class 100 --distractors 1"
             " && python scripts/study_vision.py --store runs/vision_knobs --workers 2",
           ignore=STORE_COLS, also=("vision_knobs_v1/*",), checked=False,
           why="not checked: 36 jobs, ~20 min wall on 2 quiet cores; superseded by the engine study vision_knobs"),
    Result("vision_synthetic/vision_groundtruth_probe.csv",
           "python scripts/probe_groundtruth.py --out /tmp/probe --seeds 0 1 2"
           " && cp /tmp/probe/probe.csv results/vision_synthetic/vision_groundtruth_probe.csv",
           keys=("seed", "ground_truth", "features", "n", "draw"), checked=False,
           why="not checked: 8 CPU min (36 min wall on the shared 2 cores)"),
    Result("arith_calibration/calibration.csv",
           "python scripts/calibrate_arith.py --store runs/arith_calibration --seeds 0 1 2 --workers 2",
           keys=("arm", "seed"), ignore=("wall_s", "cpu_s", "run_hash"), checked=False,
           why="not checked: 18 pretrainings, 719 CPU s (2167 s wall on the shared cores)"),
    Result("arith_calibration/grokking_nanda.csv",
           "python scripts/calibrate_arith.py --store runs/arith_calibration --preset arith/grokking_nanda --arms baseline"
           " --seeds 0 --out results/arith_calibration/grokking_nanda.csv"
           " --curves results/arith_calibration/grokking_nanda_curve.csv",
           keys=("arm", "seed"), ignore=("wall_s", "cpu_s", "run_hash"),
           also=("arith_calibration/grokking_nanda_curve.csv",), checked=False,
           why="not checked: one pretraining, 735 CPU s (2256 s wall on the shared cores)"),
    Result("digits_knobs_v1/digits_runs.csv", "python scripts/study_digits.py", ignore=STORE_COLS,
           also=("digits_knobs_v1/*",), checked=False,
           why="not checked: 7.4 min wall on 2 quiet cores (its tables were byte-identical on 2026-11-29); "
               "superseded by the engine study digits_knobs"),
]


# ---------------------------------------------------------------- coverage

def committed_files() -> list[str]:
    """Paths under results/ of the committed files (git's index; every file on disk outside a git checkout)."""
    p = subprocess.run(["git", "ls-files", "-z", "results"], cwd=REPO, capture_output=True, text=True)
    if p.returncode == 0 and p.stdout:
        return sorted(f[len("results/"):] for f in p.stdout.split("\0") if f)
    return sorted(str(f.relative_to(RESULTS_DIR)) for f in RESULTS_DIR.rglob("*") if f.is_file())


def engine_folders() -> set[str]:
    """The folders of engine studies (`ptft-study NAME` writes results/NAME/runs.csv; ptft-study --check)."""
    return {p.parent.name for p in RESULTS_DIR.glob("*/runs.csv")}


def uncovered(files: list[str]) -> list[str]:
    """The files of results/ that are neither registered, nor an `also` of an entry, nor in an engine study's
    folder, nor a README.md."""
    engine = engine_folders()
    pats = [r.file for r in RESULTS] + [p for r in RESULTS for p in r.also]
    return [f for f in files if Path(f).name != "README.md" and f.split("/")[0] not in engine
            and not any(fnmatch.fnmatch(f, p) for p in pats)]


# ---------------------------------------------------------------- comparison

def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


def same(a: str, b: str, rtol: float) -> bool:
    if a == b:
        return True
    if rtol == 0:
        return False
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=rtol, abs_tol=0.0)


def row_name(res: Result, row: dict, line: Optional[int]) -> str:
    cols = res.keys or list(row)[:4]
    where = f"line {line}: " if line else ""
    return where + ", ".join(f"{c}={row.get(c)}" for c in cols)


def compare_rows(res: Result, pairs: list[tuple[dict, dict, Optional[int]]], cols: list[str]) -> Optional[str]:
    for old, new, line in pairs:
        bad = [c for c in cols if c not in res.ignore and not same(old.get(c, ""), new.get(c, ""), res.rtol)]
        if bad:
            diffs = "; ".join(f"{c}: committed {old.get(c)!r}, regenerated {new.get(c)!r}" for c in bad[:4])
            more = f" (and {len(bad) - 4} more columns)" if len(bad) > 4 else ""
            return f"first differing row ({row_name(res, old, line)}): {diffs}{more}"
    return None


def compare(res: Result, committed: Path, fresh: Path) -> list[str]:
    """Problems of committed vs regenerated (empty list: the same)."""
    if not fresh.exists():
        return [f"the command did not write {fresh.name}"]
    h_old, old = read_csv(committed)
    h_new, new = read_csv(fresh)
    problems = []
    only_old, only_new = [c for c in h_old if c not in h_new], [c for c in h_new if c not in h_old]
    if only_old:
        problems.append(f"columns differ: {len(only_old)} only committed {only_old[:5]}, "
                        f"{len(only_new)} only regenerated {only_new[:5]}")
    elif only_new:  # e.g. a new config key: every committed column must still agree; refresh with --update
        print(f"note: {res.file}: {len(only_new)} new columns in the regenerated file {only_new[:5]} "
              f"(not compared; `--update {res.file}` adds them)", flush=True)
    if len(old) != len(new):
        problems.append(f"{len(old)} rows committed, {len(new)} regenerated")
    cols = [c for c in h_old if c in h_new]
    if res.keys:
        key = lambda r: tuple(r.get(k, "") for k in res.keys)  # noqa: E731
        by_new = {key(r): r for r in new}
        missing = [(i, r) for i, r in enumerate(old, 2) if key(r) not in by_new]
        if missing:
            problems.append(f"row not regenerated ({row_name(res, missing[0][1], missing[0][0])})")
        pairs = [(r, by_new[key(r)], i) for i, r in enumerate(old, 2) if key(r) in by_new]
    else:
        pairs = [(a, b, i) for i, (a, b) in enumerate(zip(old, new), 2)]
    diff = compare_rows(res, pairs, cols)
    return problems + ([diff] if diff else [])


# ---------------------------------------------------------------- running

def sandbox(res: list[Result]) -> Path:
    box = Path(tempfile.mkdtemp(prefix="ptft_fresh_"))
    for d in ("src", "conf", "scripts"):
        shutil.copytree(REPO / d, box / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (box / "results").mkdir()
    for r in res:
        for f in r.inputs:
            (box / "results" / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(RESULTS_DIR / f, box / "results" / f)
    return box


def run_command(cmd: str, box: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline",
               PYTHONPATH=str(box / "src"), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("PTFT_CONF_DIR", None)
    p = subprocess.run(["bash", "-c", f"set -e; {cmd}"], cwd=box, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {cmd}\n{(p.stdout + p.stderr)[-3000:]}")


def written(r: Result, box: Path) -> list[str]:
    """The entry's file and its `also` files that the command wrote into the sandbox's results/."""
    made = [str(f.relative_to(box / "results")) for f in (box / "results").rglob("*") if f.is_file()]
    return [f for f in made if f not in r.inputs and any(fnmatch.fnmatch(f, p) for p in (r.file, *r.also))]


def check(selected: list[Result], committed_dir: Path, update: bool = False) -> int:
    groups: dict[str, list[Result]] = {}
    for r in selected:  # entries sharing a command run it once
        groups.setdefault("" if r.sample else r.command, []).append(r)
    failed = 0
    t_all = time.time()
    for cmd, res in groups.items():
        for job in ([(cmd, res)] if cmd else [("", [r]) for r in res]):
            t0 = time.time()
            box = sandbox(job[1])
            try:
                if job[0]:
                    print(f"$ {job[0]}", flush=True)
                    run_command(job[0], box)
                for r in job[1]:
                    committed = committed_dir / r.file
                    if r.sample:
                        sys.path.insert(0, str(REPO / "src"))
                        pairs = [(a, b, None) for a, b in r.sample(r, committed, box)]
                        head = read_csv(committed)[0]
                        diff = compare_rows(r, pairs, head)
                        problems = [diff] if diff else []
                        note = f"{len(pairs)} sampled rows"
                    else:
                        problems = compare(r, committed, box / "results" / r.file)
                        note = f"{len(read_csv(committed)[1])} rows"
                    if update and r.sample is None:
                        for f in written(r, box):
                            (RESULTS_DIR / f).parent.mkdir(parents=True, exist_ok=True)
                            shutil.copy2(box / "results" / f, RESULTS_DIR / f)
                    status = "STALE" if problems else "ok"
                    failed += bool(problems)
                    print(f"{status:5} {r.file} ({note}, {time.time() - t0:.0f} s): {r.why}", flush=True)
                    for p in problems:
                        print(f"      {r.file}: {p}", flush=True)
            except RuntimeError as e:
                failed += len(job[1])
                print(f"FAIL  {', '.join(r.file for r in job[1])}: {e}", flush=True)
            finally:
                shutil.rmtree(box, ignore_errors=True)
    print(f"{len(selected) - failed}/{len(selected)} result files fresh ({time.time() - t_all:.0f} s)"
          + (" -- regenerated into results/" if update else ""))
    return 1 if failed else 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", help="registered files, as paths under results/ (default: every checked one)")
    ap.add_argument("--list", action="store_true",
                    help="print the registry and the results/ files it does not cover")
    ap.add_argument("--update", action="store_true",
                    help="copy the regenerated files (and their `also` files) into results/")
    ap.add_argument("--committed", type=Path, default=RESULTS_DIR, help="folder of the files to check")
    a = ap.parse_args(argv)
    names = {r.file: r for r in RESULTS}
    unknown = [f for f in a.files if f not in names]
    if unknown:
        ap.error(f"not registered: {unknown}; registered: {sorted(names)}")
    if a.list:
        for r in RESULTS:
            print(f"{'checked' if r.checked else 'manual':7} {r.file}: {r.why}\n        $ {r.command}")
        engine = sorted(engine_folders())
        print(f"engine studies (ptft-study NAME --check): {', '.join(engine) or 'none'}")
        left = uncovered(committed_files())
        print(f"not covered: {left or 'none'}")
        return 0
    return check([names[f] for f in a.files] if a.files else [r for r in RESULTS if r.checked],
                 a.committed, a.update)


if __name__ == "__main__":
    sys.exit(main())
