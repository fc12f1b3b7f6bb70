"""Batched DLN simulation: B independent members (seeds) in one set of (B, D) tensors.

Each member draws its own teachers, inputs and noise from its seed alone, so a member's
trajectory is the same whether it trains alone or in a batch (up to float rounding).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch

from ptft.dln.config import n_ft, n_pt
from ptft.dln.model import DLNState, finetune_init, finetune_rescale, init_state, pt_end_state
from ptft.dln.teachers import make_inputs, make_ll_teachers, make_teachers

# independent random streams of one member, derived from its seed
_TEACHER, _X_FT, _NOISE_FT, _X_PT, _NOISE_PT, _X_TEST = range(6)


def member_rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0xD1A6, stream]))


@dataclass
class MemberData:
    seed: int
    beta_pt: np.ndarray
    beta_star: np.ndarray
    X: np.ndarray
    y: np.ndarray


def ft_inputs(d: Any, seed: int) -> np.ndarray:
    """The FT inputs X of a member: a function of (seed, n, D, dln.inputs) only, shared by every
    configuration (teacher, init) at the same seed, sample count, dim and input kind."""
    return make_inputs(n_ft(d), d.dim, member_rng(seed, _X_FT), d.inputs)


def teachers(d: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(beta_PT, beta_FT) of a member: docs/paper.md section 4 (teacher=paper) or LL's (teacher=ll)."""
    rng = member_rng(seed, _TEACHER)
    if d.teacher == "ll":
        return make_ll_teachers(d.dim, d.k_pt, d.k_ft, d.overlap, rng)
    return make_teachers(d.dim, d.rho_pt, d.rho_ft, d.omega, d.a_pt, rng)


def member_data(d: Any, seed: int, X: np.ndarray | None = None) -> MemberData:
    """Teachers and FT training data of one member, per docs/paper.md section 4 (`X`: ft_inputs(d, seed),
    if already drawn)."""
    beta_pt, beta_star = teachers(d, seed)
    n = n_ft(d)
    X = ft_inputs(d, seed) if X is None else X
    y = X @ beta_star + d.noise * member_rng(seed, _NOISE_FT).standard_normal(n)
    return MemberData(seed, beta_pt, beta_star, X, y)


def pt_data(d: Any, m: MemberData) -> tuple[np.ndarray, np.ndarray]:
    """Finite PT data (dln.pt=train): n_PT (dln.n_pt, else alpha_pt D) samples of the PT teacher."""
    n = n_pt(d)
    X = make_inputs(n, d.dim, member_rng(m.seed, _X_PT), d.inputs)
    return X, X @ m.beta_pt + d.noise * member_rng(m.seed, _NOISE_PT).standard_normal(n)


def test_mse(beta_err: np.ndarray, n_test: int, chunk: int = 2048, inputs: str = "gaussian") -> np.ndarray:
    """Mean squared prediction error of each row of beta_err (B, D) on n_test fresh noiseless samples.

    The test inputs are one fixed set per dimension D (independent of every training stream), shared
    by all members, so a member's number does not depend on the batch it was trained in.
    """
    beta_err = np.atleast_2d(beta_err)
    rng = np.random.default_rng(np.random.SeedSequence([0xD1A6, _X_TEST, beta_err.shape[1]]))
    total, done = np.zeros(beta_err.shape[0]), 0
    while done < n_test:
        k = min(chunk, n_test - done)
        total += np.sum((make_inputs(k, beta_err.shape[1], rng, inputs) @ beta_err.T) ** 2, axis=0)
        done += k
    return total / n_test


@functools.lru_cache(maxsize=2)
def test_inputs(dim: int, n_test: int, chunk: int = 2048, inputs: str = "gaussian") -> np.ndarray:
    """The fixed test inputs of test_mse as one (n_test, dim) matrix (the same draws), kept for reuse."""
    rng = np.random.default_rng(np.random.SeedSequence([0xD1A6, _X_TEST, dim]))
    return np.concatenate([make_inputs(min(chunk, n_test - i), dim, rng, inputs) for i in range(0, n_test, chunk)])


def start_state(d: Any, members: list[MemberData], pt_states: DLNState | None = None) -> DLNState:
    """The state fine-tuning (or STL) starts from, stacked over members: (B, D) arrays."""
    B, D = len(members), d.dim
    if d.mode == "stl":
        return init_state(d.c_pt, d.lam_pt, (B, D))
    if pt_states is None:
        pt_states = pt_end_state(np.stack([m.beta_pt for m in members]), d.c_pt, d.lam_pt)
    if d.ft_reinit == "scale":
        return finetune_rescale(pt_states, d.w_rescale, d.readout_const)
    return finetune_init(pt_states, d.gamma)


class _MSE(torch.autograd.Function):
    """Per-member mean squared error of beta = vp wp - vm wm, with the gradient written out:
    dL/dbeta = (2/n) X^T r, then the chain rule through the four factors (2x faster than autograd)."""

    @staticmethod
    def forward(ctx, wp, wm, vp, vm, X, y):
        beta = vp * wp - vm * wm
        r = torch.baddbmm(y.unsqueeze(-1), X, beta.unsqueeze(-1), beta=-1.0).squeeze(-1)  # X beta - y
        ctx.save_for_backward(wp, wm, vp, vm, X, r)
        return (r * r).mean(dim=1)

    @staticmethod
    def backward(ctx, grad):
        wp, wm, vp, vm, X, r = ctx.saved_tensors
        g = torch.bmm((r * (grad * (2.0 / r.shape[1])).unsqueeze(-1)).unsqueeze(1), X).squeeze(1)
        return g * vp, -g * vm, g * wp, -g * wm, None, None


class DLNTask:
    """Full-batch gradient descent on the per-member mean squared error, float64."""

    full_batch = True

    def __init__(self, X: list[np.ndarray], y: list[np.ndarray], state: DLNState, device: str = "cpu"):
        kw = dict(dtype=torch.float64, device=device)
        self.X = torch.as_tensor(np.stack(X), **kw)          # (B, n, D)
        self.y = torch.as_tensor(np.stack(y), **kw)          # (B, n)
        self.n_members = self.X.shape[0]
        self.w = {k: torch.as_tensor(getattr(state, k), **kw).clone().requires_grad_(True) for k in DLNState._fields}

    def parameters(self) -> list[torch.Tensor]:
        return list(self.w.values())

    def stable_lr(self) -> torch.Tensor:
        """Per member, 1 / (largest Hessian eigenvalue in parameter space at the start) =
        n / (4 max_i c_i sigma_max(X)^2): gradient descent diverges above twice this step. With
        w+ = w-, v+ = v- the Jacobian of beta_i has squared norm 2 c_i and the MSE's Hessian in beta
        is (2/n) X^T X."""
        w = self.w
        c = (w["wp"] * w["wm"] + w["vp"] * w["vm"]).detach().abs().amax(dim=1)
        s2 = torch.linalg.matrix_norm(self.X, ord=2) ** 2
        return self.X.shape[1] / (4.0 * c * s2)

    def cap_lr(self, lr: float) -> None:
        """Scale each member's step to min(lr, stable_lr) (the trainer multiplies updates by lr_scale)."""
        self.lr_scale = torch.clamp(self.stable_lr() / lr, max=1.0)

    def beta(self) -> torch.Tensor:
        w = self.w
        return w["vp"] * w["wp"] - w["vm"] * w["wm"]

    def batches(self, epoch: int) -> Iterable[None]:
        return (None,)

    def loss(self, batch: Any = None) -> torch.Tensor:
        w = self.w
        return _MSE.apply(w["wp"], w["wm"], w["vp"], w["vm"], self.X, self.y)

    def evaluate(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"train_mse": self.loss()}

    def state(self) -> DLNState:
        return DLNState(*(self.w[k].detach().cpu().numpy() for k in DLNState._fields))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.w.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, v in self.w.items():
                v.copy_(state[k])
