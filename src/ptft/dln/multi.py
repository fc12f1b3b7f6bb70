"""Jobs over several configurations: `dln.configs` x `dln.seeds` as one `ptft-dln` job.

    ptft-dln 'dln.configs=[{c_pt:1e-6,omega:0.0},{c_pt:1e-3,omega:0.0},{c_pt:1.0,omega:0.0}]' \
             'dln.seeds=[0,1,2,3,4]' dln.alpha=0.3

Each entry of `dln.configs` overrides dln.* keys of the job's own dln (any key but seeds and
configs). Every configuration gets exactly the run directory, config.yaml and result.json of the
single-configuration job with those values (so the run store, skip-if-done, resume and
ptft-aggregate see no difference); finished ones are skipped. The members (configuration, seed) are
trained together by the shared-X engine (ptft.dln.sharedx): all members at one (seed, alpha, dim)
share their inputs X, so a step is a matrix-matrix product.

Checkpoints are written in each run directory in the trainer's format (a killed multi-configuration
job resumes, and so does a single job of one of its configurations). With train.momentum > 0 or
train.restart_on_divergence the configurations run one by one through the trainer.
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ptft import ConfigError, app
from ptft.dln.config import DLNConfig, n_ft, validate
from ptft.dln.main import STATUS, _member_results, _train_pt, run_job, scientific, seeds_of, summarise
from ptft.dln.model import DLNState
from ptft.dln.model import beta as beta_of
from ptft.dln.sharedx import RUNNING, Member, SharedXEngine
from ptft.dln.task import ft_inputs, member_data, start_state, test_inputs
from ptft.log import Logger, progress
from ptft.train.store import (DamagedFile, RunDir, atomic_write_json, move_aside, previous_checkpoint, read_checkpoint,
                              write_checkpoint)
from ptft.train.trainer import _Signals

_ENTRY_KEYS = set(DLNConfig.__dataclass_fields__) - {"seeds", "configs"}


def member_configs(cfg: DictConfig) -> list[DictConfig]:
    """The single-configuration config of every entry of dln.configs, each validated (ConfigError
    naming the entry before any compute)."""
    entries = cfg.dln.configs
    if entries is None or len(entries) == 0:
        raise ConfigError("dln.configs=[] is empty; give at least one configuration or null")
    out = []
    for i, e in enumerate(entries):
        where = f"dln.configs[{i}]"
        if not isinstance(e, (dict, DictConfig)):
            raise ConfigError(f"{where}={e!r} must be a mapping of dln keys, e.g. {{c_pt: 1e-3}}")
        bad = sorted(set(e) - _ENTRY_KEYS)
        if bad:
            raise ConfigError(f"{where} has key(s) {bad} that a configuration cannot set; "
                              f"allowed: {sorted(_ENTRY_KEYS)}")
        c = cfg.copy()
        try:
            c.dln.configs = None
            c.dln = OmegaConf.merge(c.dln, OmegaConf.create(dict(e)))
        except OmegaConfBaseException as err:
            raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None
        try:
            validate(c)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        out.append(c)
    return out


def _lr_scales(cfg: DictConfig, start: DLNState, X: list[torch.Tensor]) -> list[float]:
    """dln.lr_cap: min(1, stable_lr / lr) per member, stable_lr = n / (4 max_i c_i sigma_max(X)^2)
    as in DLNTask.stable_lr."""
    if not cfg.dln.lr_cap:
        return [1.0] * len(X)
    c = np.abs(start.wp * start.wm + start.vp * start.vm).max(axis=1)
    out = []
    for b, x in enumerate(X):
        s2 = float(torch.linalg.matrix_norm(x, ord=2)) ** 2
        out.append(min(1.0, x.shape[0] / (4.0 * c[b] * s2) / cfg.train.lr))
    return out


def _checkpoint(path, factors, steps, status, loss, step: int) -> None:
    """A trainer-format checkpoint of one configuration's members (full batch, at a step boundary)."""
    B = len(status)
    st = {"task": {k: torch.as_tensor(f) for k, f in zip(DLNState._fields, factors)}, "bufs": [],
          "epoch": step, "step": step, "steps": torch.as_tensor(steps, dtype=torch.long),
          "active": torch.tensor([s == RUNNING for s in status]), "status": list(status),
          "last_loss": torch.as_tensor(loss, dtype=torch.float64), "ep_sum": torch.zeros(B, dtype=torch.float64),
          "n_batches": 0}
    write_checkpoint(path, st)


def _resume_state(ckpt) -> dict | None:
    """The newest readable checkpoint of a run (checkpoint.pt, else checkpoint.prev.pt), or None to start
    over; a damaged one is moved aside with one line (as the trainer does)."""
    for path in (ckpt, previous_checkpoint(ckpt)):
        if not path.exists() and not path.is_symlink():
            continue
        try:
            st = read_checkpoint(path)
            if not {"task", "steps", "status", "last_loss", "step"} <= set(st):
                raise DamagedFile("it is not a trainer checkpoint")
            return st
        except DamagedFile as e:
            print(f"[ptft] {path} is unreadable ({e}), moved to {move_aside(path).name}", flush=True)
    return None


def run_multi(cfg: DictConfig) -> list[tuple[RunDir, dict[str, Any]]]:
    """Run (or skip, or resume) every configuration of dln.configs; their run directories and results."""
    subs = member_configs(cfg)
    root = app.store_root(cfg)
    runs = [RunDir(root, "dln", scientific(c)) for c in subs]
    seen: dict[str, int] = {}
    for i, r in enumerate(runs):
        if r.run_hash in seen:
            raise ConfigError(f"dln.configs[{i}] is the same run as dln.configs[{seen[r.run_hash]}]; list it once")
        seen[r.run_hash] = i
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device} but torch sees no CUDA device; use device=cpu")
    if cfg.train.momentum > 0 or cfg.train.restart_on_divergence:  # the shared-X engine is plain GD
        return [run_job(c) for c in subs]
    for r in runs:
        app.record_run_dir(r.path)
    results: dict[int, dict] = {}
    for i, r in enumerate(runs):
        if r.finished and not cfg.force:
            results[i] = r.load_result()
    if len(results) == len(runs):
        print(f"[ptft] all {len(runs)} configurations finished, not training again (force=true reruns)", flush=True)
        return list(zip(runs, (results[i] for i in range(len(runs)))))
    with ExitStack() as stack:
        for i in sorted(set(range(len(runs))) - set(results), key=lambda i: runs[i].run_hash):
            stack.enter_context(runs[i].lock())  # in hash order: two overlapping jobs cannot deadlock
        for i, r in enumerate(runs):
            if i not in results and r.finished and not cfg.force:  # finished while we waited
                results[i] = r.load_result()
        todo = [i for i in range(len(runs)) if i not in results]
        if todo:
            results.update(_train(cfg, [subs[i] for i in todo], [runs[i] for i in todo], stack, todo))
    return [(runs[i], results[i]) for i in range(len(runs))]


def _train(cfg: DictConfig, subs: list[DictConfig], runs: list[RunDir], stack: ExitStack,
           idx: list[int]) -> dict[int, dict]:
    t0, c0 = time.time(), time.process_time()
    dev = cfg.device
    X_np: dict[tuple, np.ndarray] = {}
    X_t: dict[tuple, torch.Tensor] = {}
    members: list[Member] = []
    per_cfg = []  # (config, run, seeds' MemberData, start, pt_info, first member index, resumed step)
    for c, run in zip(subs, runs):
        if cfg.force:
            run.clear_result()
        run.write_config(OmegaConf.to_yaml(c, resolve=True))
        d = c.dln
        keys = [(s, n_ft(d), int(d.dim), d.inputs) for s in seeds_of(c)]
        for k, s in zip(keys, seeds_of(c)):
            if k not in X_np:
                X_np[k] = ft_inputs(d, s)
                X_t[k] = torch.as_tensor(X_np[k], dtype=torch.float64)
        data = [member_data(d, s, X_np[k]) for s, k in zip(seeds_of(c), keys)]
        pt_info, pt_states = None, None
        if d.mode == "ptft" and d.pt == "train":
            pt_states, pt_info = _train_pt(c, data, dev)
        start = start_state(d, data, pt_states)
        scales = _lr_scales(c, start, [X_t[k] for k in keys])
        cur, steps, status, loss, step0 = start, [0] * len(data), [RUNNING] * len(data), [float("nan")] * len(data), 0
        ckpt = run.file("checkpoint.pt")
        st = _resume_state(ckpt)  # a checkpoint of this job or of the single job: same format
        if st is not None:
            cur = DLNState(*(st["task"][k].numpy() for k in DLNState._fields))
            steps, status, loss, step0 = st["steps"].tolist(), list(st["status"]), st["last_loss"].tolist(), int(st["step"])
        per_cfg.append(dict(cfg=c, run=run, data=data, start=start, pt_info=pt_info, first=len(members),
                            step0=step0, resumed=st is not None, status=status, steps=steps, loss=loss, cur=cur))
        for b, k in enumerate(keys):
            members.append(Member(k, data[b].y, DLNState(*(f[b] for f in cur)), scales[b], int(steps[b])))
    running = [j for j, m in enumerate(members) if _status_of(per_cfg, j) == RUNNING]
    eng = SharedXEngine(X_np, [members[j] for j in running], lr=cfg.train.lr, threshold=cfg.train.threshold,
                        max_steps=cfg.train.max_steps, device=dev)
    loggers = [stack.enter_context(Logger(p["run"].path, OmegaConf.to_container(p["cfg"], resolve=True), cfg.wandb,
                                          stage="dln-" + p["cfg"].dln.mode, group=cfg.name,
                                          name=app.overrides_name(), resume_step=p["step0"] if p["resumed"] else None))
               for p in per_cfg]
    log_every, ckpt_every = cfg.train.log_every, cfg.train.ckpt_every_s

    def merged(factors, steps, status, loss):
        """Per configuration: its members' (factors, steps, status, loss), engine and resumed ones."""
        out = []
        for p in per_cfg:
            B = len(p["data"])
            f = [np.array(x, dtype=np.float64) for x in p["cur"]] if factors is not None else None
            st, sp, ls = list(p["status"]), list(p["steps"]), list(p["loss"])
            for b in range(B):
                j = p["first"] + b
                if j in pos:
                    e = pos[j]
                    if f is not None:
                        for k in range(4):
                            f[k][b] = factors[k][e]
                    st[b], sp[b], ls[b] = status[e], int(steps[e]), float(loss[e])
            out.append((f, sp, st, ls))
        return out

    pos = {j: e for e, j in enumerate(running)}
    last_ckpt = [time.monotonic()]
    results: dict[int, dict] = {}
    n_running = [-1]

    def write_checkpoints() -> None:
        for k, (p, (f, sp, st, ls)) in enumerate(zip(per_cfg, merged(*eng.snapshot()))):
            if idx[k] not in results and any(s == RUNNING for s in st):
                _checkpoint(p["run"].file("checkpoint.pt"), f, sp, st, ls, p["step0"] + eng.t)
        last_ckpt[0] = time.monotonic()

    def finalize(k: int, f, sp, st, ls) -> None:
        """Write configuration k's result as soon as all its members have stopped."""
        p, lg = per_cfg[k], loggers[k]
        _log_row(lg, p["step0"] + eng.t, st, ls)
        final = DLNState(*f)
        with np.errstate(over="ignore", invalid="ignore"):  # a diverged member's errors are inf/nan
            errs = beta_of(final) - np.stack([m.beta_star for m in p["data"]])
            d = p["cfg"].dln
            tests = np.mean((test_inputs(int(d.dim), int(d.n_test), inputs=d.inputs) @ errs.T) ** 2, axis=0)
        res = summarise(_member_results(p["cfg"], p["data"], p["start"], final, _train_mse(final, p["data"]),
                                        {"status": st, "steps": sp}, p["pt_info"], tests))
        lg.summary(res)
        p["run"].write_result(res)
        # the job's numbers until this configuration ended: wall and CPU seconds, GFLOP of the products
        atomic_write_json(p["run"].file("timing.json"), {
            "wall_s": time.time() - t0, "resumed": p["resumed"], "job_cpu_s": time.process_time() - c0,
            "job_configs": len(per_cfg), "job_gflop": eng.flops / 1e9, "job_iterations": eng.t})
        p["run"].file("checkpoint.pt").unlink(missing_ok=True)
        results[idx[k]] = res

    def finalize_done() -> None:
        if eng.n_running == n_running[0]:
            return  # nobody stopped since the last look
        n_running[0] = eng.n_running
        snap = None
        for k, p in enumerate(per_cfg):
            if idx[k] in results:
                continue
            js = range(p["first"], p["first"] + len(p["data"]))
            if all((eng.status[pos[j]] if j in pos else p["status"][j - p["first"]]) != RUNNING for j in js):
                snap = snap or merged(*eng.snapshot())
                finalize(k, *snap[k])

    finalize_done()
    with _Signals() as sig, progress(total=cfg.train.max_steps, desc=f"dln x{len(per_cfg)} configs",
                                     unit="step") as bar:
        def on_step(e: SharedXEngine) -> None:  # after each block of iterations; e.t hits every log_every
            bar.update(e.t - bar.n)
            if e.t % log_every == 0:
                for k, (p, lg, (_, sp, st, ls)) in enumerate(zip(per_cfg, loggers, merged(*e.snapshot(factors=False)))):
                    if idx[k] not in results:
                        _log_row(lg, p["step0"] + e.t, st, ls)
            finalize_done()
            due = ckpt_every > 0 and time.monotonic() - last_ckpt[0] > ckpt_every
            if sig.pending is not None or due:
                write_checkpoints()
                if sig.pending is not None:
                    sig.forward()

        eng.run(on_step, every=log_every)
    finalize_done()
    assert len(results) == len(per_cfg)
    return results


def _status_of(per_cfg: list[dict], j: int) -> str:
    for p in per_cfg:
        if p["first"] <= j < p["first"] + len(p["data"]):
            return p["status"][j - p["first"]]
    raise IndexError(j)


def _train_mse(final: DLNState, data) -> np.ndarray:
    """Train MSE of each member at its final factors (as DLNTask.evaluate)."""
    with np.errstate(over="ignore", invalid="ignore"):
        beta = final.vp * final.wp - final.vm * final.wm
        return np.array([np.mean((m.X @ beta[b] - m.y) ** 2) for b, m in enumerate(data)])


def _log_row(logger: Logger, step: int, status: list[str], loss: list[float]) -> None:
    ll = np.array(loss, dtype=float)
    row = {"epoch": step, "train_loss_mean": float(np.nanmean(ll)) if np.isfinite(ll).any() else float("nan"),
           "n_active": sum(s == RUNNING for s in status)}
    if len(ll) > 1:
        row["train_loss_max"] = float(ll.max()) if np.isfinite(ll).all() else float("nan")
        row["train_loss"] = ll.tolist()
    logger.log(step, row)
