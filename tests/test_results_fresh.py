"""results/ is what today's code produces (scripts/check_results.py): the registry in code covers every committed
file of results/ outside the engine studies (tests/test_study.py checks those), its commands name scripts and
modules that exist and write into the entry's own folder, the comparison on doctored tables, and (slow) the full
check, which regenerates every checked file."""
from __future__ import annotations

import csv
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_results", REPO / "scripts" / "check_results.py")
C = sys.modules["check_results"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(C)


def test_registered_files_exist_once_each():
    assert len({r.file for r in C.RESULTS}) == len(C.RESULTS)
    on_disk = C.committed_files()
    for r in C.RESULTS:
        assert (REPO / "results" / r.file).is_file(), r.file
        assert r.checked or r.why.startswith("not checked"), f"{r.file}: say why it is not checked"
        for f in r.inputs:
            assert (REPO / "results" / f).is_file(), f
        for pattern in r.also:
            assert any(C.fnmatch.fnmatch(f, pattern) for f in on_disk), f"{r.file}: `also` {pattern} matches nothing"


def _console_scripts() -> set[str]:
    text = (REPO / "pyproject.toml").read_text()
    block = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", block, flags=re.M))


def test_registry_commands_name_existing_scripts_and_modules():
    scripts = _console_scripts()
    for r in C.RESULTS:
        for part in r.command.split("&&"):
            argv = shlex.split(part)
            if argv[0] == "python" and argv[1] == "-m":
                assert importlib.util.find_spec(argv[2]) is not None, f"{r.file}: no module {argv[2]}"
            elif argv[0] == "python":
                assert (REPO / argv[1]).is_file(), f"{r.file}: no script {argv[1]}"
            else:
                assert argv[0] in scripts | {"cp"}, f"{r.file}: {argv[0]} is not a console script of ptft"


def test_registry_commands_write_into_the_entrys_folder():
    for r in C.RESULTS:
        folder = r.file.split("/")[0]
        paths = [w for w in shlex.split(r.command.replace("&&", " ")) if w.startswith("results/")]
        for p in paths:
            inside = (p.rstrip("/") + "/").startswith(f"results/{folder}/")
            assert inside or p[len("results/"):] in r.inputs, (r.file, p)


def test_every_results_file_is_registered_or_an_engine_output():
    files = C.committed_files()
    assert "dln_theory/regime_map.csv" in files and "README.md" in files
    assert C.uncovered(files) == []
    # the coverage rule itself: a stray table or figure is caught, README.md and an engine folder are not
    assert C.uncovered(["dln_theory/stray.csv", "dln_theory/README.md"]) == ["dln_theory/stray.csv"]
    assert C.uncovered([f"{e}/figure.png" for e in C.engine_folders()]) == []


def test_every_folder_has_a_readme_and_an_index_line():
    index = (REPO / "results" / "README.md").read_text()
    folders = sorted({f.split("/")[0] for f in C.committed_files() if "/" in f})
    assert folders
    for d in folders:
        assert (REPO / "results" / d / "README.md").is_file(), f"results/{d}/README.md is missing"
        assert f"({d}/" in index or f"`{d}/`" in index, f"results/README.md has no line for {d}/"


def test_list_prints_the_registry(capsys):
    assert C.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(r.file in out and r.command in out for r in C.RESULTS)
    assert "not covered: none" in out


def test_theory_commands_write_into_their_folders_by_default(tmp_path, monkeypatch):
    from ptft.analysis import dln_figures as F

    monkeypatch.chdir(tmp_path)
    F.main(["regime-map", "--n-beta", "4", "--n-lam", "5"])
    assert (tmp_path / "results" / "dln_theory" / "regime_map.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["dln_theory"]


def _write(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_compare_names_the_first_differing_row(tmp_path):
    res = C.Result("t.csv", "true", keys=("mode", "seed"), ignore=("run_dir",))
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
    assert C.compare(C.Result("t.csv", "true", rtol=1e-6), old, close) == []
    assert C.compare(C.Result("t.csv", "true"), old, close)  # exact: any change is a difference
    short = _write(tmp_path / "short.csv", ["x", "y"], [[1, 1.0]])
    assert any("2 rows committed, 1 regenerated" in p for p in C.compare(C.Result("t.csv", "true"), old, short))
    assert C.compare(C.Result("t.csv", "true"), old, tmp_path / "missing.csv") == \
        ["the command did not write missing.csv"]


@pytest.mark.slow
def test_committed_results_are_what_the_code_produces():
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "check_results.py")], cwd=REPO,
                       capture_output=True, text=True)
    print(p.stdout)  # per-file verdicts and times (pytest -rP shows them)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
