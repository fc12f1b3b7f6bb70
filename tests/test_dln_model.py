"""DLN initialisations and gradient descent against docs/paper.md sections 1-2 (closed forms)."""
import numpy as np
import pytest
import torch

from ptft.dln.model import beta, c_finetune, finetune_init, init_state, invariants, pt_end_state
from ptft.dln.task import DLNTask
from ptft.dln.teachers import make_inputs
from ptft.train.trainer import TrainConfig, Trainer

LAMS = [-1.0, -0.99, -0.5, 0.0, 0.3, 0.99, 1.0]
BETAS = np.array([-50.0, -1.0, -1e-3, 0.0, 1e-4, 0.7, 1.0, 2e3])


@pytest.mark.parametrize("c", [1e-6, 1e-3, 1.0])
@pytest.mark.parametrize("lam", LAMS)
def test_init_state_has_zero_beta_and_the_invariants(c, lam):
    s = init_state(c, lam, (3, 5))
    assert np.all(beta(s) == 0)
    ci, li = invariants(s)
    np.testing.assert_allclose(ci, c, rtol=1e-14)
    np.testing.assert_allclose(li, lam * c, rtol=1e-12, atol=1e-15 * c)
    # lambda is the same on both pathways
    np.testing.assert_allclose(s.wm**2 - s.vm**2, lam * c, rtol=1e-12, atol=1e-15 * c)


@pytest.mark.parametrize("c", [1e-6, 1e-3, 0.1, 1.0])
@pytest.mark.parametrize("lam", LAMS)
def test_pt_end_state_reproduces_teacher_and_invariants(c, lam):
    s = pt_end_state(BETAS, c, lam)
    np.testing.assert_allclose(beta(s), BETAS, rtol=1e-9, atol=1e-12 * max(1.0, c))
    ci, li = invariants(s)
    # c and lambda are differences of products of size |beta|: float64 keeps them to ~1e-15 |beta|
    tol = 1e-8 * c + 1e-14 * np.abs(BETAS)
    for name, got, want in (("c", ci, c), ("lambda+", li, lam * c), ("lambda-", s.wm**2 - s.vm**2, lam * c)):
        assert np.all(np.abs(got - want) <= tol), (name, got - want, tol)


@pytest.mark.parametrize("lam", LAMS)
@pytest.mark.parametrize("gamma", [0.0, 0.3, 10.0])
def test_finetune_reinit_gives_paper_c_ft(lam, gamma):
    c = 1e-3
    s = finetune_init(pt_end_state(BETAS, c, lam), gamma)
    assert np.all(beta(s) == 0)
    c_ft, _ = invariants(s)
    paper = (c + lam * c) * (1 + np.sqrt(1 + (BETAS / c) ** 2)) + gamma**2 / 2
    np.testing.assert_allclose(c_ft, paper, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(c_finetune(BETAS, c, lam) + gamma**2 / 2, paper, rtol=1e-12, atol=1e-15)


def test_gradient_descent_invariants_follow_the_discrete_identity():
    """One GD step multiplies c and lambda of every coordinate by exactly (1 - lr^2 g_i^2), so the
    drift is second order in the learning rate and vanishes in the gradient-flow limit."""
    rng = np.random.default_rng(0)
    D, n = 40, 15
    X, bstar = make_inputs(n, D, rng), rng.normal(size=D)
    s0 = finetune_init(pt_end_state(rng.normal(size=(1, D)), 1e-2, -0.3), 0.5)
    task = DLNTask([X], [X @ bstar], s0)
    c0, l0 = invariants(task.state())
    lr = 0.5
    task.loss().sum().backward()
    g_beta = (2.0 / n) * X.T @ (X @ beta(s0)[0] - X @ bstar)
    Trainer(task, TrainConfig(lr=lr, max_steps=1))._update(torch.ones(1, dtype=torch.float64))
    c1, l1 = invariants(task.state())
    np.testing.assert_allclose((c1 / c0)[0], 1 - lr**2 * g_beta**2, rtol=1e-12)
    np.testing.assert_allclose((l1 / l0)[0], 1 - lr**2 * g_beta**2, rtol=1e-12)


def test_invariant_drift_shrinks_with_the_learning_rate(tmp_path):
    from ptft import app
    from ptft.dln.main import run_job

    drifts = []
    for lr in (0.5, 0.05):
        cfg = app.compose("dln", [f"store.root={tmp_path}", "wandb.mode=disabled", "dln.dim=200", "dln.alpha=0.3",
                                  f"train.lr={lr}"])
        drifts.append(run_job(cfg)[1]["c_drift"])
    # drift ~ lr * integral of g^2 dt along the flow: ten times smaller steps, about ten times less drift
    print("c drift at lr 0.5 and 0.05:", drifts)
    assert drifts[1] < drifts[0] / 5


def test_written_out_gradient_matches_autograd():
    from ptft.dln.task import _MSE

    rng = np.random.default_rng(3)
    B, n, D = 3, 7, 11
    X = torch.as_tensor(rng.normal(size=(B, n, D)))
    y = torch.as_tensor(rng.normal(size=(B, n)))
    ws = [torch.as_tensor(rng.normal(size=(B, D)), dtype=torch.float64).requires_grad_(True) for _ in range(4)]
    assert torch.autograd.gradcheck(lambda *w: _MSE.apply(*w, X, y), ws)
    wp, wm, vp, vm = ws
    ref = ((torch.einsum("bnd,bd->bn", X, vp * wp - vm * wm) - y) ** 2).mean(1)
    assert torch.allclose(_MSE.apply(*ws, X, y), ref, rtol=1e-14)
