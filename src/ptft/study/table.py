"""The one table of a study: one row per run, the same leading columns for every study.

    study, arm, x, seed, replicate, status, <metric>, then the run's config, metrics and provenance
    columns as ptft-aggregate writes them (run_hash identifies the run in the store).

Paths (run_dir, job_dir) and per-machine provenance (host, start and end times) are left out, so the
committed table depends only on what was computed.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from ptft.analysis.aggregate import run_rows, to_csv, to_frame as _frame
from ptft.study.plan import Job, arm_of
from ptft.study.runner import job_dir, run_dirs_of
from ptft.study.spec import StudySpec

FIRST = ("study", "arm", "panel", "x", "seed", "replicate", "status")
DROP = ("run_dir", "job_dir", "prov_host", "prov_start", "prov_end")


def _x_of(spec: StudySpec, job: Job, row: dict) -> Any:
    if job.x is not None:
        return job.x
    for k in (spec.x.key, "n_ft", "data.n_ft"):
        if row.get(k) not in (None, ""):
            return float(row[k])
    return math.nan


def rows(spec: StudySpec, jobs: Sequence[Job], store: Path) -> list[dict]:
    """One row per run of the planned jobs that has run (missing runs are absent: the report counts them)."""
    out = []
    for job in jobs:
        for rd in run_dirs_of(job_dir(store, spec.name, job)):
            for r in run_rows(rd):
                if spec.app == "finetune" and r.get("stage") != "finetune":
                    continue
                seed = r.get("seed")
                if seed in (None, "") or int(seed) not in job.seeds:
                    continue
                arm = job.arm or arm_of(spec, r)
                if not arm:
                    continue
                row = {"study": spec.name, "arm": arm, "panel": "" if job.panel is None else job.panel,
                       "x": _x_of(spec, job, r), "seed": int(seed),
                       "replicate": "" if job.replicate is None else job.replicate}
                row.update({k: v for k, v in r.items() if k not in DROP and k not in row})
                out.append(row)
    pan = [str(v) for v in spec.panel.values]
    out.sort(key=lambda r: (pan.index(str(r["panel"])) if str(r["panel"]) in pan else -1,
                            list(spec.arms).index(r["arm"]), r["x"], r["seed"], str(r["replicate"])))
    return out


def write(rows_: Sequence[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    to_csv(rows_, path, first=FIRST)


def read(path: Path):
    import pandas as pd

    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"replicate": str, "panel": str})


def to_frame(rows_: Sequence[dict]):
    return _frame(rows_)
