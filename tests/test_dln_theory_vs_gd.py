"""Gradient descent through the real trainer converges to the implicit-bias solution of docs/paper.md
section 3 (Theorem 4.1) in each of the four regimes, and STL does not depend on lambda."""

import numpy as np
import pytest

from ptft.dln.config import DLNConfig
from ptft.dln.task import DLNTask, member_data, start_state
from ptft.dln.theory import implicit_bias_solution, k_finetune
from ptft.train.trainer import TrainConfig, Trainer

REGIMES = {  # docs/paper.md section 6, at c = 1e-3
    "II lazy, PT-dependent": (0.0, 0.0),
    "IV rich, PT-dependent": (-0.99, 0.0),
    "I rich, PT-independent": (-0.999999, 1e-6),
    "III lazy, PT-independent": (0.0, 10.0),
}


def gd_solution(lam, gamma, *, lr, mode="ptft", dim=60, alpha=0.3, c=1e-3, threshold=1e-9, seed=0, omega=1.0):
    d = DLNConfig(dim=dim, alpha=alpha, mode=mode, c_pt=c, lam_pt=lam, gamma=gamma, rho_pt=0.1, rho_ft=0.1,
                  omega=omega, a_pt=1.0, noise=0.0)
    m = member_data(d, seed)
    task = DLNTask([m.X], [m.y], start_state(d, [m]))
    if gamma >= 5:  # c_FT >= gamma^2 / 2: lr 0.5 is above the stability limit at this n (dln.lr_cap)
        task.cap_lr(lr)
    out = Trainer(task, TrainConfig(lr=lr, threshold=threshold, max_steps=5_000_000, log_every=10**9)).run()
    assert out["status"] == ["converged"]
    return task.beta().detach().numpy()[0], m


@pytest.mark.slow
@pytest.mark.parametrize("regime", list(REGIMES))
def test_gd_converges_to_the_implicit_bias_solution(regime):
    lam, gamma = REGIMES[regime]
    b_gd, m = gd_solution(lam, gamma, lr=0.5)
    b_th = implicit_bias_solution(m.X, m.y, k_finetune(m.beta_pt, 1e-3, lam, gamma))
    rel = np.abs(b_gd - b_th).max() / np.abs(b_th).max()
    print(f"{regime}: max|b_GD - b_theory| / max|b_theory| = {rel:.2e}")
    assert rel < 1e-3


@pytest.mark.slow
def test_gd_gap_to_gradient_flow_shrinks_with_the_learning_rate():
    lam, gamma = REGIMES["II lazy, PT-dependent"]
    gaps = []
    for lr in (0.5, 0.25):
        b_gd, m = gd_solution(lam, gamma, lr=lr, threshold=1e-13)
        b_th = implicit_bias_solution(m.X, m.y, k_finetune(m.beta_pt, 1e-3, lam, gamma))
        gaps.append(np.abs(b_gd - b_th).max() / np.abs(b_th).max())
    print("gap at lr 0.5, 0.25:", gaps)
    assert gaps[1] < 0.75 * gaps[0]


def test_stl_does_not_depend_on_lambda():
    betas = [gd_solution(lam, 0.0, lr=0.5, mode="stl", c=1e-2, omega=0.0, threshold=1e-8)[0]
             for lam in (-0.9, 0.0, 0.9)]
    scale = np.abs(betas[1]).max()
    assert np.abs(betas[0] - betas[1]).max() < 1e-9 * scale
    assert np.abs(betas[2] - betas[1]).max() < 1e-9 * scale
