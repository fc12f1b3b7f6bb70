"""Shared-X engine: full-batch gradient descent for many DLN members, grouped by their inputs X.

Members that share X (same seed, n and D; they differ in the teacher, hence y, and in the init) are
stacked as the rows of (K, D) factor matrices, so one step of a group is two matrix-matrix products

    r = beta X^T - Y   (K, n),        g = (2 lr_k / n) r X   (K, D)

instead of 2 K matrix-vector products: X is read twice per step for the whole group, not twice per
member. A member that stops (converged, diverged, max_steps) is removed from its group's matrices
(compaction), so a slow member does not make the fast ones pay and vice versa.

The stopping rules are the trainer's for a full-batch task (ptft.train.trainer): at each iteration
the loss is checked *before* the update; loss < threshold -> converged, NaN/inf -> diverged, a
member still running when its iteration count reaches max_steps -> max_steps. Only the
summation order of the products differs from a member trained alone, so results agree to float
rounding, not bit for bit.

On CPU the stop check reads the losses every step (cheap), and each group runs a block of
iterations while its X is in cache before the next group's turn (`SharedXEngine.run`). On a GPU the
check runs on the device (a stopped member is masked out of the update) and the host compacts every
`sync_every` steps, so there is no host sync per step. On CPU, a group of few members whose X does not fit in the cache
is stepped in one fused pass over row blocks of X (each block is read from memory once and used for
both products while it is in cache).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Hashable, Optional

import numpy as np
import torch

from ptft.dln.model import DLNState

CONVERGED, DIVERGED, MAX_STEPS, RUNNING = "converged", "diverged", "max_steps", "running"
_CODES = {1: CONVERGED, 2: DIVERGED}


@dataclass
class Member:
    """One trajectory: its X group, targets y (n,), start factors (each (D,)) and step multiplier."""
    group: Hashable
    y: np.ndarray
    state: DLNState
    lr_scale: float = 1.0
    steps: int = 0            # updates already taken (a resumed member); also its iteration count


class _Group:
    """The running members that share one X, compacted: row j of every matrix is member ids[j]."""

    def __init__(self, X: torch.Tensor, ids: list[int], members: list[Member], lr: float, kw: dict):
        self.X, self.n = X, X.shape[0]
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.w = [torch.as_tensor(np.stack([getattr(members[i].state, f) for i in ids]), **kw).contiguous()
                  for f in DLNState._fields]
        self.Y = torch.as_tensor(np.stack([members[i].y for i in ids]), **kw)
        self.coef = torch.tensor([lr * members[i].lr_scale * 2.0 / self.n for i in ids], **kw).unsqueeze(1)
        self.start = torch.tensor([members[i].steps for i in ids], dtype=torch.long)
        K = len(ids)
        self.alive = torch.ones(K, dtype=torch.bool, device=X.device)
        self.code = torch.zeros(K, dtype=torch.int8, device=X.device)     # 0 running, 1 converged, 2 diverged
        self.stop_t = torch.zeros(K, dtype=torch.long, device=X.device)   # engine iteration of the stop
        self.loss = torch.full((K,), math.nan, **kw)

    def forward(self) -> torch.Tensor:
        wp, wm, vp, vm = self.w
        beta = vp * wp - vm * wm
        r = torch.addmm(self.Y, beta, self.X.T, beta=-1.0)  # beta X^T - Y
        self.loss = (r * r).mean(dim=1)
        return r

    def _fused(self, rows: int) -> torch.Tensor:
        """One pass over X in row blocks that stay in cache: the loss and the unscaled gradient r X of
        every member, reading X from memory once per step instead of twice."""
        wp, wm, vp, vm = self.w
        beta = vp * wp - vm * wm
        g = torch.zeros_like(beta)
        loss = torch.zeros(beta.shape[0], dtype=beta.dtype, device=beta.device)
        for i in range(0, self.n, rows):
            Xc = self.X[i:i + rows]
            r = torch.addmm(self.Y[:, i:i + rows], beta, Xc.T, beta=-1.0)
            loss += (r * r).sum(dim=1)
            g.addmm_(r, Xc)
        self.loss = loss / self.n
        return g

    def step(self, t: int, threshold: float, host_check: bool, fused_rows: int = 0) -> bool:
        """Check the loss, then update the members still running; True if some member stopped."""
        if fused_rows and host_check:  # X does not fit in cache and few members share it
            g = self._fused(fused_rows)
            vals = self.loss.tolist()
            stop = [j for j, v in enumerate(vals) if v < threshold or not math.isfinite(v)]
            for j in stop:
                self.code[j] = 1 if vals[j] < threshold else 2
                self.stop_t[j] = t
            g = g * self.coef
            if stop:
                self.alive[stop] = False
                g = torch.where(self.alive.unsqueeze(1), g, 0.0)
            self._update(g)
            return bool(stop)
        r = self.forward()
        if host_check:  # CPU: read K numbers, compact right away (no masking needed)
            vals = self.loss.tolist()
            stop = [j for j, v in enumerate(vals) if v < threshold or not math.isfinite(v)]
            if stop:
                for j in stop:
                    self.code[j] = 1 if vals[j] < threshold else 2
                    self.stop_t[j] = t
                self.alive[stop] = False
            rs = r * self.coef
            if stop:  # a stopped member keeps its factors (no 0 * inf = NaN from a diverged residual)
                rs = torch.where(self.alive.unsqueeze(1), rs, 0.0)
            stopped = bool(stop)
        else:  # device: record stops on the device, mask them out of the update
            bad = ~torch.isfinite(self.loss)
            newly = self.alive & (bad | (self.loss < threshold))
            self.code = torch.where(newly, torch.where(bad, 2, 1).to(self.code), self.code)
            self.stop_t = torch.where(newly, t, self.stop_t)
            self.alive = self.alive & ~newly
            rs = torch.where(self.alive.unsqueeze(1), r * self.coef, 0.0)
            stopped = False
        self._update(rs @ self.X)
        return stopped

    def _update(self, g: torch.Tensor) -> None:
        """One gradient step given g = dL/dbeta * lr per member (rows of stopped members are 0)."""
        wp, wm, vp, vm = self.w
        dwp, dwm, dvp, dvm = g * vp, g * vm, g * wp, g * wm
        wp.sub_(dwp), wm.add_(dwm), vp.sub_(dvp), vm.add_(dvm)

    def keep(self, mask: torch.Tensor) -> None:
        """Compaction: keep only the rows where mask (on the host) is True."""
        dev = mask.to(self.X.device)
        self.w = [w[dev].contiguous() for w in self.w]
        self.Y, self.coef, self.alive, self.code, self.stop_t, self.loss = (
            self.Y[dev], self.coef[dev], self.alive[dev], self.code[dev], self.stop_t[dev], self.loss[dev])
        self.ids, self.start = self.ids[mask], self.start[mask]


class SharedXEngine:
    """Train `members` (grouped by `Member.group`, whose inputs are `X[group]`) until each stops."""

    def __init__(self, X: dict[Hashable, np.ndarray], members: list[Member], *, lr: float, threshold: float,
                 max_steps: Optional[int], device: str = "cpu", sync_every: Optional[int] = None,
                 fused_min_bytes: float = 16e6, fused_max_members: int = 8, fused_rows: int = 64,
                 block: int = 64):
        kw = dict(dtype=torch.float64, device=device)
        self.threshold, self.max_steps = float(threshold), max_steps
        self.host_check = (sync_every or (1 if torch.device(device).type == "cpu" else 50)) == 1
        self.sync_every = sync_every or (1 if self.host_check else 50)
        M = len(members)
        D = members[0].state.wp.shape[-1] if M else 0
        self.final = [np.zeros((M, D)) for _ in DLNState._fields]   # factors of stopped members
        self.status = [RUNNING] * M
        self.steps = np.array([m.steps for m in members], dtype=np.int64)
        self.last_loss = np.full(M, math.nan)
        self.t = 0                                                   # iterations done by this engine
        self.groups: list[_Group] = []
        by_group: dict[Hashable, list[int]] = {}
        for i, m in enumerate(members):
            by_group.setdefault(m.group, []).append(i)
        for key, ids in by_group.items():
            Xg = torch.as_tensor(X[key], **kw)
            self.groups.append(_Group(Xg, ids, members, lr, kw))
        self.flops = 0.0                                             # multiply-adds x 2 of the products
        # CPU: a group whose X is larger than the cache (fused_min_bytes) and that has at most
        # fused_max_members running members is stepped in one pass over X (measured by
        # scripts/bench_dln.py: 1.2-1.8x at D = 5000 for 1-8 members; slower when X fits in cache)
        self.fused = (fused_min_bytes, fused_max_members, fused_rows)
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.block = block                                           # CPU: iterations per group in a row

    @property
    def n_running(self) -> int:
        return sum(len(g.ids) for g in self.groups)

    def _retire(self, g: _Group, mask: torch.Tensor, status: Optional[str] = None) -> None:
        """Copy the members under `mask` (host bool) out of group g, with their status and steps."""
        if not bool(mask.any()):
            return
        ids = g.ids[mask].numpy()
        dev = mask.to(g.X.device)
        for k, w in enumerate(g.w):
            self.final[k][ids] = w[dev].cpu().numpy()
        code = g.code[dev].cpu().numpy()
        stop_t = g.stop_t[dev].cpu().numpy()
        self.last_loss[ids] = g.loss[dev].cpu().numpy()
        for j, i in enumerate(ids):
            self.status[i] = status or _CODES[int(code[j])]
            self.steps[i] += self.t if status == MAX_STEPS else int(stop_t[j])
        g.keep(~mask)

    def _compact(self) -> None:
        for g in self.groups:
            self._retire(g, ~g.alive.cpu())
        self.groups = [g for g in self.groups if len(g.ids)]

    def _budget_out(self) -> None:
        """Members whose iteration count reached max_steps stop as max_steps (after a last evaluation)."""
        self._compact()
        for g in self.groups:
            out = g.start + self.t >= self.max_steps
            if bool(out.any()):
                g.forward()
                self._retire(g, out, MAX_STEPS)
        self.groups = [g for g in self.groups if len(g.ids)]

    def run(self, on_step: Optional[Callable[["SharedXEngine"], None]] = None, every: Optional[int] = None) -> None:
        """Step every group until all members have stopped; `on_step(self)` after each block of iterations
        (logging, checkpoints: call `snapshot()` there). Block ends fall on every multiple of `every`
        (e.g. the log interval), if given.

        On CPU the groups are independent, so when every group's X fits in the cache (below fused_min_bytes)
        each is stepped through a block of `block` iterations before the next one: its X stays in cache for
        the block instead of all the groups' inputs being streamed from memory every iteration (measured:
        ~2x per step for 5 groups of 4 MB at D = 1000, scripts/bench_dln.py). The order does not change any member's arithmetic: results are the same
        bits as stepping all groups in lockstep. On a device the groups run in lockstep (block 1)."""
        if every is not None and every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        fb, fk, fr = self.fused
        # blocks pay only when a group's X fits in the cache (fused_min_bytes, as for the fused pass); with
        # larger X they would only delay on_step (signals, checkpoints) by block x (number of groups) steps
        small = all(g.X.numel() * g.X.element_size() < fb for g in self.groups)
        block = self.block if self.host_check and small else 1
        next_cap = (min(self.max_steps - int(g.start.max()) for g in self.groups) if self.groups else 0) \
            if self.max_steps is not None else None
        while self.groups:
            if next_cap is not None and self.t >= next_cap:
                self._budget_out()
                if not self.groups:
                    break
                next_cap = self.max_steps - max(int(g.start.max()) for g in self.groups)
            end = self.t + block if every is None else min(self.t + block, (self.t // every + 1) * every)
            if next_cap is not None:
                end = min(end, next_cap)
            for g in self.groups:
                for t in range(self.t, end):
                    rows = fr if (g.X.numel() * 8 >= fb and len(g.ids) <= fk) else 0
                    stopped = g.step(t, self.threshold, self.host_check, rows)
                    self.flops += 4.0 * g.n * g.X.shape[1] * len(g.ids)
                    if stopped:  # compact now: a stopped member must not be checked again
                        self._retire(g, ~g.alive.cpu())
                        if not len(g.ids):
                            break
            self.t = end
            self.groups = [g for g in self.groups if len(g.ids)]
            if not self.host_check and self.t % self.sync_every == 0:
                self._compact()
            if on_step is not None:
                on_step(self)
        if not self.host_check:
            self._compact()

    def snapshot(self, factors: bool = True) -> tuple[Optional[list[np.ndarray]], np.ndarray, list[str], np.ndarray]:
        """(factors [wp, wm, vp, vm] each (M, D) or None, steps, status, last checked loss) of every
        member now: running members at their current step (a checkpoint), stopped ones as they stopped."""
        if not self.host_check:
            self._compact()
        final = [f.copy() for f in self.final] if factors else None
        steps, loss = self.steps.copy(), self.last_loss.copy()
        for g in self.groups:
            ids = g.ids.numpy()
            if factors:
                for k, w in enumerate(g.w):
                    final[k][ids] = w.cpu().numpy()
            steps[ids] += self.t
            loss[ids] = g.loss.cpu().numpy()
        return final, steps, list(self.status), loss

    def train_mse(self) -> np.ndarray:
        """Train MSE of every stopped member at its final factors (the run must have ended)."""
        return self.last_loss.copy()
