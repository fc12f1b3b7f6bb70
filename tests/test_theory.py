"""Tests of ptft.dln.theory: the penalty q_k, k_FT, the min-penalty interpolator, l-order, PD, regimes."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from ptft.dln import model
from ptft.dln.theory import (ConvergenceError, finetune_init, implicit_bias_solution, k_finetune, l_order,
                             pt_dependence, pt_end_state, q_k, q_k_prime, q_k_second, regime_of, sqrt_k_finetune)


def q_formula(z, k):
    """docs/paper.md section 3, written literally (fine where it does not cancel)."""
    s = np.sqrt(k)
    return (s / 4) * (1 - np.sqrt(1 + 4 * z**2 / k) + (2 * z / s) * np.arcsinh(2 * z / s))


# ---------------------------------------------------------------- q_k


@pytest.mark.parametrize("k", [1e-4, 0.3, 1.0, 7.0, 1e3])
def test_q_matches_paper_formula(k):
    z = np.linspace(-5, 5, 101)
    np.testing.assert_allclose(q_k(z, k), q_formula(z, k), rtol=1e-10, atol=1e-12)
    assert q_k(0.0, k) == 0.0
    np.testing.assert_allclose(q_k(z, k), q_k(-z, k), rtol=0, atol=0)  # even


@pytest.mark.parametrize("k", [1e-6, 0.5, 4.0, 1e4])
def test_q_derivatives_by_finite_differences(k):
    z = np.array([-3.0, -0.7, -0.01, 0.02, 0.4, 2.5])
    h = 1e-5 * np.maximum(np.abs(z), 1e-2)
    fd1 = (q_k(z + h, k) - q_k(z - h, k)) / (2 * h)
    fd2 = (q_k_prime(z + h, k) - q_k_prime(z - h, k)) / (2 * h)
    np.testing.assert_allclose(q_k_prime(z, k), np.arcsinh(2 * z / np.sqrt(k)) / 2, rtol=1e-14)
    np.testing.assert_allclose(q_k_second(z, k), 1 / np.sqrt(k + 4 * z**2), rtol=1e-14)
    np.testing.assert_allclose(fd1, q_k_prime(z, k), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(fd2, q_k_second(z, k), rtol=1e-6)


def test_q_small_k_is_l1_like_and_large_k_is_weighted_l2():
    z = np.array([0.01, 0.3, 1.0, 5.0])
    # small k: q ~ (|z|/2)(log(4|z|/sqrt k) - 1) + sqrt(k)/4
    k = 1e-16
    lead = 0.5 * z * (np.log(4 * z / np.sqrt(k)) - 1) + np.sqrt(k) / 4  # next term is O(k / z^2)
    np.testing.assert_allclose(q_k(z, k), lead, rtol=1e-12)
    # ... so q grows like |z| (l1) up to a log: log-log slope over 2.7 decades close to 1
    slope = np.log(q_k(z[-1], k) / q_k(z[0], k)) / np.log(z[-1] / z[0])
    assert 1.0 < slope < 1.1
    # large k: q ~ z^2 / (2 sqrt k), relative correction -z^2/(3k)
    k = 1e12
    np.testing.assert_allclose(q_k(z, k), z**2 / (2 * np.sqrt(k)), rtol=1e-10)
    # no cancellation: the value stays positive and finite for extreme k
    assert np.all(q_k(z, 1e-300) > 0) and np.all(np.isfinite(q_k(z, 1e-300)))
    assert np.all(q_k(z, 1e300) > 0)


# ---------------------------------------------------------------- k_FT


@pytest.mark.parametrize("lam", [-0.99, -0.5, 0.0, 0.5, 1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.3, 2.0])
def test_k_finetune_equals_4_cft_squared_from_the_model_states(lam, gamma):
    b = np.array([-30.0, -1.0, -1e-3, 0.0, 0.2, 1.0, 7.0])
    c = 0.4
    st = finetune_init(pt_end_state(b, c, lam), gamma)
    np.testing.assert_allclose(model.beta(pt_end_state(b, c, lam)), b, atol=1e-10)
    c_ft, _ = model.invariants(st)
    np.testing.assert_allclose(k_finetune(b, c, lam, gamma), 4 * c_ft**2, rtol=1e-10)
    np.testing.assert_allclose(sqrt_k_finetune(b, c, lam, gamma), 2 * (model.c_finetune(b, c, lam) + gamma**2 / 2),
                               rtol=1e-12)
    assert pt_end_state is model.pt_end_state and finetune_init is model.finetune_init


# ---------------------------------------------------------------- the solver


def _problem(n, d, seed, sparsity=0.1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) / np.sqrt(d)
    b = np.zeros(d)
    idx = rng.choice(d, int(sparsity * d), replace=False)
    b[idx] = rng.normal(size=len(idx))
    return X, X @ b, rng


@pytest.mark.parametrize("sk", [1e-10, 1e-3, 1.0, 1e4])
def test_solution_is_feasible_and_satisfies_kkt(sk):
    X, y, rng = _problem(30, 90, 1)
    k = (sk * rng.uniform(0.2, 5.0, size=90)) ** 2
    beta, info = implicit_bias_solution(X, y, k, return_info=True)
    assert info.converged and info.residual <= 1e-10
    np.testing.assert_allclose(X @ beta, y, atol=1e-9)
    # KKT: q'(beta) lies in the row space of X
    grad = q_k_prime(beta, k)
    nu, *_ = np.linalg.lstsq(X.T, grad, rcond=None)
    assert np.linalg.norm(X.T @ nu - grad) <= 1e-7 * max(1.0, np.linalg.norm(grad))
    # optimality: feasible perturbations along the null space do not decrease the objective
    null = np.linalg.svd(X)[2][30:]
    f0 = q_k(beta, k).sum()
    for _ in range(5):
        d = null.T @ rng.normal(size=60)
        assert q_k(beta + 1e-3 * d / np.linalg.norm(d), k).sum() >= f0 - 1e-12


def _l1_min(X, y):
    d = X.shape[1]
    lp = linprog(np.ones(2 * d), A_eq=np.hstack([X, -X]), b_eq=y, bounds=(0, None), method="highs")
    return lp.x[:d] - lp.x[d:]


def test_tiny_k_matches_l1_minimiser():
    # a unique, well-separated l1 vertex (sparse recovery regime): the q_k minimiser converges to it
    X, y, _ = _problem(40, 120, 2, sparsity=0.05)
    b_l1 = _l1_min(X, y)
    far = np.abs(implicit_bias_solution(X, y, 1e-12) - b_l1).max()
    near = np.abs(implicit_bias_solution(X, y, 1e-48) - b_l1).max()
    assert near < 1e-8 and far > 100 * near
    # beyond recovery the penalty is l1 up to a relative 1/log(1/k) term: the l1 norm converges to the minimum
    X, y, _ = _problem(40, 120, 2, sparsity=0.2)
    l1 = np.abs(_l1_min(X, y)).sum()
    gaps = [np.abs(implicit_bias_solution(X, y, k)).sum() / l1 - 1 for k in (1e-12, 1e-48, 1e-200)]
    assert gaps[0] > gaps[1] > gaps[2] > -1e-9 and gaps[2] < 1e-4


def test_huge_k_matches_weighted_min_norm():
    X, y, rng = _problem(40, 120, 3)
    sk = 1e6 * rng.uniform(0.5, 2.0, size=120)  # sqrt(k): q ~ beta^2 / (2 sqrt k)
    beta = implicit_bias_solution(X, y, sk**2)
    S = np.diag(sk)
    ref = S @ X.T @ np.linalg.solve(X @ S @ X.T, y)
    np.testing.assert_allclose(beta, ref, rtol=1e-8, atol=1e-12)


def test_solver_reports_non_convergence():
    X, y, _ = _problem(20, 60, 4)
    with pytest.raises(ConvergenceError, match="max_iter"):
        implicit_bias_solution(X, y, 1e-20, max_iter=2)
    beta, info = implicit_bias_solution(X, y, 1e-20, max_iter=2, return_info=True, raise_on_failure=False)
    assert not info.converged and info.residual > 1e-10 and info.iters == 2
    with pytest.raises(ValueError):
        implicit_bias_solution(X, y, 0.0)


# ---------------------------------------------------------------- l-order, PD


def _num_l_order(bft, bpt, c, lam, gamma, h=1e-6):
    k = k_finetune(bpt, c, lam, gamma)
    return (np.log(q_k(bft * np.exp(h), k)) - np.log(q_k(bft * np.exp(-h), k))) / (2 * h)


def _num_pd(bft, bpt, c, lam, gamma, h=1e-6):
    kp, km = k_finetune(bpt * np.exp(h), c, lam, gamma), k_finetune(bpt * np.exp(-h), c, lam, gamma)
    return (np.log(q_k(bft, kp)) - np.log(q_k(bft, km))) / (2 * h)


@pytest.mark.parametrize("c,lam,gamma", [(0.1, 0.0, 0.0), (0.1, -0.99, 0.0), (1e-3, 0.7, 0.5), (2.0, -0.3, 3.0)])
def test_descriptors_match_numerical_derivatives(c, lam, gamma):
    bpt = np.array([1e-3, 0.05, 1.0, 30.0])
    bft = np.array([0.01, 0.5, 1.0, 10.0])[:, None]
    np.testing.assert_allclose(l_order(bft, bpt, c, lam, gamma), _num_l_order(bft, bpt, c, lam, gamma), atol=1e-7)
    np.testing.assert_allclose(pt_dependence(bft, bpt, c, lam, gamma), _num_pd(bft, bpt, c, lam, gamma), atol=1e-7)


def test_descriptor_bounds_on_the_regime_map_grid():
    """Dense grid of the paper's regime map (c = 0.1, gamma = 0, beta_FT = 1) plus other scales."""
    bpt = np.geomspace(5e-4, 2e3, 300)[None, :]
    lam = np.linspace(-1, 1, 201)[:, None]
    for c, gamma, bft in [(0.1, 0.0, 1.0), (1e-3, 0.0, 1.0), (0.1, 1.0, 3.0), (10.0, 0.0, 0.01)]:
        lo, pd = l_order(bft, bpt, c, lam, gamma), pt_dependence(bft, bpt, c, lam, gamma)
        assert np.all(np.isfinite(lo)) and np.all(np.isfinite(pd))
        assert lo.min() >= 1 and lo.max() <= 2
        assert pd.min() >= -1 and pd.max() <= 0
        assert (lo + pd).min() >= 1 - 1e-12 and (lo + pd).max() <= 2
    # the map spans nearly the whole triangle at the paper's settings
    lo, pd = l_order(1.0, bpt, 0.1, lam, 0.0), pt_dependence(1.0, bpt, 0.1, lam, 0.0)
    assert lo.min() == 1.0 and lo.max() > 1.99 and pd.min() < -0.99
    # stable at the extremes: smooth in lam near -1 (no jumps from cancellation)
    lam_fine = -1 + np.geomspace(1e-12, 1e-2, 50)[:, None]
    assert np.all(np.diff(l_order(1.0, bpt, 0.1, lam_fine, 0.0), axis=0) >= -1e-12)


def test_documented_limits():
    # regime I: lam -> -1, gamma -> 0 (k -> 0): l-order -> 1, PD -> 0
    for b in (1e-2, 1.0, 100.0):
        lo, pd = l_order(1.0, b, 0.1, -1 + 1e-12, 1e-9), pt_dependence(1.0, b, 0.1, -1 + 1e-12, 1e-9)
        assert lo < 1.05 and -0.05 < pd <= 0
        assert l_order(1.0, b, 0.1, -1.0, 0.0) == 1.0 and pt_dependence(1.0, b, 0.1, -1.0, 0.0) == 0.0
    # regime II: c -> 0, lam = +1 or 0: l-order -> 2, PD -> -1 when |beta_FT| << (1+lam)|beta_PT|
    for lam in (1.0, 0.0):
        lo, pd = l_order(1e-3, 1.0, 1e-9, lam, 0.0), pt_dependence(1e-3, 1.0, 1e-9, lam, 0.0)
        assert lo > 1.999 and pd < -0.999
        # at beta_FT = beta_PT = 1 the formulas give PD = 1 - l-order exactly, with l-order < 2
        lo, pd = l_order(1.0, 1.0, 1e-9, lam, 0.0), pt_dependence(1.0, 1.0, 1e-9, lam, 0.0)
        assert 1.8 < lo < 2 and abs(lo + pd - 1) < 1e-6
    # regime III: c -> inf or gamma -> inf: l-order -> 2, PD -> 0
    assert l_order(1.0, 1.0, 1e6, 0.0, 0.0) > 1.999 and pt_dependence(1.0, 1.0, 1e6, 0.0, 0.0) > -1e-3
    assert l_order(1.0, 1.0, 1e-3, 0.0, 1e3) > 1.999 and pt_dependence(1.0, 1.0, 1e-3, 0.0, 1e3) > -1e-3
    # regime IV: lam = -0.99, c = 1e-3, moderate beta_PT: in between, on the I-II segment (l + PD ~ 1)
    lo, pd = l_order(1.0, 1.0, 1e-3, -0.99, 0.0), pt_dependence(1.0, 1.0, 1e-3, -0.99, 0.0)
    assert 1.1 < lo < 1.5 and -0.5 < pd < -0.1 and abs(lo + pd - 1) < 1e-3


def test_regime_of_names_the_paper_corners():
    corners = {"II": (1e-3, 0.0, 0.0), "IV": (1e-3, -0.99, 0.0), "I": (1e-3, -0.999999, 1e-6), "III": (1e-3, 0.0, 10.0)}
    for name, (c, lam, gamma) in corners.items():
        got = regime_of(l_order(1.0, 1.0, c, lam, gamma), pt_dependence(1.0, 1.0, c, lam, gamma))
        assert got == name
    out = regime_of(np.array([1.0, 2.0, 2.0, 1.3]), np.array([0.0, -1.0, 0.0, -0.3]))
    assert out.tolist() == ["I", "II", "III", "IV"]
