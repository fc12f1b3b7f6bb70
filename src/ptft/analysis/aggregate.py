"""`ptft-aggregate`: every run under run stores or sweep directories, as one tidy CSV.

    ptft-aggregate runs/                       # a run store
    ptft-aggregate multirun/dln/2026-..._ab12cd --out outputs/fig2.csv   # a sweep directory

One row per run; a batched job (result.json with a `members` list, one per seed) gives one row
per member, the member's keys (seed, metrics) overriding the job's. Columns:

* `status`: the run's status (ok | diverged | max_steps | ...), "incomplete" for a run directory
  without result.json (killed, still running, failed) and "unreadable" for a corrupt or invalid
  result (no status, a metric that is not a number: ptft.train.store.result_problem, reason in
  `error`); such runs are listed, never dropped. Config files are read size-capped and without YAML
  aliases (ptft.train.store.load_yaml).
* the metrics of result.json (steps, train_mse, test_mse, ...), as written by the pipeline;
* the config, flattened to dotted keys (dln.lam_pt, train.lr, seed, ...), without the
  non-scientific sections (store, wandb, hydra, force); lists become JSON text;
* bookkeeping: run_dir, stage (e.g. dln), run_hash, member (index inside a batched job or
  empty), job_dir (the Hydra job directory, when found through a sweep).
* provenance (last columns, empty for results written before it existed): prov_ptft_version,
  prov_git_commit, prov_git_dirty, prov_torch, prov_cuda, prov_device, prov_gpu, prov_python,
  prov_host, prov_start, prov_end, prov_wall_s. A table mixing results of different commits (or of
  trees with and without uncommitted changes) gets a warning on stderr.

A run directory is a directory holding config.yaml (and result.json once finished). A sweep
directory holds Hydra job directories (with .hydra/); each points to its run through the file
`run_dir.txt` or, for SLURM sweeps, through the last stdout line in .submitit/ logs. A job whose
run cannot be found is listed with status "incomplete" and its Hydra config.

Python API (figures): `collect(paths) -> list[dict]`, `to_csv(rows, path)`, `to_frame(rows)`.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import yaml

from ptft import ArgumentParser

CONFIG, RESULT, POINTER = "config.yaml", "result.json", "run_dir.txt"
INCOMPLETE, UNREADABLE = "incomplete", "unreadable"
NON_SCIENTIFIC = ("store", "wandb", "hydra", "force")
BOOKKEEPING = ("status", "stage", "run_hash", "member", "run_dir", "job_dir")
PROV = "prov_"


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}, 'c': [1, 2]} -> {'a.b': 1, 'c': '[1, 2]'}; scalars kept as they are."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        if not d and prefix:
            out[prefix] = "{}"
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(d, (list, tuple)):
        out[prefix] = json.dumps(list(d))
    else:
        out[prefix] = d
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    """A stored config (ptft.train.store.load_yaml: size-capped, no aliases), or {} if unreadable."""
    from ptft.train.store import load_yaml

    try:
        data = load_yaml(path)
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: undecodable bytes, too large
        return {}
    return data if isinstance(data, dict) else {}


def added_defaults() -> dict[str, Any]:
    """Config keys added after runs were stored, with their defaults: a run made before a key existed
    and one at its default are the same configuration (as in the run identity), so neither gets a column.
    The trainer's keys come from the trainer, each track's from the track registry (ptft.pipeline.track)."""
    from ptft.pipeline.track import added_keys
    from ptft.train.trainer import NEW_TRAIN_KEYS

    return {**{f"{pre}.{k}": v for pre in ("train", "pretrain.train") for k, v in NEW_TRAIN_KEYS.items()},
            **added_keys()}


def config_columns(config: dict[str, Any]) -> dict[str, Any]:
    """The scientific part of a resolved config, flattened (keys added later left out at their defaults)."""
    added = added_defaults()
    return {k: v for k, v in flatten({k: v for k, v in config.items() if k not in NON_SCIENTIFIC}).items()
            if not (k in added and v == added[k])}


def run_rows(run_dir: Path, job_dir: Optional[Path] = None) -> list[dict[str, Any]]:
    """The row(s) of one run directory (several for a batched job)."""
    run_dir = Path(run_dir)
    base: dict[str, Any] = {
        "stage": run_dir.parent.name,
        "run_hash": run_dir.name,
        "member": "",
        "run_dir": str(run_dir),
        "job_dir": str(job_dir) if job_dir else "",
    }
    base.update(config_columns(_read_yaml(run_dir / CONFIG)))
    res_path = run_dir / RESULT
    if not res_path.exists():
        return [{**base, "status": INCOMPLETE}]
    from ptft.train.store import result_problem

    try:
        result = json.loads(res_path.read_bytes())
        problem = result_problem(base["stage"], result, complete=False)
        if problem:
            raise ValueError(f"result.json is invalid: {problem}")
    except (OSError, ValueError) as e:
        return [{**base, "status": UNREADABLE, "error": f"{type(e).__name__}: {e}"}]
    members = result.pop("members", None)
    prov = result.pop("provenance", None)
    job = {**base, **flatten(result)}
    if isinstance(prov, dict):
        job.update({PROV + k: v for k, v in prov.items() if k not in ("files", "run_hash")})
    job.setdefault("status", "unknown")
    if not members:
        return [job]
    rows = []
    for i, m in enumerate(members):
        row = {**job, **flatten(m if isinstance(m, dict) else {"value": m}), "member": i}
        rows.append(row)
    return rows


def _is_run_dir(d: Path) -> bool:
    return (d / CONFIG).is_file() and d.name != ".hydra"


def _pointed_runs(job_dir: Path, submitit_runs: dict[int, Path]) -> list[Path]:
    """The run directories a Hydra job directory points to: its run_dir.txt (one line per run the
    job made), else the submitit log."""
    ptr = job_dir / POINTER
    if ptr.is_file():
        try:
            lines = [ln.strip() for ln in ptr.read_text().splitlines() if ln.strip()]
        except (OSError, ValueError):  # unreadable or not text: found through the submitit log or the config
            lines = []
        if lines:
            return [Path(t) if os.path.isabs(t) else job_dir / t for t in lines]
    run = submitit_runs.get(int(job_dir.name)) if job_dir.name.isdigit() else None
    return [run] if run is not None else []


def _submitit_runs(sweep_dir: Path) -> dict[int, Path]:
    """Array task index -> run dir, from a SLURM sweep's submitit logs (a job's last stdout line
    is its run dir). Hydra's submitit launcher submits job number i as array task i."""
    found: dict[int, Path] = {}
    for out in sorted((sweep_dir / ".submitit").glob("*/*_log.out")):
        try:
            lines = out.read_text(errors="replace").splitlines()
        except OSError:
            continue
        run = next((Path(ln.strip()) for ln in reversed(lines)
                    if os.path.isabs(ln.strip()) and _is_run_dir(Path(ln.strip()))), None)
        if run is None:
            continue
        # <job>_<task>_<rank>_log.out for array tasks, <job>_<rank>_log.out for a single job
        parts = out.name[: -len("_log.out")].split("_")
        found[int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else 0] = run
    return found


def _config_key(cfg: dict[str, Any]) -> str:
    return json.dumps(config_columns(cfg), sort_keys=True, default=str)


class _ConfigIndex:
    """Run directories by their scientific config: finds the run of a Hydra job directory that
    has no run_dir.txt (its .hydra/config.yaml equals the run's config.yaml up to logging keys)."""

    def __init__(self) -> None:
        self.runs: dict[str, Path] = {}
        self.scanned: set[str] = set()

    def add(self, run: Path) -> None:
        self.runs.setdefault(_config_key(_read_yaml(run / CONFIG)), run)

    def match(self, cfg: dict[str, Any], store: Optional[Path]) -> Optional[Path]:
        if not cfg:
            return None
        key = _config_key(cfg)
        if key not in self.runs and store is not None and str(store) not in self.scanned:
            self.scanned.add(str(store))
            for conf in store.glob(f"*/*/{CONFIG}"):  # <store>/<stage>/<hash>/config.yaml
                self.add(conf.parent)
        return self.runs.get(key)


def _job_store(job_dir: Path, cfg: dict[str, Any]) -> Optional[Path]:
    """The run store a Hydra job wrote to: store.root, relative to the job's launch directory."""
    root = (cfg.get("store") or {}).get("root") if isinstance(cfg.get("store"), dict) else None
    if not root:
        return None
    root_p = Path(os.path.expanduser(str(root)))
    if not root_p.is_absolute():
        hydra = _read_yaml(job_dir / ".hydra" / "hydra.yaml").get("hydra", {})
        cwd = (hydra.get("runtime") or {}).get("cwd") if isinstance(hydra, dict) else None
        if not cwd:
            return None
        root_p = Path(cwd) / root_p
    return root_p if root_p.is_dir() else None


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    """('run', dir) for run directories, ('job', dir) for Hydra job directories, under root."""
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):
        d = Path(dirpath)
        is_job = ".hydra" in dirnames
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        if is_job:
            yield "job", d
        elif _is_run_dir(d):
            yield "run", d
            dirnames[:] = []  # a run directory holds no further runs


def collect(paths: Sequence[str | Path] | str | Path) -> list[dict[str, Any]]:
    """Rows of every run under `paths` (run stores, sweep dirs, single run dirs); each run once."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    by_config = _ConfigIndex()

    def add_run(run: Path, job_dir: Optional[Path] = None) -> None:
        key = str(run.resolve())
        if key in seen:
            return
        seen.add(key)
        rows.extend(run_rows(run, job_dir))

    for p in paths:
        root = Path(p)
        if not root.exists():
            raise FileNotFoundError(f"ptft-aggregate: {root} does not exist")
        jobs: list[Path] = []
        for kind, d in _walk(root):
            if kind == "run":
                add_run(d)
                by_config.add(d)
            else:
                jobs.append(d)
        sweeps: dict[Path, dict[int, Path]] = {}
        for job in jobs:
            if job.parent not in sweeps:
                sweeps[job.parent] = _submitit_runs(job.parent)
            runs = [r for r in _pointed_runs(job, sweeps[job.parent]) if _is_run_dir(r)]
            cfg = _read_yaml(job / ".hydra" / "config.yaml")
            if not runs:
                match = by_config.match(cfg, _job_store(job, cfg))
                runs = [match] if match is not None and _is_run_dir(match) else []
            for run in runs:
                add_run(run, job)
            if not runs:  # failed before it had a run directory: list it with its Hydra config
                rows.append({"stage": "", "run_hash": "", "member": "", "run_dir": "",
                             "job_dir": str(job), **config_columns(cfg), "status": INCOMPLETE})
        for found in sweeps.values():  # runs named in logs but not matched to a job dir
            for run in found.values():
                add_run(run)
    return rows


def columns(rows: Iterable[dict[str, Any]], first: Sequence[str] = ()) -> list[str]:
    """`first` (those present), bookkeeping, then config columns (dotted, sorted), metrics (sorted), provenance."""
    keys: set[str] = set()
    for r in rows:
        keys.update(r)
    head = [k for k in dict.fromkeys((*first, *BOOKKEEPING)) if k in keys]
    prov = sorted(k for k in keys if k.startswith(PROV))
    rest = sorted(keys - set(head) - set(prov))
    cfg = [k for k in rest if "." in k or k in ("seed", "name", "device")]
    metrics = [k for k in rest if k not in cfg]
    return head + cfg + metrics + prov


def commit_warning(rows: Iterable[dict[str, Any]]) -> Optional[str]:
    """A warning when the rows were made by more than one commit, or by a tree with uncommitted changes."""
    commits: dict[str, int] = {}
    dirty = clean = 0
    for r in rows:
        c = r.get(PROV + "git_commit")
        if c:
            commits[str(c)] = commits.get(str(c), 0) + 1
        dirty += r.get(PROV + "git_dirty") is True
        clean += r.get(PROV + "git_dirty") is False
    parts = []
    if len(commits) > 1:
        parts.append("results made by %d different commits (%s)" % (len(commits), ", ".join(
            f"{c[:10]}: {n} rows" for c, n in sorted(commits.items(), key=lambda kv: -kv[1]))))
    if dirty and clean:
        parts.append(f"{dirty} rows made by a source tree with uncommitted changes and {clean} without")
    return ("the table mixes " + "; ".join(parts) + "; see the prov_* columns") if parts else None


def to_csv(rows: Sequence[dict[str, Any]], path: Optional[str | Path] = None, first: Sequence[str] = ()) -> str:
    """Write rows as CSV (union of columns, `first` leading, empty where absent); returns the text."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns(rows, first), restval="", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    text = buf.getvalue()
    if path is not None:
        from ptft.train.store import atomic_write_text

        atomic_write_text(Path(path), text)
    return text


def to_frame(rows: Sequence[dict[str, Any]]):
    """Rows as a pandas DataFrame with the CSV's column order."""
    import pandas as pd

    return pd.DataFrame(list(rows), columns=columns(rows))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = ArgumentParser(prog="ptft-aggregate", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="run store, sweep directory or run directory")
    ap.add_argument("--out", default=None, help="CSV file to write (default: stdout)")
    args = ap.parse_args(argv)
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"ptft-aggregate: error: no such path: {', '.join(missing)}", file=sys.stderr)
        return 2
    from ptft.train.store import StoreError

    rows = collect(args.paths)
    try:
        text = to_csv(rows, args.out)
    except StoreError as e:
        print(f"ptft-aggregate: error: {e}", file=sys.stderr)
        return 1
    if args.out is None:
        sys.stdout.write(text)
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
    warning = commit_warning(rows)
    if warning:
        print(f"ptft-aggregate: warning: {warning}", file=sys.stderr)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs"
    print(f"ptft-aggregate: {len(rows)} rows ({summary})" + (f" -> {args.out}" if args.out else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
