"""One `ptft-dln` job of a single configuration: DLN fine-tuning (or STL) by gradient descent, docs/paper.md
sections 1, 2, 4, 7. The command (ptft.dln.cli) runs it, or ptft.dln.multi for `dln.configs` jobs.

The run directory is <store.root>/dln/<hash of the scientific config>.
A finished run is not trained again (force=true reruns it); a killed run resumes from its checkpoint.
"""
from __future__ import annotations

import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ptft import app
from ptft.dln.config import NEW_DLN_KEYS, DLNApp, pt_train_config, validate
from ptft.dln.model import DLNState, invariants
from ptft.dln.model import beta as beta_of
from ptft.dln.task import DLNTask, member_data, pt_data, start_state, test_mse
from ptft.log import Logger, progress
from ptft.train.store import (DamagedFile, RunDir, atomic_write_bytes, atomic_write_json, file_lock, move_aside,
                              previous_checkpoint, read_checkpoint, write_checkpoint)
from ptft.train.trainer import Trainer, train_identity

app.register("dln_schema", DLNApp)
app.register_validator("dln", validate)

STATUS = {"converged": "ok"}  # trainer status -> result status (diverged, max_steps stay as they are)


def _pt_state_ok(path: Path, dim: int) -> bool:
    """Whether a stored PT end state (seed<N>.pt) can be used; a damaged one is moved aside with one line
    (and trained again)."""
    if not os.path.lexists(path):
        return False
    try:
        st = read_checkpoint(path)
        bad = [k for k in (*DLNState._fields, "status", "steps", "train_mse") if k not in st]
        if bad or any(not isinstance(st[k], torch.Tensor) or tuple(st[k].shape) != (dim,) for k in DLNState._fields):
            raise DamagedFile(f"not a PT end state of dimension {dim}")
        return True
    except DamagedFile as e:
        print(f"[ptft] {path} is damaged ({e}); moved to {move_aside(path).name}; pretraining it again", flush=True)
        return False


def seeds_of(cfg: DictConfig) -> list[int]:
    return [int(s) for s in cfg.dln.seeds] if cfg.dln.seeds else [int(cfg.seed)]


def scientific(cfg: DictConfig) -> dict[str, Any]:
    """The keys that define a run's numbers (its identity in the run store)."""
    d = OmegaConf.to_container(cfg.dln, resolve=True)
    d.pop("seeds")
    d.pop("configs", None)  # a multi-configuration job is one run per configuration
    if not d["lr_cap"]:
        d.pop("lr_cap")  # keeps the identity of runs made before the knob existed
    if d["pt"] == "exact" or d["n_pt"] is not None:
        d.pop("alpha_pt")
    if d["n_ft"] is not None:
        d.pop("alpha")
    for k, default in NEW_DLN_KEYS.items():  # keeps the identity of runs made before these keys existed
        if d[k] == default:
            d.pop(k)
    tr = train_identity(OmegaConf.to_container(cfg.train, resolve=True))
    sci = {"dln": d, "train": tr, "seeds": seeds_of(cfg)}
    if d["mode"] == "ptft" and d["pt"] == "train":
        pt = _pt_train_identity(cfg)
        if pt != tr:  # PT trained as FT (every pt_train key null) keeps the identity of runs made before pt_train
            sci["pt_train"] = pt
    return sci


def _pt_train_identity(cfg: DictConfig) -> dict[str, Any]:
    return train_identity(OmegaConf.to_container(pt_train_config(cfg), resolve=True))


PT_KEYS = {"paper": ("rho_pt", "a_pt"), "ll": ("k_pt",)}  # the PT teacher's keys (its draw comes first)


def pt_identity(cfg: DictConfig) -> dict[str, Any]:
    """What a trained PT (dln.pt=train) depends on, per seed: the PT teacher, inputs, init and train
    config; not the FT task, so every FT job (task, n_ft, re-initialisation) shares one PT per seed."""
    from ptft.dln.config import n_pt

    d = cfg.dln
    keys = ("dim", "teacher", "inputs", "noise", "c_pt", "lam_pt") + PT_KEYS[d.teacher]
    return {"dln": {**{k: d[k] for k in keys}, "n_pt": n_pt(d)}, "train": _pt_train_identity(cfg)}


def _train_pt(cfg: DictConfig, members: list, device: str) -> tuple[DLNState, dict[str, list]]:
    """dln.pt=train: gradient descent on finite PT data from the (c, lam) init, same trainer, with the
    settings of pt_train_config (pt_train, else train). Each seed's end state, with whether it met the
    threshold (status ok, else max_steps / diverged), its steps and train MSE, is kept in the PT store
    (<store.root>/dln_pt/<hash of pt_identity>/seed<N>.pt) and reused by every FT job that needs it;
    returns the members' states and {pt_status, pt_steps, pt_train_mse (, pt_restarts)} per member.
    A PT that missed its threshold is named on the console (one line)."""
    from ptft.dln.model import init_state

    d = cfg.dln
    tcfg = pt_train_config(cfg)
    store = RunDir(app.store_root(cfg), "dln_pt", pt_identity(cfg))
    files = [store.file(f"seed{m.seed}.pt") for m in members]
    store.path.mkdir(parents=True, exist_ok=True)
    with ExitStack() as locks:  # one lock per seed (in seed order): jobs with other seeds go on in parallel
        for f in sorted(files):
            locks.enter_context(file_lock(Path(str(f) + ".lock")))
        todo = [b for b, f in enumerate(files) if not _pt_state_ok(f, d.dim)]
        if todo:
            # pt.yaml, not config.yaml: the PT store is not a run of its own
            atomic_write_bytes(store.file("pt.yaml"), OmegaConf.to_yaml(OmegaConf.create(store.sci)).encode())
            data = [pt_data(d, members[b]) for b in todo]
            task = DLNTask([x for x, _ in data], [y for _, y in data], init_state(d.c_pt, d.lam_pt, (len(todo), d.dim)),
                           device)
            ckpt = store.file("checkpoint_" + "_".join(str(members[b].seed) for b in todo) + ".pt")
            t0 = time.time()
            trainer = Trainer(task, tcfg, checkpoint=ckpt)
            trainer.try_resume()
            out = trainer.run()
            wall = time.time() - t0  # this process's share (a resumed PT's earlier time is not counted)
            for i, b in enumerate(todo):
                more = {"restarts": int(out["restarts"][i])} if "restarts" in out else {}
                write_checkpoint(files[b], {**{k: v[i] for k, v in task.state_dict().items()},
                                            "status": STATUS.get(out["status"][i], out["status"][i]),
                                            "steps": int(out["steps"][i]), "train_mse": float(out["train_loss"][i]),
                                            "wall_s": wall, "batch": len(todo), **more})
                previous_checkpoint(files[b]).unlink(missing_ok=True)
            ckpt.unlink(missing_ok=True)
            previous_checkpoint(ckpt).unlink(missing_ok=True)
        st = [read_checkpoint(f) for f in files]
    state = DLNState(*(np.stack([s[k].numpy() for s in st]) for k in DLNState._fields))
    info = {"pt_status": [s["status"] for s in st], "pt_steps": [int(s["steps"]) for s in st],
            "pt_train_mse": [float(s["train_mse"]) for s in st]}
    if all("restarts" in s for s in st):
        info["pt_restarts"] = [int(s["restarts"]) for s in st]
    missed = [f"seed {m.seed}: {s['status']} after {int(s['steps'])} steps, train MSE {float(s['train_mse']):.3g}"
              for m, s in zip(members, st) if s["status"] != "ok"]
    if missed:
        print(f"[ptft] warning: PT missed its criterion (train MSE < {tcfg.threshold:g}) for {len(missed)} of "
              f"{len(st)} seeds ({'; '.join(missed)}); fine-tuning starts from it (pt_status in result.json; "
              f"pt_train.* sets PT's lr and budget)", flush=True)
    return state, info


def _member_results(cfg, members, start: DLNState, final: DLNState, train_mse: np.ndarray, out: dict,
                    pt_info: dict | None, tests: np.ndarray | None = None) -> list[dict]:
    """Per-seed result rows of one configuration from its start and final factors (B, D); `tests`:
    the members' test MSE if already computed (a multi-configuration job does all at once)."""
    c0, l0 = invariants(start)
    c1, l1 = invariants(final)
    with np.errstate(over="ignore", invalid="ignore"):  # a diverged member's errors are inf/nan, reported so
        beta = beta_of(final)
        errs = beta - np.stack([m.beta_star for m in members])
        if tests is None:
            tests = test_mse(errs, cfg.dln.n_test, inputs=cfg.dln.inputs)
        param = np.sum(errs**2, axis=1) / errs.shape[1]
    res = []
    for b, m in enumerate(members):
        r = {
            "seed": m.seed,
            "status": STATUS.get(out["status"][b], out["status"][b]),
            "steps": int(out["steps"][b]),
            "train_mse": float(train_mse[b]),
            "test_mse": float(tests[b]),
            "param_mse": float(param[b]),
            "beta_l1": float(np.abs(beta[b]).sum()),
            "c_drift": float(np.max(np.abs(c1[b] - c0[b]) / c0[b])),
            "lam_drift": float(np.max(np.abs(l1[b] - l0[b]) / c0[b])),
        }
        if "restarts" in out:  # train.restart_on_divergence: restarts taken and the lr that finished
            r.update(restarts=int(out["restarts"][b]), lr_final=float(out["lr_final"][b]))
        if pt_info is not None:
            r.update({k: v[b] for k, v in pt_info.items()})
        res.append(r)
    return res


def summarise(members: list[dict]) -> dict[str, Any]:
    """result.json: a single run's fields at top level; a batched job also lists its members."""
    if len(members) == 1:
        return dict(members[0])
    statuses = [m["status"] for m in members]
    top: dict[str, Any] = {"status": "ok" if all(s == "ok" for s in statuses) else
                           next(s for s in statuses if s != "ok"), "members": members}
    for k in ("steps", "train_mse", "test_mse", "param_mse", "beta_l1", "c_drift", "lam_drift"):
        vals = np.array([m[k] for m in members], dtype=float)
        top[k + "_mean"] = float(vals.mean())
    top["c_drift"] = max(m["c_drift"] for m in members)
    top["lam_drift"] = max(m["lam_drift"] for m in members)
    return top


def run_job(cfg: DictConfig) -> tuple[RunDir, dict[str, Any]]:
    """Run (or skip, or resume) one `ptft-dln` job; returns its run directory and result."""
    validate(cfg)
    run = RunDir(app.store_root(cfg), "dln", scientific(cfg))
    app.record_run_dir(run.path)
    if run.finished and not cfg.force:
        print(f"[ptft] finished run found, not training again (force=true reruns): {run.path}", flush=True)
        return run, run.load_result()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise app.ConfigError(f"device={cfg.device} but torch sees no CUDA device; use device=cpu")
    with run.lock():
        if run.finished and not cfg.force:
            return run, run.load_result()
        if cfg.force:
            run.clear_result()
        run.write_config(OmegaConf.to_yaml(cfg, resolve=True))
        t0 = time.time()
        d = cfg.dln
        members = [member_data(d, s) for s in seeds_of(cfg)]
        pt_info = None
        pt_states = None
        if d.mode == "ptft" and d.pt == "train":
            pt_states, pt_info = _train_pt(cfg, members, cfg.device)
        start = start_state(d, members, pt_states)
        task = DLNTask([m.X for m in members], [m.y for m in members], start, cfg.device)
        if d.lr_cap:
            task.cap_lr(cfg.train.lr)
        ckpt = run.file("checkpoint.pt")
        resolved = OmegaConf.to_container(cfg, resolve=True)
        with progress(total=cfg.train.max_steps, desc=f"dln {run.run_hash}", unit="step") as bar:
            trainer = Trainer(task, cfg.train, checkpoint=ckpt, bar=bar)
            resumed = trainer.try_resume()
            bar.update(trainer.step)
            with Logger(run.path, resolved, cfg.wandb, stage="dln-" + d.mode, group=cfg.name,
                        name=app.overrides_name(), resume_step=trainer.step if resumed else None) as logger:
                trainer._log = logger.log
                out = trainer.run()
                train_mse = task.evaluate()["train_mse"].cpu().numpy()
                result = summarise(_member_results(cfg, members, start, task.state(), train_mse, out, pt_info))
                logger.summary(result)
        run.write_result(result)
        atomic_write_json(run.file("timing.json"), {"wall_s": time.time() - t0, "resumed": resumed})
        ckpt.unlink(missing_ok=True)
    return run, result
