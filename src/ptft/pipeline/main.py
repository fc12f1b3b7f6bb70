"""`ptft-pretrain` and `ptft-finetune`: the one pretrain -> fine-tune pipeline of the deep tracks.

    ptft-pretrain data.root=data                         # LL: ResNet-18 on 98 CIFAR-100 classes
    ptft-finetune data.root=data 'runs.n_ft=[10,20,50]' 'runs.seeds=[0,1,2]' ft.rescale=0.25
    ptft-finetune data=modarith model=transformer        # the arithmetic track (docs/paper.md section 9)
    ptft-finetune -m experiment=vision/ll_cifar100_rescale      # a preset's sweep (conf/experiment/)

A track (ptft.pipeline.track: vision or arithmetic, picked by the `data` group; found through its entry
point, never imported here) plugs in its data, its model with named stages and its trainer Task; everything
else is shared: the init knobs and post-PT
rescalings (ptft.pipeline.knobs), the run store, the trainer, logging.

Run store: `<store.root>/pretrain/<hash>/` holds model.pt (the state_dict, loaded with weights_only=True)
and result.json; `<store.root>/finetune/<hash>/` holds result.json. A fine-tuning finds its pretrained
model by the pretraining config's hash; if it is absent, the job pretrains it first, under the run's file
lock, so jobs started together pretrain it once. Finished runs are skipped (force=true reruns this job's
own runs), killed runs resume from their checkpoint, and the job prints its run directories as its last
lines.
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import time
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from ptft import ConfigError, app
from ptft.log import Logger, progress
from ptft.pipeline.config import finetune_identity, pretrain_identity, train_config, validate
from ptft.pipeline.knobs import apply_init_scaling, prepare_finetune_model, recalibrate_bn
from ptft.train.store import RunDir, atomic_write_bytes, atomic_write_json
from ptft.train.trainer import Trainer, criterion, derived_seed

app.register_validator("pretrain", lambda cfg: validate(cfg, "pretrain"))
app.register_validator("finetune", lambda cfg: validate(cfg, "finetune"))

STATUS = {"converged": "ok", "reached": "ok"}  # trainer status -> result status (diverged, max_* stay as they are)
MODEL, START = "model.pt", "checkpoint.start.pt"  # the start state: not an artifact of the run
_INIT, _HEAD = 0x1417, 0x4EAD  # seed streams: model init, new head
GROK = 0.95                    # steps_to_95: first evaluated step with test accuracy >= this


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={name} but torch sees no CUDA device; use runtime.device=cpu or auto")
    return torch.device(name)


def runtime_facts(task: Any, device: torch.device) -> dict[str, Any]:
    """How a run was computed (result.json, never its identity): the device and the task's effective bf16
    autocast, channels_last and torch.compile (False where the track's task has no such flag)."""
    return {"device": str(device), **{k: bool(getattr(task, k, False)) for k in ("amp", "channels_last", "compile")}}


def model_bytes(model: torch.nn.Module) -> bytes:
    """A model's state_dict (CPU tensors) serialised for `torch.load(..., weights_only=True)`."""
    import io

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def state_norm(state: dict) -> float:
    """Euclidean norm of all floating-point entries of a state dict except BatchNorm running statistics."""
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return float(torch.sqrt(sum((v.detach().double() ** 2).sum() for k, v in state.items()
                                if v.is_floating_point() and not k.endswith(skip))))


def steps_to(run: RunDir, key: str = "eval/test_acc", level: float = GROK) -> Optional[int]:
    """The first logged step at which `key` >= level (metrics.jsonl; null if never or never evaluated)."""
    path = run.file("metrics.jsonl")
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        v = row.get(key)
        if isinstance(v, (int, float)) and v >= level:
            return int(row["step"])
    return None


def _train(task: Any, tcfg: Any, run: RunDir, resolved: dict, wandb_cfg: Any, *, stage: str, group: str,
           name: str, diagnose: bool = False) -> dict[str, Any]:
    """Train `task` with checkpoint/resume in `run`, logging to metrics.jsonl + wandb; returns the result.

    The model's state at the start of training is kept in checkpoint.start.pt until the run finishes, so a resumed run
    reports the same start norm and (diagnose=True) the same per-stage diagnostics."""
    with progress(desc=f"{stage} {run.run_hash}", unit="step") as bar:
        trainer = Trainer(task, tcfg, checkpoint=run.file("checkpoint.pt"), bar=bar)
        start = task.state_dict()  # a copy of the state made from the seed
        resumed = trainer.try_resume()
        if resumed:
            start = read_start_state(run.file(START), start)
        else:
            atomic_write_bytes(run.file(START), model_bytes(task.model))
        with Logger(run.path, resolved, wandb_cfg, stage=stage, group=group, name=name,
                    resume_step=trainer.step if resumed else None) as logger:
            trainer._log = logger.log
            out = trainer.run()
            metrics = {k: float(v[0]) for k, v in task.evaluate().items()}
            logger.log(trainer.step, {f"final/{k}": v for k, v in metrics.items()})
            status = STATUS.get(out["status"][0], out["status"][0])
            crit = criterion(tcfg)  # ok = met; the budget's status (max_steps, max_epochs) = not met
            if crit is None and status in ("max_steps", "max_epochs"):
                status = "ok"  # no stopping rule: the budget IS the recipe
            quality = metrics.get(tcfg.target_metric) if tcfg.target_metric else float(out["train_loss"][0])
            result = {"status": status, "epochs": out["epochs"],
                      "steps": int(out["steps"][0]), "train_loss": float(out["train_loss"][0]), **metrics,
                      "criterion": crit, "quality": quality if crit else None,
                      "param_norm_start": state_norm(start), "param_norm_end": state_norm(task.model.state_dict()),
                      "steps_to_95": steps_to(run) if tcfg.eval_every else None, "resumed": resumed}
            if diagnose:
                diag = _diagnostics(task, start)
                logger.log(trainer.step, diag)
                result.update(diag)
            logger.summary(result)
    return result


def read_start_state(path: Any, rebuilt: dict) -> dict:
    """The start state kept in checkpoint.start.pt; if it is missing or damaged, `rebuilt` (the same
    state, made again from the seed before the resume), the damaged file moved aside with one line."""
    from ptft.train.store import DamagedFile, move_aside, read_checkpoint

    try:
        st = read_checkpoint(path)
        if set(st) != set(rebuilt) or any(not isinstance(v, torch.Tensor) or v.shape != rebuilt[k].shape
                                          for k, v in st.items()):
            raise DamagedFile("not this model's state")
        return st
    except DamagedFile as e:
        why = "missing" if not os.path.lexists(path) else f"damaged ({e}), moved to {move_aside(path).name}"
    print(f"[ptft] {path} is {why}; the start state is rebuilt from the seed", flush=True)
    return rebuilt


def _diagnostics(task: Any, start: dict) -> dict[str, float]:
    """Per-stage movement, CKA and participation ratio of a fine-tuning (ptft.pipeline.diagnostics)."""
    from ptft.pipeline.diagnostics import diagnostics

    net = task.model
    stages = {s: list(getattr(net, "STAGE_MODULES", {}).get(s, (s,))) for s in net.STAGES}
    return diagnostics(start, net, stages, task.x_test, outputs=getattr(net, "DIAG_OUTPUTS", None),
                       prep=task.prepare)


def _finish(run: RunDir, result: dict, t0: float, c0: float) -> None:
    """Write result.json and timing.json (wall and CPU seconds of this process's part of the run)."""
    resumed = result.pop("resumed")
    run.write_result(result)
    atomic_write_json(run.file("timing.json"), {"wall_s": time.time() - t0, "cpu_s": time.process_time() - c0,
                                                "resumed": resumed})
    run.file("checkpoint.pt").unlink(missing_ok=True)
    run.file(START).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------
# pretraining
# ------------------------------------------------------------------------------------------------
def _pretrain_run(cfg: DictConfig, track: Any, *, force: bool, name: str, record: bool = False
                  ) -> tuple[RunDir, dict[str, Any]]:
    """Find or train the pretrained model of `cfg` (under its lock)."""
    run = RunDir(app.store_root(cfg), "pretrain", pretrain_identity(track, cfg))
    if record:
        app.record_run_dir(run.path)
    if run.finished and not force:
        print(f"[ptft] pretrained model found: {run.path}", flush=True)
        return run, run.load_result()
    task_data = track.load(cfg.data, "pretrain")  # a missing dataset fails here, before any directory exists
    device = resolve_device(str(cfg.runtime.device))
    with run.lock():
        if run.finished and not force:
            print(f"[ptft] pretrained model found (trained by another job meanwhile): {run.path}", flush=True)
            return run, run.load_result()
        if force:
            run.clear_result()  # model.pt and result.json stay until the new ones replace them
        pt, pte = task_data.pt_train, task_data.pt_test
        print(f"[ptft] pretraining {run.run_hash} on {len(pt)} examples of {len(task_data.pt_classes)} classes "
              f"({device})", flush=True)
        resolved = {k: OmegaConf.to_container(cfg[k], resolve=True)
                    for k in ("data", "model", "init", "pretrain", "runtime")}
        resolved["name"] = str(cfg.name)
        run.write_config(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        t0, c0 = time.time(), time.process_time()
        seed = int(cfg.pretrain.seed)
        torch.manual_seed(derived_seed(seed, _INIT))
        net = track.build(cfg.model, task_data.num_classes_total)
        apply_init_scaling(net, cfg.init)
        tcfg = train_config(cfg.pretrain.train)
        tcfg.batch_size = track.batch_size(tcfg, len(pt)) if tcfg.batch_size else tcfg.batch_size
        task = track.make_task(net, pt, pte, y_orig=True, tcfg=tcfg, seed=seed, device=device, runtime=cfg.runtime)
        result = _train(task, tcfg, run, resolved, cfg.wandb, stage="pretrain", group=str(cfg.name), name=name)
        result.update(n_train=len(pt), n_test=len(pte), classes=task_data.pt_classes, head=task_data.num_classes_total,
                      **runtime_facts(task, device))
        atomic_write_bytes(run.file(MODEL), model_bytes(task.model))
        _finish(run, result, t0, c0)
    return run, result


def _reject_ft_overrides() -> None:
    """ptft-pretrain trains the pretraining stage: train.* on its command line is almost surely a mistake."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = HydraConfig.get().overrides.task
    except Exception:
        return
    bad = [o for o in task if o.lstrip("+~").startswith(("train.", "train="))]
    if bad:
        raise ConfigError(f"{bad[0]}: ptft-pretrain trains the pretraining stage, whose keys are pretrain.train.* "
                          f"and pretrain.seed (train.* and seed are the fine-tuning's); e.g. "
                          f"pretrain.{bad[0].lstrip('+~')}")


def run_pretrain(cfg: DictConfig) -> tuple[RunDir, dict[str, Any]]:
    """One `ptft-pretrain` job (skip if finished, resume if killed)."""
    _reject_ft_overrides()
    track = validate(cfg, "pretrain")
    return _pretrain_run(cfg, track, force=bool(cfg.force), record=True, name=app.overrides_name())


# ------------------------------------------------------------------------------------------------
# fine-tuning
# ------------------------------------------------------------------------------------------------
def expand_runs(cfg: DictConfig) -> list[DictConfig]:
    """One config per (n_ft, seed) of cfg.runs, with data.n_ft / seed set and runs cleared."""
    n_fts = list(cfg.runs.n_ft) if cfg.runs.n_ft is not None else [cfg.data.n_ft]
    seeds = list(cfg.runs.seeds) if cfg.runs.seeds is not None else [cfg.seed]
    out = []
    for n_ft, seed in itertools.product(n_fts, seeds):
        c = copy.deepcopy(cfg)
        c.data.n_ft, c.seed = n_ft, int(seed)
        c.runs.n_ft = c.runs.seeds = None
        out.append(c)
    return out


def _divergence_fix(cfg: DictConfig) -> str:
    """What to lower after a diverged pretraining: an initialisation scaled up diverges at any lr, so it is
    named first when set."""
    big = [f"init.{k}={cfg.init[k]:g}" for k in ("scale", "kappa") if cfg.init[k] > 1]
    big += [f"init.layer_scales.{k}={v:g}" for k, v in cfg.init.layer_scales.items() if v > 1]
    if big:
        return (f"{', '.join(big)} scales the initial weights up, and an initialisation that large can diverge "
                f"at any learning rate: lower {' / '.join(b.split('=')[0] for b in big)} (or pretrain.train.lr)")
    return "lower pretrain.train.lr"


def _pretrained_state(cfg: DictConfig, track: Any, cache: dict) -> tuple[str, dict, dict]:
    """(hash, state_dict, result) of the pretrained model of `cfg`, trained first if absent."""
    key = RunDir("", "pretrain", pretrain_identity(track, cfg)).run_hash
    if key not in cache:
        run, res = _pretrain_run(cfg, track, force=False, name="pretrain:" + app.overrides_name())
        if res["status"] == "diverged":
            raise ConfigError(f"the pretrained model {run.path} diverged (NaN loss); fine-tuning from it is "
                              f"meaningless: {_divergence_fix(cfg)}")
        if res["status"] != "ok":
            print(f"[ptft] the pretraining {run.run_hash} did not meet its criterion {res.get('criterion')} in its "
                  f"budget ({res['steps']} steps, quality {res.get('quality')}); its fine-tunings record "
                  f"pt_status={res['status']}", flush=True)
        cache[key] = (run.run_hash, torch.load(run.file(MODEL), map_location="cpu", weights_only=True), res)
    return cache[key]


def pt_columns(pt_res: Optional[dict]) -> dict[str, Any]:
    """A fine-tuning's record of its pretraining (None for STL): status (ok = its criterion was met), steps
    taken, the quality reached on its criterion (pt_criterion), test accuracy."""
    keys = {"pt_status": "status", "pt_steps": "steps", "pt_criterion": "criterion", "pt_quality": "quality",
            "pt_test_acc": "test_acc"}
    return {k: (pt_res or {}).get(v) for k, v in keys.items()}


def _finetune_one(cfg: DictConfig, track: Any, task_data: Any, pt_cache: dict, name: str
                  ) -> tuple[RunDir, dict[str, Any]]:
    mode = cfg.ft.mode
    pt_run_hash, pt_state, pt_res = _pretrained_state(cfg, track, pt_cache) if mode == "finetune" else (None, None, None)
    run = RunDir(app.store_root(cfg), "finetune", finetune_identity(track, cfg, pt_run_hash))
    app.record_run_dir(run.path)
    if run.finished and not cfg.force:
        print(f"[ptft] finished run found, not training again (force=true reruns): {run.path}", flush=True)
        return run, run.load_result()
    device = resolve_device(str(cfg.runtime.device))
    with run.lock():
        if run.finished and not cfg.force:
            return run, run.load_result()
        if cfg.force:
            run.clear_result()
        resolved = OmegaConf.to_container(cfg, resolve=True)
        run.write_config(OmegaConf.to_yaml(cfg, resolve=True))
        t0, c0 = time.time(), time.process_time()
        seed = int(cfg.seed)
        ft, te = task_data.ft_train, task_data.ft_test
        torch.manual_seed(derived_seed(seed, _INIT))
        net = track.build(cfg.model, task_data.num_classes_total)
        if mode == "finetune":
            net.load_state_dict(pt_state)
        else:
            apply_init_scaling(net, cfg.init)
        torch.manual_seed(derived_seed(seed, _HEAD))
        prepare_finetune_model(net, cfg.ft, len(task_data.ft_classes))
        if cfg.ft.bn_recalibrate:
            recalibrate_bn(net.to(device), ft.x, prep=track.prepare)
        tcfg = train_config(cfg.train)
        tcfg.batch_size = track.batch_size(tcfg, len(ft))
        task = track.make_task(net, ft, te, y_orig=cfg.ft.head == "reuse", tcfg=tcfg, seed=seed, device=device,
                               runtime=cfg.runtime)
        result = _train(task, tcfg, run, resolved, cfg.wandb, stage="finetune" if mode == "finetune" else "stl",
                        group=str(cfg.name), name=f"{name},n_ft={len(ft)},seed={seed}",
                        diagnose=bool(cfg.runtime.diagnostics))
        result.update(mode=mode, n_ft=len(ft), seed=seed, n_test=len(te), batch_size=tcfg.batch_size,
                      pretrain=pt_run_hash, **pt_columns(pt_res),
                      rescale=float(cfg.ft.rescale), readout_scale=float(cfg.ft.readout_scale), head=cfg.ft.head,
                      **runtime_facts(task, device))
        _finish(run, result, t0, c0)
    return run, result


def run_finetune(cfg: DictConfig) -> list[tuple[RunDir, dict[str, Any]]]:
    """One `ptft-finetune` job: every (n_ft, seed) of cfg.runs in this process (finished ones skipped)."""
    track = validate(cfg, "finetune")
    runs = expand_runs(cfg)
    name = app.overrides_name()
    data_cache: dict = {}
    keys = []
    for c in runs:  # load (and check) every run's data before any compute: a bad n_ft fails the job up front
        track.validate(c, "finetune")
        keys.append(OmegaConf.to_yaml(c.data, resolve=True))
        if keys[-1] not in data_cache:
            data_cache[keys[-1]] = track.load(c.data, "finetune")
    pt_cache: dict = {}
    return [_finetune_one(c, track, data_cache[k], pt_cache, name) for c, k in zip(runs, keys)]


# ------------------------------------------------------------------------------------------------
# console scripts
# ------------------------------------------------------------------------------------------------
def _fmt(result: dict, keys: tuple) -> str:
    return "  ".join(f"{k}={result[k]:.4g}" if isinstance(result[k], float) else f"{k}={result[k]}"
                     for k in keys if k in result)


@app.entry("pretrain")
def pretrain_main(cfg: DictConfig) -> None:
    run, result = run_pretrain(cfg)
    print("[ptft] " + _fmt(result, ("status", "epochs", "steps", "train_loss", "test_acc", "test_loss",
                                    "steps_to_95", "criterion", "quality")), flush=True)
    print(run.path, flush=True)


@app.entry("finetune")
def finetune_main(cfg: DictConfig) -> None:
    done = run_finetune(cfg)
    for _, result in done:
        print("[ptft] " + _fmt(result, ("mode", "n_ft", "seed", "status", "epochs", "test_acc", "test_loss")),
              flush=True)
    for run, _ in done:
        print(run.path, flush=True)


if __name__ == "__main__":
    finetune_main()
