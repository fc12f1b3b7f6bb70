"""Freshness check of results/: is every committed result what today's code produces?

    python scripts/check_results.py                       # every registered file (what CI runs)
    python scripts/check_results.py demo_dln.csv          # some of them
    python scripts/check_results.py --list                # the registry, and the results/ files it leaves out
    python scripts/check_results.py --update FILE         # regenerate FILE's README row into results/
    python scripts/check_results.py --committed DIR FILE  # compare with DIR/FILE instead of results/FILE

RESULTS below is the one list of checked files. The command that makes a file is NOT written here: it is
the first `backticked` span of the command column of the file's row in results/README.md, run verbatim
(`python` and the console scripts are this interpreter's) in a sandbox: a temporary folder holding copies
of src/, conf/, scripts/ and of the entry's inputs under results/. The regenerated CSV is then compared with
the committed one: same columns; rows matched by `keys` (or in order); every column not in `ignore` equal,
exactly when rtol = 0, else within rtol (relative). A mismatch names the file and its first differing row.
Figures (png, pdf) are drawn from the checked CSVs and are not compared.

An expensive file (hours of simulation) registers a `sample` function instead: it reruns a few of the
file's rows with today's code and returns them, committed row -> regenerated row.

To register a new result: add one Result(...) to RESULTS, give the file its row in results/README.md with
the command in backticks, and run this script on it.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
README = REPO / "results" / "README.md"


@dataclass(frozen=True)
class Result:
    file: str                      # name under results/
    keys: tuple[str, ...] = ()     # columns that identify a row (rows matched in order when empty)
    ignore: tuple[str, ...] = ()   # columns not compared (paths, hashes)
    rtol: float = 0.0              # 0: exact text equality of every compared cell
    inputs: tuple[str, ...] = ()   # committed results/ files the command reads
    sample: Optional[Callable[["Result", Path, Path], list[tuple[dict, dict]]]] = None
    why: str = ""                  # how it is checked, for --list and results/README.md


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
    pts = {p["point"]: p for p in fs.points(REPO / "results" / "dln_agreement.csv")}
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
RESULTS = [
    Result("regime_map.csv", rtol=1e-6, why="rtol 1e-6 (values written to 8 significant digits)"),
    Result("dln_theory.csv", rtol=1e-6, ignore=("residual",), why=THEORY),
    Result("dln_regimes.csv", rtol=1e-6, ignore=("residual",), why=THEORY),
    Result("dln_panels_points.csv", rtol=1e-6, ignore=("residual",), inputs=("dln_sims_cpu.csv",),
           why=THEORY + "; from the committed dln_sims_cpu.csv"),
    Result("dln_agreement.csv", rtol=1e-6, ignore=("theory_residual",), inputs=("dln_sims_cpu.csv",),
           why=THEORY + "; from the committed dln_sims_cpu.csv"),
    Result("demo_dln.csv", keys=("dln.lam_pt", "dln.alpha", "member"), rtol=1e-6, ignore=("run_dir", "job_dir"),
           why="rtol 1e-6 (float64 GD); run_dir, job_dir not compared"),
    Result("vision_synthetic_rescale.csv", keys=("ft.mode", "ft.rescale", "data.n_ft", "seed"),
           ignore=("run_dir", "job_dir", "run_hash"),
           why="exact (CPU, OMP_NUM_THREADS=1; rounding changes the accuracies); "
               "run_dir, job_dir, run_hash not compared"),
    Result("dln_sims_cpu.csv", keys=("rho_pt", "a_pt", "c_pt", "lam_pt", "gamma", "rho_ft", "omega", "alpha"),
           rtol=1e-6, sample=sample_dln_sims,
           why="sample: 2 of its 308 jobs rerun (the cheapest, and the one at a third of the jobs by steps_max); "
               "rtol 1e-6 (float64 GD)"),
    Result("dln_finite_size_ib.csv", keys=("point", "dim"), rtol=1e-6, ignore=("gd_over_ib", "job_cpu_s"),
           sample=sample_dln_ib,
           why="sample: 2 of its 60 (point, D) rows rerun (the minimiser at the smallest D); rtol 1e-6 (Newton to "
               "1e-10); gd_over_ib (needs the GD store) and job_cpu_s not compared"),
]


# ---------------------------------------------------------------- README

def split_row(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def readme_rows(text: str) -> list[tuple[list[str], str]]:
    """(files named in the first cell, command) for every table row with a `command` column."""
    out, col = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            col = None
            continue
        cells = split_row(line)
        if col is None:  # a table's header row
            col = cells.index("command") if "command" in cells else -1
            continue
        if col < 0 or set(line) <= set("|-: "):
            continue
        cmd = re.search(r"`([^`]+)`", cells[col]) if col < len(cells) else None
        out.append((re.findall(r"`([^`]+)`", cells[0]), cmd.group(1) if cmd else ""))
    return out


def row_for(file: str, text: str) -> tuple[list[str], str]:
    rows = [r for r in readme_rows(text) if file in r[0]]
    if len(rows) != 1:
        raise SystemExit(f"results/README.md: {len(rows)} table rows name `{file}` in their file column (need 1)")
    return rows[0]


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
            shutil.copy2(REPO / "results" / f, box / "results" / f)
    return box


def run_command(cmd: str, box: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline",
               PYTHONPATH=str(box / "src"), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("PTFT_CONF_DIR", None)
    p = subprocess.run(["bash", "-c", f"set -e; {cmd}"], cwd=box, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {cmd}\n{(p.stdout + p.stderr)[-3000:]}")


def check(selected: list[Result], committed_dir: Path, update: bool = False) -> int:
    text = README.read_text()
    groups: dict[str, list[Result]] = {}
    for r in selected:
        files, cmd = row_for(r.file, text)
        if r.sample is None and not cmd:
            raise SystemExit(f"results/README.md: the row of `{r.file}` has no `command`")
        groups.setdefault("" if r.sample else cmd, []).append(r)
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
                        for f in row_for(r.file, text)[0]:
                            if (box / "results" / f).exists():
                                shutil.copy2(box / "results" / f, REPO / "results" / f)
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
    ap.add_argument("files", nargs="*", help="registered file names (default: all)")
    ap.add_argument("--list", action="store_true",
                    help="print the registry (markdown rows) and the results/ CSVs it leaves out")
    ap.add_argument("--update", action="store_true", help="copy the regenerated files of each row into results/")
    ap.add_argument("--committed", type=Path, default=REPO / "results", help="folder of the files to check")
    a = ap.parse_args(argv)
    names = {r.file: r for r in RESULTS}
    unknown = [f for f in a.files if f not in names]
    if unknown:
        ap.error(f"not registered: {unknown}; registered: {sorted(names)}")
    if a.list:
        for r in RESULTS:  # the rows of the table in results/README.md's Freshness section
            print(f"| `{r.file}` | {r.why} |")
        left = sorted(p.name for p in (REPO / "results").glob("*.csv") if p.name not in names)
        print(f"not checked: {left or 'none'}")
        return 0
    return check([names[f] for f in a.files] if a.files else RESULTS, a.committed, a.update)


if __name__ == "__main__":
    sys.exit(main())
