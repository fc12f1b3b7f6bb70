"""results/ is what today's code produces (scripts/check_results.py): the registry against results/README.md,
the comparison on doctored tables, and (slow) the full check, which regenerates every registered file."""
from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_results", REPO / "scripts" / "check_results.py")
C = sys.modules["check_results"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(C)


def test_every_registered_file_has_its_readme_command():
    text = C.README.read_text()
    assert len({r.file for r in C.RESULTS}) == len(C.RESULTS)
    for r in C.RESULTS:
        assert (REPO / "results" / r.file).exists(), r.file
        files, cmd = C.row_for(r.file, text)
        assert r.file in files
        assert r.sample is not None or cmd, r.file
        for f in r.inputs:
            assert (REPO / "results" / f).exists(), f


def test_readme_freshness_table_is_the_registry(capsys):
    assert C.main(["--list"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert rows and all(line in C.README.read_text().splitlines() for line in rows)


def test_readme_cells_split_on_unescaped_bars_only():
    text = "| file | command | what |\n|---|---|---|\n| `a.csv`, `b.png` | `run x && y` (or `z`) | p \\| q |\n"
    assert C.readme_rows(text) == [(["a.csv", "b.png"], "run x && y")]


def _write(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_compare_names_the_first_differing_row(tmp_path):
    res = C.Result("t.csv", keys=("mode", "seed"), ignore=("run_dir",))
    old = _write(tmp_path / "old.csv", ["mode", "seed", "run_dir", "acc"],
                 [["ft", 0, "/a", 0.9], ["ft", 1, "/b", 0.86], ["stl", 0, "/c", 0.5]])
    same = _write(tmp_path / "same.csv", ["mode", "seed", "run_dir", "acc"],
                  [["stl", 0, "/x", 0.5], ["ft", 1, "/y", 0.86], ["ft", 0, "/z", 0.9]])
    assert C.compare(res, old, same) == []
    new = _write(tmp_path / "new.csv", ["mode", "seed", "run_dir", "acc", "extra"],
                 [["ft", 0, "/a", 0.9, 1], ["ft", 1, "/b", 0.93, 1], ["stl", 0, "/c", 0.5, 1]])
    problems = C.compare(res, old, new)  # a new column alone is a note; every old column must still agree
    assert len(problems) == 1 and "mode=ft, seed=1" in problems[0] and "'0.86'" in problems[0] \
        and "'0.93'" in problems[0]
    gone = _write(tmp_path / "gone.csv", ["mode", "seed", "run_dir"], [["ft", 0, "/a"], ["ft", 1, "/b"], ["stl", 0, "/c"]])
    assert any("acc" in p and "only committed" in p for p in C.compare(res, old, gone))


def test_compare_tolerance_and_row_count(tmp_path):
    old = _write(tmp_path / "old.csv", ["x", "y"], [[1, 1.0], [2, 2.0]])
    close = _write(tmp_path / "close.csv", ["x", "y"], [[1, 1.0 + 1e-9], [2, 2.0]])
    assert C.compare(C.Result("t.csv", rtol=1e-6), old, close) == []
    assert C.compare(C.Result("t.csv"), old, close)  # exact: any change is a difference
    short = _write(tmp_path / "short.csv", ["x", "y"], [[1, 1.0]])
    assert any("2 rows committed, 1 regenerated" in p for p in C.compare(C.Result("t.csv"), old, short))
    assert C.compare(C.Result("t.csv"), old, tmp_path / "missing.csv") == ["the command did not write missing.csv"]


@pytest.mark.slow
def test_committed_results_are_what_the_code_produces():
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "check_results.py")], cwd=REPO,
                       capture_output=True, text=True)
    print(p.stdout)  # per-file verdicts and times (pytest -rP shows them)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
