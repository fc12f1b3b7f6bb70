"""The plan of a study: spec -> the jobs (one process of the app each) that make its runs.

dln: one `ptft-dln` job per (arm, x, replicate, seed chunk); the chunk's seeds are one batched job (`dln.seeds`).
finetune: one `ptft-finetune` job per (arm, replicate, seed); every n_ft of the seed runs in-process
(`runs.n_ft`), the pretraining is found by hash in the store (trained by the first job that needs it).
A job's identity is the hash of its arguments, so planning twice gives the same jobs (skipped when done).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Optional

from ptft.study.spec import StudySpec, looks

SCRIPTS = {"dln": "ptft-dln", "finetune": "ptft-finetune"}


@dataclass(frozen=True)
class Job:
    arm: str
    seeds: tuple[int, ...]
    args: tuple[str, ...]          # overrides of the app (without store / hydra keys)
    x: Optional[float] = None      # dln: the job's x value (finetune: every x in one job)
    replicate: Any = None
    panel: Any = None
    arms: tuple[str, ...] = ()     # batch_arms: every arm of the study in this job (arm is "")

    @property
    def id(self) -> str:
        h = hashlib.sha256(json.dumps(list(self.args)).encode()).hexdigest()[:10]
        return f"{self.arm or 'arms'}-s{self.seeds[0]}-{h}"


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))  # n_ft = 16, not 16.0 (integer keys)
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _list(vals) -> str:
    return "[" + ",".join(_fmt(v) for v in vals) + "]"


def configs(spec: StudySpec) -> str:
    """`dln.configs` of a batch_arms job: one entry per arm, its dln.* overrides without the prefix."""
    return "[" + ",".join("{" + ",".join(o[len("dln."):].replace("=", ":", 1) for o in ov) + "}"
                          for ov in spec.arms.values()) + "]"


def arm_of(spec: StudySpec, row: dict) -> str:
    """The arm whose overrides a run's config columns match (batch_arms jobs; the one with most keys), or ""."""
    import yaml

    def same(a, b) -> bool:
        if isinstance(a, bool) or isinstance(b, bool):
            return str(a).lower() == str(b).lower()
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return str(a) == str(b)

    hits = [(len(ov), arm) for arm, ov in spec.arms.items()
            if all(same(row.get(k), yaml.safe_load(v)) for k, _, v in (o.partition("=") for o in ov))]
    return max(hits)[1] if hits else ""  # the most specific arm


def seed_chunks(spec: StudySpec, first_seed: int, n_seeds: int) -> list[tuple[int, ...]]:
    """The dln app's batched seeds: each look's new seeds, cut into pieces of seeds.per_job (0: one piece), so a
    later, longer plan contains the same jobs."""
    edges = [0, *looks(spec.seeds)]
    out = []
    for lo, hi in zip(edges, edges[1:]):
        lo, hi = max(lo, first_seed), min(hi, n_seeds)
        per = spec.seeds.per_job or max(hi - lo, 1)
        out += [tuple(range(i, min(i + per, hi))) for i in range(lo, hi, per)]
    return out


def plan(spec: StudySpec, n_seeds: int, first_seed: int = 0) -> list[Job]:
    """Every job for seeds [first_seed, n_seeds), pretraining-side arms first within a seed chunk."""
    seeds = list(range(first_seed, n_seeds))
    if not seeds:
        return []
    reps = list(spec.replicates.values) if spec.replicates.key else [None]
    jobs = []
    for panel in (list(spec.panel.values) if spec.panel.key else [None]):
        extra = [] if panel is None else [f"{spec.panel.key}={_fmt(panel)}"]
        jobs += _plan(spec, seeds, first_seed, n_seeds, reps, [*spec.base, *extra, f"name={spec.name}"], panel)
    return jobs


def _plan(spec: StudySpec, seeds: list, first_seed: int, n_seeds: int, reps: list, common: list, panel: Any
          ) -> list[Job]:
    jobs = []
    if spec.app == "dln":
        chunks = seed_chunks(spec, first_seed, n_seeds)
        for chunk in chunks:
            if spec.seeds.batch_arms:
                for rep in reps:
                    for x in spec.x.values:
                        args = [*common, f"{spec.x.key}={_fmt(x)}", f"dln.configs={configs(spec)}",
                                f"dln.seeds={_list(chunk)}"]
                        if rep is not None:
                            args.append(f"{spec.replicates.key}={_fmt(rep)}")
                        jobs.append(Job("", chunk, tuple(args), x=float(x), replicate=rep, panel=panel,
                                        arms=tuple(spec.arms)))
                continue
            for arm, ov in spec.arms.items():
                for rep in reps:
                    for x in spec.x.values:
                        args = [*common, *ov, f"{spec.x.key}={_fmt(x)}", f"dln.seeds={_list(chunk)}"]
                        if rep is not None:
                            args.append(f"{spec.replicates.key}={_fmt(rep)}")
                        jobs.append(Job(arm, chunk, tuple(args), x=float(x), replicate=rep, panel=panel))
    else:
        nft = _list(int(v) for v in spec.x.values)
        for seed in seeds:  # arms inner: consecutive jobs need different pretrainings (no lock waits)
            for rep in reps:
                for arm, ov in spec.arms.items():
                    args = [*common, *ov, f"runs.n_ft={nft}", f"runs.seeds=[{seed}]"]
                    if rep is not None:
                        val = 1000 * seed + int(rep) if spec.replicates.per_seed else rep
                        args.append(f"{spec.replicates.key}={_fmt(val)}")
                    jobs.append(Job(arm, (seed,), tuple(args), replicate=rep, panel=panel))
    return jobs
