"""A study is a spec, not a script: a YAML file under <conf>/study/ read into :class:`StudySpec`.

    app: dln                         # the pipeline every run goes through: dln (ptft-dln) | finetune (ptft-finetune)
    description: one line, the claim under test
    base: [dln.dim=200, dln.omega=1]       # overrides of every run
    x: {key: dln.alpha, values: [0.1, 0.3]} # the x-axis (finetune: runs.n_ft, the values are n_ft)
    panel: {key: dln.overlap, values: [5, 0]}   # optional: a second axis, arms compared within each value
    arms: {rich: [dln.lam_pt=-0.99], lazy: [dln.lam_pt=0]}   # each arm's overrides
    baseline: lazy                   # the arm every other arm is compared with (paired by seed)
    metric: {name: test_mse, better: lower, scale: log}
    seeds: {first: 5, batch: 5, max: 20}   # PT seeds 0.. : the first look, then batches until decided
    replicates: {key: null, values: []}    # FT replicates per seed (averaged within the seed)
    predictions:
      - {arm: rich, expect: better, delta: 0.1, x_max: 0.3}

Keys are typed (a dataclass schema merged with OmegaConf): a typo or a wrong type fails before any run.
The statistics of predictions (paired differences, sequential intervals, verdicts) are in ptft.analysis.stats
and described in docs/studies.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import yaml
from omegaconf import MISSING, OmegaConf

from ptft import ConfigError

APPS = ("dln", "finetune")
EXPECT = ("better", "worse")


@dataclass
class XAxis:
    key: str = MISSING           # a config key (dln.alpha, dln.n_ft) or n_ft for the finetune app
    values: List[float] = field(default_factory=list)


@dataclass
class Panel:
    """An optional second axis (e.g. the FT task): arms are compared within each panel value."""
    key: Optional[str] = None
    values: List[Any] = field(default_factory=list)


@dataclass
class Metric:
    name: str = MISSING          # a column of the runs table (test_mse, test_acc, ...)
    better: str = "lower"        # lower | higher
    scale: str = "linear"        # linear | log: differences of the metric or of its natural log


@dataclass
class Seeds:
    first: int = 5               # seeds 0..first-1 at the first look
    batch: int = 5               # seeds added per further look
    max: int = 5                 # the budget: no seed at or beyond `max` is run
    per_job: int = 0             # dln: seeds batched in one job (0: all of a look)
    batch_arms: bool = False     # dln: every arm in one job per x (`dln.configs`: members sharing X step together)


@dataclass
class Replicates:
    key: Optional[str] = None    # a config key drawn anew per replicate (e.g. data.sample_seed, the FT data draw)
    values: List[Any] = field(default_factory=list)
    per_seed: bool = False       # integer values r: the key is set to 1000 * seed + r (a fresh draw per PT seed)


@dataclass
class PTColumns:
    """The runs table's columns about each run's pretraining (fine-tuning studies): runs whose PT did not meet
    its criterion are left out of the comparisons and counted per arm; steps to the criterion are reported."""
    status: str = "pt_status"    # ok = the PT criterion was met
    steps: str = "pt_steps"
    quality: str = "pt_quality"


@dataclass
class Prediction:
    arm: str = MISSING
    expect: str = "better"       # better | worse than the baseline, in the metric's direction
    delta: float = MISSING       # smallest effect of interest, in the scale of the differences
    baseline: Optional[str] = None   # default: the study's baseline
    x_min: Optional[float] = None    # judged at the x values in [x_min, x_max]
    x_max: Optional[float] = None
    panels: Optional[List[Any]] = None   # judged in these panels only (default: every panel)
    why: str = ""


@dataclass
class Check:
    """How `ptft-study NAME --check` tests the committed outputs (the freshness registry lives here)."""
    sample_jobs: int = 1         # jobs of the plan rerun and compared row by row with the committed table
    pick: str = "first"          # first | last jobs of the plan (the plan runs the costliest first where it can)
    rtol: float = 0.0            # 0: the compared cells must be equal as text
    compare: List[str] = field(default_factory=list)   # columns compared (default: the metric and status)


@dataclass
class StudySpec:
    app: str = MISSING
    description: str = MISSING
    base: List[str] = field(default_factory=list)
    setup: List[str] = field(default_factory=list)   # commands run before the jobs (idempotent: e.g. ptft-data)
    x: XAxis = field(default_factory=XAxis)
    panel: Panel = field(default_factory=Panel)
    arms: Any = MISSING          # {name: [overrides]} (ordered)
    baseline: str = MISSING
    metric: Metric = field(default_factory=Metric)
    seeds: Seeds = field(default_factory=Seeds)
    replicates: Replicates = field(default_factory=Replicates)
    predictions: List[Prediction] = field(default_factory=list)
    pt: PTColumns = field(default_factory=PTColumns)
    alpha: float = 0.05          # family error per prediction row, split over the looks (Bonferroni)
    workers: int = 2
    check: Check = field(default_factory=Check)
    hook: Optional[str] = None   # "module:function"(df, spec, out): a track's extra outputs (e.g. a theory overlay)
    name: str = ""               # the file's stem (set by load)


def study_dir() -> Path:
    from ptft.app import conf_dir

    return conf_dir() / "study"


def names() -> list[str]:
    d = study_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def load(name_or_path: str, overrides: Optional[List[str]] = None) -> StudySpec:
    """The spec of conf/study/<name>.yaml (or a YAML path), with `key=value` overrides, validated."""
    p = Path(name_or_path)
    if not (p.suffix in (".yaml", ".yml") and p.is_file()):
        p = study_dir() / f"{name_or_path}.yaml"
        if not p.is_file():
            raise ConfigError(f"no study {name_or_path!r}; known studies: {', '.join(names()) or 'none'} "
                              f"(or give a path to a spec .yaml)")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(StudySpec), OmegaConf.load(p))
        for o in overrides or []:
            key, _, val = o.partition("=")
            OmegaConf.update(cfg, key.strip(), yaml.safe_load(val) if val else None, merge=True)
        spec: StudySpec = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except ConfigError:
        raise
    except Exception as e:  # omegaconf's errors name the key
        msg = " ".join(str(e).split("\n")[0].split())
        key = getattr(e, "full_key", None)
        raise ConfigError(f"study spec {p}: {key + ': ' if key else ''}{msg}") from None
    spec.name = p.stem
    validate(spec, p)
    return spec


def validate(s: StudySpec, where: Any = "spec") -> None:
    def bad(key: str, msg: str) -> None:
        raise ConfigError(f"study {where}: {key}: {msg}")

    if s.app not in APPS:
        bad("app", f"{s.app!r} is not one of {', '.join(APPS)}")
    if not isinstance(s.arms, dict) or not s.arms:
        bad("arms", "give a mapping {arm name: [overrides]}")
    for arm, ov in s.arms.items():
        if not isinstance(ov, list) or not all(isinstance(o, str) and "=" in o for o in ov):
            bad(f"arms.{arm}", "a list of key=value overrides")
    for o in s.base:
        if "=" not in o:
            bad("base", f"{o!r} is not a key=value override")
    if s.baseline not in s.arms:
        bad("baseline", f"{s.baseline!r} is not an arm ({', '.join(s.arms)})")
    if s.seeds.batch_arms:
        if s.app != "dln":
            bad("seeds.batch_arms", "needs the dln app")
        for arm, ov in s.arms.items():
            if not ov or any(not o.startswith("dln.") or o.split("=")[0] in ("dln.seeds", "dln.configs") for o in ov):
                bad(f"arms.{arm}", "with batch_arms every arm is a non-empty list of dln.* keys (not seeds/configs)")
    if not s.x.values:
        bad("x.values", "give at least one value")
    if s.app == "finetune" and s.x.key not in ("n_ft", "data.n_ft"):
        bad("x.key", "the finetune app's x-axis is n_ft")
    if s.metric.better not in ("lower", "higher"):
        bad("metric.better", "lower or higher")
    if s.metric.scale not in ("linear", "log"):
        bad("metric.scale", "linear or log")
    if not (1 <= s.seeds.first <= s.seeds.max) or s.seeds.batch < 1 or s.seeds.per_job < 0:
        bad("seeds", "need 1 <= first <= max, batch >= 1, per_job >= 0")
    if s.panel.key is not None and not s.panel.values:
        bad("panel.values", "give the values of panel.key")
    if s.replicates.key is not None and not s.replicates.values:
        bad("replicates.values", "give the values of replicates.key")
    if s.replicates.per_seed and not all(isinstance(v, int) and 0 <= v < 1000 for v in s.replicates.values):
        bad("replicates.values", "with per_seed, integers in [0, 1000)")
    if s.replicates.per_seed and s.app != "finetune":
        bad("replicates.per_seed", "needs the finetune app (one PT seed per job)")
    if not 0 < s.alpha < 1:
        bad("alpha", "in (0, 1)")
    if s.check.pick not in ("first", "last"):
        bad("check.pick", "first or last")
    if s.workers < 1:
        bad("workers", ">= 1")
    for i, pr in enumerate(s.predictions):
        if pr.arm not in s.arms:
            bad(f"predictions[{i}].arm", f"{pr.arm!r} is not an arm")
        if (pr.baseline or s.baseline) not in s.arms or (pr.baseline or s.baseline) == pr.arm:
            bad(f"predictions[{i}].baseline", "another arm of the study")
        if pr.expect not in EXPECT:
            bad(f"predictions[{i}].expect", "better or worse")
        if pr.panels is not None and not {str(v) for v in pr.panels} <= {str(v) for v in s.panel.values}:
            bad(f"predictions[{i}].panels", f"values of panel.values ({list(s.panel.values)})")
        if not pr.delta > 0:
            bad(f"predictions[{i}].delta", "the smallest effect of interest, > 0")


def looks(s: Seeds) -> list[int]:
    """Number of seeds at each planned look: first, first + batch, ... up to max."""
    out = [s.first]
    while out[-1] < s.max:
        out.append(min(out[-1] + s.batch, s.max))
    return out
