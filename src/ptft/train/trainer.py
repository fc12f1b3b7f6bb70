"""The one training loop of the suite.

A task plugs in through the small `Task` protocol: its trainable tensors, the batches of an epoch,
a per-member loss and its metrics. A task may hold B independent *members* in one set of tensors
(every parameter then has a leading dimension B): each member has its own loss and its own
stopping, and a member that has stopped never changes again while the others go on.

Stopping rules, per member:
* converged: the epoch's mean train loss is below `threshold` (for a full-batch task the loss is
  checked before the update, so a converged member takes no further step);
* diverged: the loss is NaN or inf (or above `diverge_above` when set); the member stops with
  status `diverged` (never a crash and never a result marked ok). With `restart_on_divergence` it
  instead restarts from the state it started from, with lr / 10 and a fresh step budget (at most
  MAX_RESTARTS times; Lippl & Lindsey's policy): from there its trajectory is the one of a run
  started at that lr. `restarts` and `lr_final` per member are in the trainer's output;
* reached: the metric `target_metric` of the task's evaluation (e.g. test_acc) reached `target`
  (>= target; <= target for an error: a name with loss, mse or err in it), checked at each evaluation (every
  `eval_every` epochs, and once before the first step): a stop criterion on quality, e.g. pretraining
  until the held-out accuracy is 0.99;
* max_steps / max_epochs: the budget ran out.

Checkpoints (tensors and plain containers only, loaded with weights_only=True) are written every
`ckpt_every_s` seconds and when SIGTERM, SIGUSR1 or SIGUSR2 (submitit) arrives (at the next step boundary; a handler
that was installed before, e.g. submitit's, is then called). Resuming from a checkpoint gives the
same result, bit for bit on CPU, as an uninterrupted run: all randomness of a task must be a
function of (its seed, the epoch), never of global RNG state.
"""
from __future__ import annotations

import itertools
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Protocol

import torch

from ptft import ConfigError
from ptft.train.store import DamagedFile, move_aside, previous_checkpoint, read_checkpoint, write_checkpoint

STATUS_RUNNING = "running"


@dataclass
class TrainConfig:
    lr: float = 0.5
    momentum: float = 0.0
    threshold: float = 1e-4        # stop a member when its epoch-mean train loss is below this
    max_steps: Optional[int] = None
    max_epochs: Optional[int] = None
    batch_size: Optional[int] = None  # minibatch tasks only (None: full batch)
    log_every: int = 100           # steps between metrics.jsonl rows
    eval_every: int = 0            # epochs between evaluations (0: only at the end)
    ckpt_every_s: float = 60.0     # seconds between checkpoints (<= 0: only on signals)
    restart_on_divergence: bool = False  # a diverged member restarts from its start with lr / 10
    diverge_above: Optional[float] = None  # a loss above this counts as diverged (None: only NaN / inf)
    target_metric: Optional[str] = None  # stop a member when this metric of its evaluation reaches `target`
    target: Optional[float] = None       # (errors: <= target, others >= target; checked at each evaluation)


MAX_RESTARTS = 6  # restart_on_divergence: after this many restarts (lr / 1e6) a member stops as diverged
NON_SCIENTIFIC_TRAIN = ("log_every", "eval_every", "ckpt_every_s")  # do not change a run's numbers
NEW_TRAIN_KEYS = {"restart_on_divergence": False, "diverge_above": None,  # left out of run identities at default
                  "target_metric": None, "target": None}


def train_identity(t: dict) -> dict:
    """The train keys that define a run's numbers (a plain dict of a TrainConfig): without the
    non-scientific ones, and without keys added later while at their defaults (old runs keep their hash).
    With a target_metric, eval_every is scientific: the run stops at an evaluation."""
    keep = ("eval_every",) if t.get("target_metric") is not None else ()
    return {k: v for k, v in t.items() if (k not in NON_SCIENTIFIC_TRAIN or k in keep)
            and not (k in NEW_TRAIN_KEYS and v == NEW_TRAIN_KEYS[k])}


def lower_is_better(metric: str) -> bool:
    """An error (a name with loss, mse or err in it) meets its target at or below it; any other metric at or
    above it."""
    return any(w in metric for w in ("loss", "mse", "err"))


def criterion(cfg: Any) -> Optional[str]:
    """The stop criterion of a train config in words, e.g. 'test_acc>=0.99' or 'train_loss<0.01'; None when
    the run simply trains for its budget."""
    if getattr(cfg, "target_metric", None) is not None:
        return f"{cfg.target_metric}{'<=' if lower_is_better(cfg.target_metric) else '>='}{cfg.target:g}"
    return f"train_loss<{cfg.threshold:g}" if cfg.threshold > 0 else None


OPTIMIZERS = ("sgd", "adamw")


@dataclass
class OptimTrainConfig(TrainConfig):
    """TrainConfig plus the torch.optim optimiser of a single-model task (not the DLN's batched members).

    sgd: torch.optim.SGD(lr, momentum, weight_decay); adamw: torch.optim.AdamW(lr, betas, weight_decay).
    warmup_steps > 0: the learning rate ramps linearly, lr * min(1, (step + 1) / warmup_steps)."""

    optimizer: str = "sgd"
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0


def validate_train(cfg: TrainConfig, key: str = "train") -> None:
    """ConfigError naming `key`.<field> (e.g. pt_train.lr for a pretraining block) on a bad value."""
    import dataclasses

    for k, v in (vars(cfg) if dataclasses.is_dataclass(cfg) else cfg).items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key}.{k}={v} must be a finite number")
        if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
            raise ConfigError(f"{key}.{k}={v} is out of range (a 64-bit integer)")
    if not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(f"{key}.lr={cfg.lr} must be a finite number > 0")
    opt = getattr(cfg, "optimizer", "sgd")
    if opt not in OPTIMIZERS:
        raise ConfigError(f"{key}.optimizer={opt!r} must be one of {list(OPTIMIZERS)}")
    wd = getattr(cfg, "weight_decay", 0.0)
    if not (math.isfinite(wd) and wd >= 0):
        raise ConfigError(f"{key}.weight_decay={wd} must be a finite number >= 0")
    betas = list(getattr(cfg, "betas", [0.9, 0.999]))
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"{key}.betas={betas} must be two numbers in [0, 1)")
    if getattr(cfg, "warmup_steps", 0) < 0:
        raise ConfigError(f"{key}.warmup_steps={cfg.warmup_steps} must be >= 0")
    if opt == "adamw" and cfg.momentum != 0:
        raise ConfigError(f"{key}.momentum={cfg.momentum} is SGD's; AdamW uses {key}.betas")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"{key}.momentum={cfg.momentum} must be in [0, 1)")
    if not cfg.threshold >= 0:
        raise ConfigError(f"{key}.threshold={cfg.threshold} must be >= 0")
    for name in ("max_steps", "max_epochs", "batch_size"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise ConfigError(f"{key}.{name}={v} must be >= 1 (or null)")
    if cfg.max_steps is None and cfg.max_epochs is None:
        raise ConfigError(f"set {key}.max_steps or {key}.max_epochs: a run needs a budget")
    if cfg.diverge_above is not None and not cfg.diverge_above > 0:
        raise ConfigError(f"{key}.diverge_above={cfg.diverge_above} must be > 0 (or null: only NaN / inf)")
    if cfg.log_every < 1 or cfg.eval_every < 0:
        raise ConfigError(f"{key}.log_every must be >= 1 and {key}.eval_every >= 0")
    _validate_target(cfg, key)


def _validate_target(cfg: TrainConfig, key: str) -> None:
    metric, target = getattr(cfg, "target_metric", None), getattr(cfg, "target", None)
    if (metric is None) != (target is None):
        raise ConfigError(f"{key}.target_metric={metric} and {key}.target={target}: set both (e.g. "
                          f"{key}.target_metric=test_acc {key}.target=0.99) or neither")
    if metric is None:
        return
    if not isinstance(metric, str) or not metric or metric.startswith("eval/"):
        raise ConfigError(f"{key}.target_metric={metric!r} must name a metric of the evaluation, without "
                          f"eval/ (e.g. test_acc)")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
        raise ConfigError(f"{key}.target={target!r} must be a finite number")
    if cfg.eval_every < 1:
        raise ConfigError(f"{key}.target_metric={metric} is checked at evaluations: set {key}.eval_every >= 1")
    if cfg.threshold > 0:
        raise ConfigError(f"{key}.target_metric={metric} and {key}.threshold={cfg.threshold} are two stop "
                          f"criteria; set {key}.threshold=0 (one criterion per run)")


class Task(Protocol):
    n_members: int
    full_batch: bool

    def parameters(self) -> list[torch.Tensor]: ...      # optional attribute lr_scale: (B,) step multipliers
    def batches(self, epoch: int) -> Iterable[Any]: ...
    def loss(self, batch: Any) -> torch.Tensor: ...          # shape (n_members,)
    def evaluate(self) -> dict[str, torch.Tensor]: ...       # each (n_members,)
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Preempted(Exception):
    """Raised at a step boundary after a checkpoint was written because a signal arrived."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signal.Signals(signum).name} after writing a checkpoint")
        self.signum = signum


def _watched_signals() -> tuple[int, ...]:
    """SIGTERM (scancel, requeue, preemption), SIGUSR1 (SLURM --signal) and submitit's own signal
    before a time limit (SIGUSR2 unless $SUBMITIT_PREEMPT_SIGNAL names another)."""
    sigs = [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2]
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "").upper()
    if name:
        s = getattr(signal, name if name.startswith("SIG") else "SIG" + name, None)
        if s is not None and s not in sigs:
            sigs.append(s)
    return tuple(sigs)


class _Signals:
    """Record SIGTERM/SIGUSR1/SIGUSR2; the loop checkpoints at the next step boundary."""

    def __init__(self) -> None:
        self.pending: Optional[int] = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "_Signals":
        for s in _watched_signals():
            try:
                self.previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not in the main thread: no signal handling
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.pending = signum

    def __exit__(self, *exc: Any) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)

    def forward(self) -> None:
        """After checkpointing: hand the signal to the handler that was there before us."""
        signum, self.pending = self.pending, None
        prev = self.previous.get(signum)
        if callable(prev):
            prev(signum, None)
            return  # e.g. submitit logged or requeued; if it returns, keep training
        raise Preempted(signum)


class Trainer:
    def __init__(self, task: Task, cfg: TrainConfig, *, checkpoint: Optional[Path] = None,
                 log: Optional[Callable[[int, dict], None]] = None, bar: Any = None):
        if not isinstance(cfg, TrainConfig):  # a DictConfig: plain attributes are ~100x faster in the loop
            from omegaconf import OmegaConf

            cfg = TrainConfig(**OmegaConf.to_container(cfg, resolve=True))
        validate_train(cfg)
        self.task, self.cfg, self.ckpt_path, self._log, self.bar = task, cfg, checkpoint, log, bar
        self.params = task.parameters()
        B = task.n_members
        self.opt, self.sched = make_optimizer(self.params, cfg, getattr(task, "lr_scale", None)) if B == 1 \
            else (None, None)
        self.restarts = torch.zeros(B, dtype=torch.long)
        self._start: Any = None  # restart_on_divergence: the state every member started from
        if cfg.restart_on_divergence:
            self._start = _clone(task.state_dict()) if B == 1 else [p.detach().clone() for p in self.params]
        if B > 1 and getattr(cfg, "optimizer", "sgd") != "sgd":
            raise ConfigError(f"train.optimizer={cfg.optimizer!r}: batched members train with the masked SGD update")
        self.bufs = [torch.zeros_like(p) for p in self.params] if cfg.momentum > 0 and B > 1 else []
        self.epoch = 0
        self.step = 0
        self.steps = torch.zeros(B, dtype=torch.long)
        self.active = torch.ones(B, dtype=torch.bool)
        self.status = [STATUS_RUNNING] * B
        self.last_loss = torch.full((B,), float("nan"), dtype=torch.float64)
        self.ep_sum = torch.zeros(B, dtype=torch.float64)  # running sum of this epoch's batch losses
        self.n_batches = 0                                  # batches taken in this epoch
        self._active_dev: Optional[torch.Tensor] = None

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        opt = {} if self.opt is None else {"optim": self.opt.state_dict(),
                                           "sched": None if self.sched is None else self.sched.state_dict()}
        return {"task": self.task.state_dict(), "bufs": self.bufs, **opt, "epoch": self.epoch, "step": self.step,
                "steps": self.steps, "active": self.active, "status": list(self.status),
                "last_loss": self.last_loss, "ep_sum": self.ep_sum.cpu(), "n_batches": self.n_batches,
                **({"restarts": self.restarts, "start": self._start} if self._start is not None else {})}

    def save_checkpoint(self) -> None:
        """Write the checkpoint (with its sha256); the one it replaces stays as checkpoint.prev.pt."""
        if self.ckpt_path is None:
            return
        write_checkpoint(self.ckpt_path, self.state_dict())

    def try_resume(self) -> bool:
        """Resume from the checkpoint, or from the previous one if it cannot be read (moved aside, never
        deleted), or start over; says which in one line when a checkpoint was damaged."""
        if self.ckpt_path is None:
            return False
        damaged = []
        for path in (Path(self.ckpt_path), previous_checkpoint(Path(self.ckpt_path))):
            if not path.exists():
                continue
            try:
                st = read_checkpoint(path)
                if not {"task", "epoch", "step", "steps", "status"} <= set(st):
                    raise DamagedFile("it is not a trainer checkpoint")
            except DamagedFile as e:
                damaged.append(f"{path.name} is unreadable ({e}), moved to {move_aside(path).name}")
                continue
            if damaged:
                print(f"[ptft] {'; '.join(damaged)}; resuming from {path} (step {int(st['step'])})", flush=True)
            self._load(st)
            return True
        if damaged:
            print(f"[ptft] {'; '.join(damaged)}; no readable checkpoint left in {Path(self.ckpt_path).parent}, "
                  f"starting the run over", flush=True)
        return False

    def _load(self, st: dict[str, Any]) -> None:
        self.task.load_state_dict(st["task"])
        for b, v in zip(self.bufs, st["bufs"]):
            b.copy_(v)
        if self.opt is not None and "optim" in st:
            self.opt.load_state_dict(st["optim"])
            if self.sched is not None and st.get("sched") is not None:
                self.sched.load_state_dict(st["sched"])
        self.epoch, self.step = int(st["epoch"]), int(st["step"])
        self.steps, self.active = st["steps"], st["active"]
        self._active_dev = None
        self.status, self.last_loss = list(st["status"]), st["last_loss"]
        self.ep_sum, self.n_batches = st["ep_sum"], int(st["n_batches"])
        if self._start is not None and "restarts" in st:
            self.restarts, self._start = st["restarts"], st["start"]  # (the optimiser's state holds its lr)

    # ---- the loop ----------------------------------------------------------------------------
    def _mask(self, p: torch.Tensor, active_f: torch.Tensor) -> torch.Tensor:
        return active_f.reshape((self.task.n_members,) + (1,) * (p.dim() - 1))

    def lr_of(self) -> list[float]:
        """Each member's learning rate: train.lr / 10 ** (its restarts)."""
        return [self.cfg.lr / 10 ** int(r) for r in self.restarts]

    def _update(self, active_f: torch.Tensor) -> None:
        lr, mom = self.cfg.lr, self.cfg.momentum
        scale = getattr(self.task, "lr_scale", None)  # optional per-member step multiplier, shape (B,)
        if self.opt is not None:  # one model (e.g. a ResNet, a Transformer): torch.optim, foreach kernels
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            if self.sched is not None:
                self.sched.step()
            return
        if scale is not None:
            active_f = active_f * scale.to(active_f)
        if self._start is not None and bool(self.restarts.any()):  # per-member lr after restarts
            active_f, lr = active_f * torch.tensor(self.lr_of(), dtype=active_f.dtype, device=active_f.device), 1.0
        with torch.no_grad():
            for i, p in enumerate(self.params):
                g = p.grad
                if g is None:
                    continue
                if mom > 0:
                    buf = self.bufs[i]
                    buf.mul_(mom).add_(g)
                    g = buf
                p.sub_(g * (self._mask(p, active_f) * lr))
                p.grad = None

    def _diverged(self, loss: torch.Tensor) -> torch.Tensor:
        bad = ~torch.isfinite(loss)
        return bad if self.cfg.diverge_above is None else bad | (loss > self.cfg.diverge_above)

    def _on_divergence(self, mask: torch.Tensor) -> bool:
        """Stop the diverged members, or (restart_on_divergence) restart them from their start with
        lr / 10 and a fresh budget; returns whether any member restarted."""
        mask = mask & self.active
        if self._start is None or not bool(mask.any()):
            self._finish_member(mask, "diverged")
            return False
        spent = mask & (self.restarts >= MAX_RESTARTS)
        self._finish_member(spent, "diverged")
        mask = mask & ~spent
        idx = torch.nonzero(mask).flatten().tolist()
        if not idx:
            return False
        with torch.no_grad():
            if self.opt is not None:  # one model: back to its start, a fresh optimiser at the new lr
                self.restarts += 1
                self.task.load_state_dict(_clone(self._start))
                self.opt, self.sched = make_optimizer(self.params, self.cfg, getattr(self.task, "lr_scale", None),
                                                      lr=self.lr_of()[0])
            else:
                for b in idx:
                    self.restarts[b] += 1
                    for p, p0 in zip(self.params, self._start):
                        p[b] = p0[b]
                    for buf in self.bufs:
                        buf[b] = 0
        for b in idx:
            self.steps[b] = 0
            self.last_loss[b] = float("nan")
            print(f"[ptft] member {b} diverged; restarting it from its start with lr={self.lr_of()[b]:g} "
                  f"(restart {int(self.restarts[b])} of at most {MAX_RESTARTS})", flush=True)
        return True

    def _finish_member(self, mask: torch.Tensor, status: str) -> None:
        for b in torch.nonzero(mask & self.active).flatten().tolist():
            self.status[b] = status
        self.active &= ~mask
        self._active_dev = None

    def _active_on(self, like: torch.Tensor) -> torch.Tensor:
        """The active mask as floats on the loss's device, copied only when it changes (no per-step sync)."""
        if self._active_dev is None or self._active_dev.device != like.device or self._active_dev.dtype != like.dtype:
            self._active_dev = self.active.to(device=like.device, dtype=like.dtype)
        return self._active_dev

    def _log_row(self) -> None:
        if self._log is None:
            return
        act = self.active
        ll = self.last_loss
        row = {"epoch": self.epoch, "train_loss_mean": float(ll.nanmean()) if ll.numel() else float("nan"),
               "n_active": int(act.sum())}
        if ll.numel() > 1:
            row["train_loss_max"] = float(ll.max()) if torch.isfinite(ll).all() else float("nan")
            row["train_loss"] = ll.tolist()
        self._log(self.step, row)

    def _maybe_checkpoint(self, sig: _Signals) -> None:
        due = self.cfg.ckpt_every_s > 0 and time.monotonic() - self._last_ckpt > self.cfg.ckpt_every_s
        if sig.pending is None and not due:
            return
        self.save_checkpoint()
        self._last_ckpt = time.monotonic()
        if sig.pending is not None:
            sig.forward()

    def _end_epoch(self) -> None:
        task, cfg = self.task, self.cfg
        if not task.full_batch and self.n_batches:
            ep_loss = (self.ep_sum / self.n_batches).cpu()  # the one host sync of an epoch
            self.last_loss = torch.where(self.active, ep_loss, self.last_loss)
            self._on_divergence(self._diverged(ep_loss))
            self._finish_member(ep_loss < cfg.threshold, "converged")
        self.epoch += 1
        self.ep_sum = torch.zeros(self.task.n_members, dtype=torch.float64)
        self.n_batches = 0
        if cfg.eval_every and self.epoch % cfg.eval_every == 0 and (self._log is not None or cfg.target_metric):
            self._evaluate()

    def _evaluate(self) -> None:
        """One evaluation: logged (eval/<name>: the mean over members), and each member's target checked."""
        metrics = self.task.evaluate()
        if self._log is not None:
            self._log(self.step, {f"eval/{k}": v for k, v in _means(metrics).items()})
        name = self.cfg.target_metric
        if name is None:
            return
        if name not in metrics:
            raise ConfigError(f"target_metric={name!r} is not a metric of this task's evaluation; choose one of "
                              f"{sorted(metrics)}")
        v = torch.as_tensor(metrics[name], dtype=torch.float64).reshape(-1).cpu()
        self._finish_member(v <= self.cfg.target if lower_is_better(name) else v >= self.cfg.target, "reached")

    def run(self) -> dict[str, Any]:
        """Train until every member has stopped; returns per-member status, steps and last loss."""
        cfg, task = self.cfg, self.task
        self._last_ckpt = time.monotonic()
        if cfg.target_metric is not None and self.step == 0 and self.n_batches == 0:
            self._evaluate()  # a member that meets its target at the start takes no step
        with _Signals() as sig:
            while self.active.any():
                if cfg.max_epochs is not None and self.epoch >= cfg.max_epochs:
                    self._finish_member(self.active.clone(), "max_epochs")
                    break
                # a resumed mid-epoch checkpoint skips the batches it has already taken
                for batch in itertools.islice(task.batches(self.epoch), self.n_batches, None):
                    if self._out_of_steps():
                        break
                    loss = task.loss(batch)
                    if task.full_batch:  # check before the update: a converged member takes no step
                        ld = loss.detach().double().cpu()
                        if self._on_divergence(self._diverged(ld)):  # restarted members: loss at their start
                            loss = task.loss(batch)
                            ld = loss.detach().double().cpu()
                        self.last_loss = torch.where(self.active, ld, self.last_loss)
                        self._finish_member(ld < cfg.threshold, "converged")
                        if not self.active.any():
                            break
                    else:  # stays on the device: no host sync per step
                        self.ep_sum = self.ep_sum.to(loss.device) + loss.detach().double()
                    active_f = self._active_on(loss)
                    (loss * active_f).sum().backward()
                    self._update(active_f)
                    self.n_batches += 1
                    self.steps += self.active.long()
                    self.step += 1
                    if self.bar is not None:
                        self.bar.update(1)
                    if self.step % cfg.log_every == 0:
                        self._log_row()
                    self._maybe_checkpoint(sig)
                if self._out_of_steps() and self.active.any():
                    self._end_epoch()
                    self._finish_member(self.active.clone(), "max_steps")
                    break
                if self.active.any() or self.n_batches:
                    self._end_epoch()
        self._log_row()
        out = {"status": list(self.status), "steps": self.steps.tolist(), "epochs": self.epoch,
               "train_loss": self.last_loss.tolist()}
        if self._start is not None:
            out.update(restarts=self.restarts.tolist(), lr_final=self.lr_of())
        return out

    def _out_of_steps(self) -> bool:
        """Whether the step budget is spent: every active member has taken max_steps steps since it
        (re)started; with restarts, the members that are out of budget stop with status max_steps."""
        if self.cfg.max_steps is None:
            return False
        if self._start is None or not bool(self.restarts.any()):
            return self.step >= self.cfg.max_steps
        spent = self.active & (self.steps >= self.cfg.max_steps)
        if bool(spent.all()) or not bool(self.active.any()):
            return True
        self._finish_member(spent, "max_steps")
        return False


def derived_seed(*parts: int) -> int:
    """A 63-bit seed that is a stable function of the integer parts (e.g. (seed, epoch))."""
    import numpy as np

    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


def make_optimizer(params: list[torch.Tensor], cfg: TrainConfig, lr_scale: Optional[torch.Tensor] = None,
                   lr: Optional[float] = None
                   ) -> tuple[torch.optim.Optimizer, Optional[torch.optim.lr_scheduler.LambdaLR]]:
    """The torch.optim optimiser (and warm-up schedule) of a single-model task; see OptimTrainConfig.

    SGD with foreach kernels reproduces the suite's former hand-written fused update bit for bit."""
    lr = float(cfg.lr if lr is None else lr) * (1.0 if lr_scale is None else float(lr_scale.reshape(-1)[0]))
    wd = float(getattr(cfg, "weight_decay", 0.0))
    if getattr(cfg, "optimizer", "sgd") == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(getattr(cfg, "betas")),
                                                       weight_decay=wd, foreach=True)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=float(cfg.momentum), weight_decay=wd, foreach=True)
    warm = int(getattr(cfg, "warmup_steps", 0))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm)) if warm > 0 else None
    return opt, sched


def _means(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(torch.as_tensor(v, dtype=torch.float64).mean()) for k, v in metrics.items()}


def _clone(tree: Any) -> Any:
    """A deep copy of a (nested) state dict's tensors."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_clone(v) for v in tree)
    return tree
