"""Run a study's jobs: a pool of app processes (one thread each), finished jobs skipped.

Each job runs as its app's console script with `store.root=<store>` and its own Hydra directory
<store>/studies/<study>/jobs/<job id>/. The app itself skips finished runs and resumes killed ones
from their checkpoints, so an interrupted study resumes by running the same command again. A job
that exited 0 gets `study_done.json` (its run directories), so a later call skips it without starting
a process, as long as those run directories still hold their result.json.

launcher=local runs the app directly; any other value (e.g. slurm, submitit_local) runs each job as
a one-job Hydra multirun with `hydra/launcher=<launcher>` (so on SLURM every job is a cluster job and
`workers` bounds how many are queued at once).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

from ptft.study.plan import SCRIPTS, Job
from ptft.train.store import atomic_write_json

log = logging.getLogger("ptft.study")
DONE = "study_done.json"


def job_dir(store: Path, study: str, job: Job) -> Path:
    return store / "studies" / study / "jobs" / job.id


def run_dirs_of(jdir: Path) -> list[Path]:
    """The run directories a job recorded (run_dir.txt of its Hydra job folder, also one level down for -m)."""
    out: list[Path] = []
    for ptr in sorted([*jdir.glob("run_dir.txt"), *jdir.glob("*/run_dir.txt")]):
        try:
            lines = ptr.read_text().splitlines()
        except (OSError, ValueError):
            continue
        out += [Path(ln) for ln in lines if ln.strip() and Path(ln).is_dir()]
    return list(dict.fromkeys(out))


def is_done(jdir: Path) -> bool:
    try:
        done = json.loads((jdir / DONE).read_text())
        runs = [Path(p) for p in done["run_dirs"]]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(runs) and all((r / "result.json").is_file() for r in runs)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the study's driver dies (Linux), so a killed study leaves no orphan jobs;
    the apps checkpoint on SIGTERM and the next call resumes them."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def command(app: str, job: Job, store: Path, jdir: Path, launcher: str) -> list[str]:
    exe = Path(sys.executable).parent / SCRIPTS[app]
    cmd = [str(exe) if exe.exists() else SCRIPTS[app]]
    args = [*job.args, f"store.root={store}"]
    if launcher == "local":
        return [*cmd, *args, f"hydra.run.dir={jdir}"]
    return [*cmd, "-m", *args, f"hydra/launcher={launcher}", f"hydra.sweep.dir={jdir}", "hydra.sweep.subdir=0"]


def setup(commands: Sequence[str], cwd: Optional[Path] = None) -> None:
    """Run a spec's setup commands (e.g. `ptft-data synthetic ...`, which rewrites the same files for the same
    arguments); a ptft console script is taken from this interpreter's environment. A failure stops the study."""
    import shlex

    from ptft import ConfigError

    for c in commands:
        argv = shlex.split(c)
        exe = Path(sys.executable).parent / argv[0]
        if exe.exists():
            argv[0] = str(exe)
        print(f"[setup] {c}", file=sys.stderr, flush=True)
        p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
        if p.returncode != 0:
            tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ConfigError(f"setup command failed (exit {p.returncode}): {c}: {tail[0]}")


class Progress:
    """'jobs done / planned' with an ETA from the jobs run so far, as log lines (Hydra / SLURM logs) and stderr."""

    def __init__(self, name: str, total: int, skipped: int):
        self.name, self.total, self.done, self.ran, self.failed = name, total, skipped, 0, 0
        self.t0 = time.time()
        self.lock = threading.Lock()

    def tick(self, ok: bool, what: str) -> None:
        with self.lock:
            self.done += 1
            self.ran += 1
            self.failed += not ok
            el = time.time() - self.t0
            left = self.total - self.done
            eta = el / self.ran * left
            msg = (f"[{self.name}] {self.done}/{self.total} jobs ({self.failed} failed), {el:.0f} s, "
                   f"ETA {eta:.0f} s: {'ok' if ok else 'FAILED'} {what}")
            log.info(msg)
            print(msg, file=sys.stderr, flush=True)


def run_jobs(app: str, study: str, jobs: Sequence[Job], store: Path, *, workers: int = 2,
             launcher: str = "local", env: Optional[dict] = None) -> list[str]:
    """Run the jobs that are not done; returns the failures' descriptions (empty when all succeeded)."""
    todo = [j for j in jobs if not is_done(job_dir(store, study, j))]
    prog = Progress(study, len(jobs), len(jobs) - len(todo))
    if not todo:
        return []
    print(f"[{study}] {len(todo)} of {len(jobs)} jobs to run ({workers} workers, launcher={launcher}, "
          f"store {store})", file=sys.stderr, flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled"),
           **(env or {})}
    failures: list[str] = []

    def one(job: Job) -> None:
        jdir = job_dir(store, study, job)
        jdir.mkdir(parents=True, exist_ok=True)
        t = time.time()
        p = subprocess.run(command(app, job, store, jdir, launcher), env=env, capture_output=True, text=True,
                           preexec_fn=_die_with_parent)
        what = f"{job.id} ({' '.join(a if len(a) < 60 else a[:57] + '...' for a in job.args[len(job.args) - 3:])})"
        if p.returncode == 0 and run_dirs_of(jdir):
            atomic_write_json(jdir / DONE, {"run_dirs": [str(r) for r in run_dirs_of(jdir)],
                                            "args": list(job.args), "seconds": round(time.time() - t, 1)})
            prog.tick(True, what)
        else:
            tail = (p.stderr or p.stdout or "").strip().splitlines()[-3:]
            failures.append(f"{what}: exit {p.returncode}: {' | '.join(tail)}")
            prog.tick(False, what + f" (exit {p.returncode}: {tail[-1] if tail else 'no output'})")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, todo))
    return failures
