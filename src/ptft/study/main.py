"""`ptft-study`: run a study spec end to end, or check its committed outputs.

    ptft-study --list                              # the studies (<conf>/study/*.yaml) and their claims
    ptft-study NAME [key=value ...]                # plan, skip what is done, run the rest, write results/NAME/
    ptft-study path/to/my_study.yaml               # a spec of your own
    ptft-study NAME --report-only                  # the outputs from the runs already in the store
    ptft-study NAME --from-table results/NAME/runs.csv   # the outputs from a committed table (no runs)
    ptft-study NAME --check                        # freshness: outputs from the committed table, and a sample of
                                                   # its jobs rerun, must equal what is committed

Seeds are added in looks: the first `seeds.first`, then `seeds.batch` more at a time while any prediction is
not decided, up to `seeds.max` (docs/studies.md). Overrides change the spec (e.g. `seeds.max=10`, `workers=1`).
"""
from __future__ import annotations

import logging
import math
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from ptft import ArgumentParser, ConfigError
from ptft.analysis import stats
from ptft.study import report, table
from ptft.study.plan import plan
from ptft.study.runner import DONE, job_dir, run_jobs, setup
from ptft.study.spec import StudySpec, load, looks, names

log = logging.getLogger("ptft.study")


def _epilog() -> str:
    lines = ["studies:"]
    for n in names():
        try:
            lines.append(f"  {n:28s} {load(n).description}")
        except ConfigError as e:
            lines.append(f"  {n:28s} (invalid: {e})")
    return "\n".join(lines)


def run_study(spec: StudySpec, store: Path, out: Path, command: str, *, launcher: str = "local",
              report_only: bool = False) -> int:
    """The sequential loop: run a look's seeds, judge, add a batch while undecided; then write the outputs."""
    failures: list[str] = []
    n_looks = looks(spec.seeds)
    jobs: list = []
    if not report_only:
        setup(spec.setup)
    for i, n in enumerate(n_looks):
        jobs = plan(spec, n)
        if not report_only:
            failures += run_jobs(spec.app, spec.name, plan(spec, n, n_looks[i - 1] if i else 0), store,
                                 workers=spec.workers, launcher=launcher)
        rows = table.rows(spec, jobs, store)
        if not rows:
            break
        verdicts = report.verdict_rows(table.to_frame(rows), spec)
        undecided = [v for v in verdicts if v["verdict"] not in stats.DECIDED]
        print(f"[{spec.name}] look {i + 1}/{len(n_looks)} ({n} seeds): {len(verdicts) - len(undecided)} of "
              f"{len(verdicts)} predictions decided", file=sys.stderr, flush=True)
        if not undecided or report_only:
            break
    rows = table.rows(spec, jobs, store)
    if not rows:
        raise ConfigError(f"study {spec.name}: no finished runs in {store}" +
                          ("; run it without --report-only" if report_only else ""))
    table.write(rows, out / "runs.csv")
    secs = job_seconds(spec, jobs, store)
    runtime = f"{len(jobs)} jobs, {secs:.0f} s of job time on {spec.workers} worker(s) of one thread"
    paths = report.write(table.read(out / "runs.csv"), spec, out, command, runtime=runtime)
    print(f"[{spec.name}] wrote {out / 'runs.csv'} ({len(rows)} runs), " + ", ".join(p.name for p in paths),
          file=sys.stderr, flush=True)
    for f in failures:
        print(f"[{spec.name}] failed job: {f}", file=sys.stderr, flush=True)
    return 1 if failures else 0


def job_seconds(spec: StudySpec, jobs: Sequence, store: Path) -> float:
    """Wall seconds the jobs took when they ran (from their study_done.json)."""
    import json

    total = 0.0
    for j in jobs:
        try:
            total += float(json.loads((job_dir(store, spec.name, j) / DONE).read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return total


def from_table(spec: StudySpec, csv: Path, out: Path, command: str) -> None:
    df = table.read(csv)
    report.write(df, spec, out, command)


def _cells_equal(a: str, b: str, rtol: float) -> bool:
    if a == b or rtol <= 0:
        return a == b
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return (math.isnan(x) and math.isnan(y)) or abs(x - y) <= rtol * max(abs(x), abs(y))


def check(spec: StudySpec, committed: Path) -> list[str]:
    """Freshness of results/<study>/: (1) summary.csv and verdicts.csv regenerated from the committed runs.csv
    equal the committed ones (text); (2) `check.sample_jobs` jobs of the plan rerun in a temporary store give the
    committed rows (columns check.compare, default the metric and status; rtol check.rtol)."""
    import csv as _csv

    problems: list[str] = []
    if not (committed / "runs.csv").is_file():
        return [f"{committed}/runs.csv is missing: run `ptft-study {spec.name}`"]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        from_table(spec, committed / "runs.csv", t / "out", "check")
        for f in ("summary.csv", "verdicts.csv"):
            new, old = (t / "out" / f).read_text(), (committed / f).read_text() if (committed / f).is_file() else ""
            if new != old:
                diff = next((f"line {i + 1}: committed {a!r} vs regenerated {b!r}" for i, (a, b) in
                             enumerate(zip(old.splitlines(), new.splitlines())) if a != b), "lengths differ")
                problems.append(f"{committed / f} is stale ({diff}); regenerate with `ptft-study {spec.name} "
                                f"--from-table {committed / 'runs.csv'}`")
        with open(committed / "runs.csv", newline="") as fh:
            old_rows = list(_csv.DictReader(fh))
        key = lambda r: (r["arm"], float(r["x"]), int(r["seed"]), str(r.get("replicate") or ""))  # noqa: E731
        by_key = {key(r): r for r in old_rows}
        jobs = plan(spec, looks(spec.seeds)[0])
        k = spec.check.sample_jobs
        jobs = jobs[:k] if spec.check.pick == "first" else jobs[len(jobs) - k:]
        setup(spec.setup)
        store = t / "runs"
        fails = run_jobs(spec.app, spec.name, jobs, store, workers=min(spec.workers, len(jobs) or 1))
        problems += [f"sample job failed: {f}" for f in fails]
        cols = list(spec.check.compare) or [spec.metric.name, "status"]
        new_rows = table.rows(spec, jobs, store)
        if not new_rows and not fails:
            problems.append("the sample jobs produced no rows")
        for r in new_rows:
            cells = {k: ("" if v is None else repr(v) if isinstance(v, float) else str(v)) for k, v in r.items()}
            old = by_key.get(key(cells))
            if old is None:
                problems.append(f"sample run {key(cells)} is not in the committed runs.csv")
                continue
            for c in cols:
                if not _cells_equal(old.get(c, ""), cells.get(c, ""), spec.check.rtol):
                    problems.append(f"sample run {key(cells)}: {c} committed {old.get(c)!r}, rerun {cells.get(c)!r}")
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    ap = ArgumentParser(prog="ptft-study", description=__doc__, epilog=_epilog(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", nargs="?", help="a study name (see below) or a spec .yaml")
    ap.add_argument("overrides", nargs="*", help="spec overrides key=value (seeds.max=10, workers=1, ...)")
    ap.add_argument("--list", action="store_true", help="list the studies and exit")
    ap.add_argument("--store", type=Path, default=Path("runs"), help="run store (default: runs)")
    ap.add_argument("--out", type=Path, help="output folder (default: results/<study>)")
    ap.add_argument("--launcher", default="local", help="local (default) or a Hydra launcher: slurm, submitit_local")
    ap.add_argument("--report-only", action="store_true", help="no runs: outputs from what the store holds")
    ap.add_argument("--from-table", type=Path, help="no runs: outputs from a runs.csv")
    ap.add_argument("--check", action="store_true", help="check the committed outputs (see above)")
    a = ap.parse_args(argv)
    if a.list or not a.study:
        print(_epilog())
        return 0 if a.list else 2
    try:
        bad = [o for o in a.overrides if "=" not in o]
        if bad:
            raise ConfigError(f"{bad[0]!r}: overrides are key=value (spec keys: seeds.max=10, workers=1, ...)")
        spec = load(a.study, a.overrides)
        out = a.out or Path("results") / spec.name
        command = shlex.join(["ptft-study", a.study, *a.overrides])
        if a.check:
            problems = check(spec, out)
            for p in problems:
                print(f"ptft-study: stale: {p}", file=sys.stderr)
            print(f"[{spec.name}] {'fresh' if not problems else f'{len(problems)} problem(s)'}", file=sys.stderr)
            return 1 if problems else 0
        if a.from_table:
            if not a.from_table.is_file():
                raise ConfigError(f"--from-table {a.from_table}: no such file")
            from_table(spec, a.from_table, out, command)
            print(f"[{spec.name}] wrote {out}/summary.csv, verdicts.csv, figure.png, README.md", file=sys.stderr)
            return 0
        return run_study(spec, a.store.resolve(), out, command, launcher=a.launcher, report_only=a.report_only)
    except ConfigError as e:
        print(f"ptft-study: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
