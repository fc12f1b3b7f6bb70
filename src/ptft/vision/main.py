"""`ptft-pretrain` and `ptft-finetune`: ResNet pretraining and fine-tuning (PAPER.md section 8).

    ptft-pretrain data.root=data                         # LL: ResNet-18 on 98 CIFAR-100 classes
    ptft-finetune data.root=data 'runs.n_ft=[10,20,50]' 'runs.seeds=[0,1,2]' ft.rescale=0.25
    ptft-finetune -m experiment=ll_cifar100_rescale      # a preset's sweep (conf/experiment/)

Run store: `<store.root>/pretrain/<hash>/` holds model.pt (the state_dict, loaded with
weights_only=True) and result.json; `<store.root>/finetune/<hash>/` holds result.json. A fine-tuning
finds its pretrained model by the pretraining config's hash; if it is absent, the job pretrains it
first, under the run's file lock, so jobs started together pretrain it once. Finished runs are
skipped (force=true reruns this job's own runs), killed runs resume from their checkpoint, and the
job prints its run directories as its last lines.
"""
from __future__ import annotations

import copy
import itertools
import time
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from ptft import ConfigError, app
from ptft.log import Logger, progress
from ptft.train.store import RunDir, atomic_write_bytes, atomic_write_json
from ptft.train.trainer import Trainer
from ptft.vision.config import (FinetuneApp, PretrainApp, VisionTrainConfig, data_config, finetune_identity,
                                pretrain_identity, validate_finetune, validate_pretrain)
from ptft.vision.data import TaskData, load_task
from ptft.vision.models import build_model
from ptft.vision.scaling import apply_init_scaling, prepare_finetune_model
from ptft.vision.task import VisionTask, derived_seed, model_bytes, resolve_device

app.register("pretrain_schema", PretrainApp)
app.register("finetune_schema", FinetuneApp)
app.register_validator("pretrain", validate_pretrain)
app.register_validator("finetune", validate_finetune)

STATUS = {"converged": "ok"}  # trainer status -> result status (diverged, max_epochs stay as they are)
MODEL = "model.pt"
_INIT, _HEAD = 0x1417, 0x4EAD  # seed streams: model init, new head


def _train_cfg(t: Any, batch_size: Optional[int] = None) -> VisionTrainConfig:
    d = OmegaConf.to_container(t, resolve=True) if isinstance(t, DictConfig) else dict(vars(t))
    if batch_size is not None:
        d["batch_size"] = batch_size
    return VisionTrainConfig(**d)


def _train(task: VisionTask, tcfg: VisionTrainConfig, run: RunDir, resolved: dict, wandb_cfg: Any, *, stage: str,
           group: str, name: str) -> dict[str, Any]:
    """Train `task` with checkpoint/resume in `run`, logging to metrics.jsonl + wandb; returns the trainer output."""
    with progress(desc=f"{stage} {run.hash}", unit="step") as bar:
        trainer = Trainer(task, tcfg, checkpoint=run.file("checkpoint.pt"), bar=bar)
        resumed = trainer.try_resume()
        with Logger(run.path, resolved, wandb_cfg, stage=stage, group=group, name=name,
                    resume_step=trainer.step if resumed else None) as logger:
            trainer._log = logger.log
            out = trainer.run()
            metrics = {k: float(v[0]) for k, v in task.evaluate().items()}
            logger.log(trainer.step, {f"final/{k}": v for k, v in metrics.items()})
            result = {"status": STATUS.get(out["status"][0], out["status"][0]), "epochs": out["epochs"],
                      "steps": int(out["steps"][0]), "train_loss": float(out["train_loss"][0]), **metrics}
            logger.summary(result)
    return {**result, "resumed": resumed}


# ------------------------------------------------------------------------------------------------
# pretraining
# ------------------------------------------------------------------------------------------------
def _pretrain_run(cfg: DictConfig, data: Any, model: Any, init: Any, train: Any, seed: int, *, force: bool,
                  resolved: dict, name: str, record: bool = False) -> tuple[RunDir, dict[str, Any]]:
    """Find or train one pretrained model (under its lock); `cfg` gives runtime/store/wandb."""
    run = RunDir(app.store_root(cfg), "pretrain", pretrain_identity(data, model, init, train, seed))
    if record:
        app.record_run_dir(run.path)
    if run.finished and not force:
        print(f"[ptft] pretrained model found: {run.path}", flush=True)
        return run, run.load_result()
    dc = data_config(data)
    dc.n_ft, dc.ft_balanced = None, False  # FT-only keys: irrelevant to pretraining
    task_data = load_task(dc)  # a missing dataset fails here, before any directory exists
    device = resolve_device(str(cfg.runtime.device))
    with run.lock():
        if run.finished and not force:
            print(f"[ptft] pretrained model found (trained by another job meanwhile): {run.path}", flush=True)
            return run, run.load_result()
        if force:
            run.clear_result()
            run.file(MODEL).unlink(missing_ok=True)
        print(f"[ptft] pretraining {run.hash} on {len(task_data.pt_train)} images of "
              f"{len(task_data.pt_classes)} classes ({device})", flush=True)
        run.write_config(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        t0 = time.time()
        torch.manual_seed(derived_seed(seed, _INIT))
        net = build_model(model.name, task_data.num_classes_total, model.width)
        apply_init_scaling(net, init)
        tcfg = _train_cfg(train)
        pt, pte = task_data.pt_train, task_data.pt_test
        rt = cfg.runtime
        task = VisionTask(net, pt.x, pt.y_orig, pte.x, pte.y_orig, batch_size=tcfg.batch_size, seed=seed,
                          device=device, amp=rt.amp, augment=tcfg.augment, compile=rt.compile,
                          eval_batch=rt.eval_batch)
        out = _train(task, tcfg, run, resolved, cfg.wandb, stage="pretrain", group=str(cfg.name), name=name)
        result = {k: v for k, v in out.items() if k != "resumed"}
        result.update(n_train=len(pt), n_test=len(pte), classes=task_data.pt_classes, head=task_data.num_classes_total,
                      device=str(device), amp=task.amp, compile=bool(rt.compile))
        atomic_write_bytes(run.file(MODEL), model_bytes(task.model))
        run.write_result(result)
        atomic_write_json(run.file("timing.json"), {"wall_s": time.time() - t0, "resumed": out["resumed"]})
        run.file("checkpoint.pt").unlink(missing_ok=True)
    return run, result


def run_pretrain(cfg: DictConfig) -> tuple[RunDir, dict[str, Any]]:
    """One `ptft-pretrain` job (skip if finished, resume if killed)."""
    validate_pretrain(cfg)
    return _pretrain_run(cfg, cfg.data, cfg.model, cfg.init, cfg.train, int(cfg.seed), force=bool(cfg.force),
                         record=True,
                         resolved=OmegaConf.to_container(cfg, resolve=True), name=app.overrides_name())


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


def _pretrained_state(cfg: DictConfig, cache: dict) -> tuple[str, dict, dict]:
    """(hash, state_dict, result) of the pretrained model of `cfg`, trained first if absent."""
    plain = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    resolved = {"data": plain(cfg.data), "model": plain(cfg.model), "init": plain(cfg.init),
                "train": plain(cfg.pretrain.train), "seed": int(cfg.pretrain.seed), "runtime": plain(cfg.runtime),
                "name": str(cfg.name)}
    key = RunDir("", "pretrain", pretrain_identity(cfg.data, cfg.model, cfg.init, cfg.pretrain.train,
                                                   cfg.pretrain.seed)).hash
    if key not in cache:
        run, res = _pretrain_run(cfg, cfg.data, cfg.model, cfg.init, cfg.pretrain.train, int(cfg.pretrain.seed),
                                 force=False, resolved=resolved, name="pretrain:" + app.overrides_name())
        if res["status"] == "diverged":
            raise ConfigError(f"the pretrained model {run.path} diverged (NaN loss); fine-tuning from it is "
                              f"meaningless: lower pretrain.train.lr")
        cache[key] = (run.hash, torch.load(run.file(MODEL), map_location="cpu", weights_only=True), res)
    return cache[key]


def _finetune_one(cfg: DictConfig, task_data: TaskData, pt_cache: dict, name: str) -> tuple[RunDir, dict[str, Any]]:
    mode = cfg.ft.mode
    pt_hash, pt_state, pt_res = _pretrained_state(cfg, pt_cache) if mode == "finetune" else (None, None, None)
    run = RunDir(app.store_root(cfg), "finetune", finetune_identity(cfg, pt_hash))
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
        t0 = time.time()
        seed = int(cfg.seed)
        ft, te = task_data.ft_train, task_data.ft_test
        torch.manual_seed(derived_seed(seed, _INIT))
        net = build_model(cfg.model.name, task_data.num_classes_total, cfg.model.width)
        if mode == "finetune":
            net.load_state_dict(pt_state)
        else:
            apply_init_scaling(net, cfg.init)
        torch.manual_seed(derived_seed(seed, _HEAD))
        prepare_finetune_model(net, cfg.ft, len(task_data.ft_classes))
        reuse = cfg.ft.head == "reuse"
        y_tr, y_te = (ft.y_orig, te.y_orig) if reuse else (ft.y, te.y)
        tcfg = _train_cfg(cfg.train)
        tcfg.batch_size = tcfg.batch_size or min(len(ft), 128)
        rt = cfg.runtime
        task = VisionTask(net, ft.x, y_tr, te.x, y_te, batch_size=tcfg.batch_size, seed=seed, device=device,
                          amp=rt.amp, augment=tcfg.augment, compile=rt.compile, eval_batch=rt.eval_batch)
        out = _train(task, tcfg, run, resolved, cfg.wandb, stage="finetune" if mode == "finetune" else "stl",
                     group=str(cfg.name), name=f"{name},n_ft={len(ft)},seed={seed}")
        result = {k: v for k, v in out.items() if k != "resumed"}
        result.update(mode=mode, n_ft=len(ft), seed=seed, n_test=len(te), batch_size=tcfg.batch_size,
                      pretrain=pt_hash, pt_status=pt_res["status"] if pt_res else None,
                      pt_test_acc=pt_res.get("test_acc") if pt_res else None,
                      rescale=float(cfg.ft.rescale), readout_scale=float(cfg.ft.readout_scale), head=cfg.ft.head,
                      device=str(device), amp=task.amp)
        run.write_result(result)
        atomic_write_json(run.file("timing.json"), {"wall_s": time.time() - t0, "resumed": out["resumed"]})
        run.file("checkpoint.pt").unlink(missing_ok=True)
    return run, result


def run_finetune(cfg: DictConfig) -> list[tuple[RunDir, dict[str, Any]]]:
    """One `ptft-finetune` job: every (n_ft, seed) of cfg.runs in this process (finished ones skipped)."""
    validate_finetune(cfg)
    runs = expand_runs(cfg)
    name = app.overrides_name()
    data_cache: dict = {}
    keys = []
    for c in runs:  # load (and check) every run's data before any compute: a bad n_ft fails the job up front
        keys.append(OmegaConf.to_yaml(c.data, resolve=True))
        if keys[-1] not in data_cache:
            data_cache[keys[-1]] = load_task(data_config(c.data))
    pt_cache: dict = {}
    out = [_finetune_one(c, data_cache[k], pt_cache, name) for c, k in zip(runs, keys)]
    return out


# ------------------------------------------------------------------------------------------------
# console scripts
# ------------------------------------------------------------------------------------------------
def _fmt(result: dict, keys: tuple) -> str:
    return "  ".join(f"{k}={result[k]:.4g}" if isinstance(result[k], float) else f"{k}={result[k]}"
                     for k in keys if k in result)


@app.entry("pretrain")
def pretrain_main(cfg: DictConfig) -> None:
    run, result = run_pretrain(cfg)
    print("[ptft] " + _fmt(result, ("status", "epochs", "train_loss", "test_acc", "test_loss")), flush=True)
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
