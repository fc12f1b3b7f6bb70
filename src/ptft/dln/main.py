"""`ptft-dln`: simulate DLN fine-tuning (or STL) by gradient descent, PAPER.md sections 1, 2, 4, 7.

    ptft-dln                                   # defaults: one seed, CPU, wandb offline
    ptft-dln -m dln.lam_pt=-0.99,0,0.99 dln.omega=0,1
    ptft-dln 'dln.seeds=[0,1,2,3,4]'           # five seeds as one batched job
    ptft-dln 'dln.configs=[{c_pt:1e-6},{c_pt:1e-3,omega:0.0}]' 'dln.seeds=[0,1]'
                                               # two configurations x two seeds in one job (one run
                                               # directory per configuration; ptft.dln.multi)

The run directory (printed as the last line; one line per configuration) is <store.root>/dln/<hash of the scientific config>.
A finished run is not trained again (force=true reruns it); a killed run resumes from its checkpoint.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ptft import app
from ptft.dln.config import NON_SCIENTIFIC_TRAIN, DLNApp, validate
from ptft.dln.model import DLNState, invariants
from ptft.dln.model import beta as beta_of
from ptft.dln.task import DLNTask, member_data, pt_data, start_state, test_mse
from ptft.log import Logger, progress
from ptft.train.store import RunDir, atomic_write_bytes, atomic_write_json
from ptft.train.trainer import Trainer

app.register("dln_schema", DLNApp)
app.register_validator("dln", validate)

STATUS = {"converged": "ok"}  # trainer status -> result status (diverged, max_steps stay as they are)


def seeds_of(cfg: DictConfig) -> list[int]:
    return [int(s) for s in cfg.dln.seeds] if cfg.dln.seeds else [int(cfg.seed)]


def scientific(cfg: DictConfig) -> dict[str, Any]:
    """The keys that define a run's numbers (its identity in the run store)."""
    d = OmegaConf.to_container(cfg.dln, resolve=True)
    d.pop("seeds")
    d.pop("configs", None)  # a multi-configuration job is one run per configuration
    if not d["lr_cap"]:
        d.pop("lr_cap")  # keeps the identity of runs made before the knob existed
    if d["pt"] == "exact":
        d.pop("alpha_pt")
    tr = {k: v for k, v in OmegaConf.to_container(cfg.train, resolve=True).items() if k not in NON_SCIENTIFIC_TRAIN}
    return {"dln": d, "train": tr, "seeds": seeds_of(cfg)}


def _train_pt(cfg: DictConfig, run: RunDir, members: list, device: str) -> DLNState:
    """dln.pt=train: gradient descent on finite PT data from the (c, lam) init, same trainer."""
    final = run.file("pt_state.pt")
    if final.exists():
        st = torch.load(final, weights_only=True)
        return DLNState(*(st[k].numpy() for k in DLNState._fields))
    d = cfg.dln
    data = [pt_data(d, m) for m in members]
    from ptft.dln.model import init_state

    task = DLNTask([x for x, _ in data], [y for _, y in data], init_state(d.c_pt, d.lam_pt, (len(members), d.dim)),
                   device)
    trainer = Trainer(task, cfg.train, checkpoint=run.file("checkpoint_pt.pt"))
    trainer.try_resume()
    out = trainer.run()
    import io

    buf = io.BytesIO()
    torch.save({**task.state_dict(), "status": out["status"], "steps": out["steps"]}, buf)
    atomic_write_bytes(final, buf.getvalue())
    run.file("checkpoint_pt.pt").unlink(missing_ok=True)
    return task.state()


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
            tests = test_mse(errs, cfg.dln.n_test)
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
            run.file("pt_state.pt").unlink(missing_ok=True)
        run.write_config(OmegaConf.to_yaml(cfg, resolve=True))
        t0 = time.time()
        d = cfg.dln
        members = [member_data(d, s) for s in seeds_of(cfg)]
        pt_info = None
        pt_states = None
        if d.mode == "ptft" and d.pt == "train":
            pt_states = _train_pt(cfg, run, members, cfg.device)
            st = torch.load(run.file("pt_state.pt"), weights_only=True)
            pt_info = {"pt_status": [STATUS.get(s, s) for s in st["status"]], "pt_steps": list(st["steps"])}
        start = start_state(d, members, pt_states)
        task = DLNTask([m.X for m in members], [m.y for m in members], start, cfg.device)
        if d.lr_cap:
            task.cap_lr(cfg.train.lr)
        ckpt = run.file("checkpoint.pt")
        resolved = OmegaConf.to_container(cfg, resolve=True)
        with progress(total=cfg.train.max_steps, desc=f"dln {run.hash}", unit="step") as bar:
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


def run_jobs(cfg: DictConfig) -> list[tuple[RunDir, dict[str, Any]]]:
    """A single-configuration job, or with `dln.configs` one run per configuration (ptft.dln.multi)."""
    if cfg.dln.get("configs") is not None:
        from ptft.dln.multi import run_multi

        return run_multi(cfg)
    return [run_job(cfg)]


@app.entry("dln")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(int(torch.get_num_threads()))
    for run, result in run_jobs(cfg):
        keys = ("status", "steps", "train_mse", "test_mse", "param_mse") if "members" not in result else (
            "status", "test_mse_mean", "param_mse_mean")
        print("[ptft] " + "  ".join(f"{k}={result[k]:.4g}" if isinstance(result[k], float) else f"{k}={result[k]}"
                                   for k in keys if k in result), flush=True)
        print(run.path, flush=True)


if __name__ == "__main__":
    main()
