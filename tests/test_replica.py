"""Tests of ptft.dln.replica: prox, quadrature vs Monte Carlo, fixed point, limits, theory vs simulation."""
from __future__ import annotations

import numpy as np
import pytest

from ptft import ConfigError
from ptft.dln.replica import (_quad_expect, channel_groups, generalization_error, generalization_error_stl, prox)
from ptft.dln.teachers import make_inputs, make_teachers
from ptft.dln.theory import implicit_bias_solution, k_finetune

PAPER = dict(rho_pt=0.1, rho_ft=0.1)
ALPHAS = np.linspace(0.01, 0.5, 25)


@pytest.mark.parametrize("k", [1e-30, 1e-8, 1.0, 1e8])
@pytest.mark.parametrize("g", [1e-6, 0.3, 20.0])
def test_prox_solves_its_equation(k, g):
    z = np.concatenate([-np.geomspace(1e3, 1e-6, 40), [0.0], np.geomspace(1e-6, 1e3, 40)])
    x = prox(z, k, g)
    lhs = x - z + (g / 2) * np.arcsinh(2 * x / np.sqrt(k))
    assert np.all(np.abs(lhs) <= 1e-12 * np.maximum(np.abs(z), 1e-300) + 1e-300)
    assert np.all(np.diff(x) >= 0) and np.all(np.abs(x) <= np.abs(z))  # monotone shrinkage
    np.testing.assert_array_equal(prox(-z, k, g), -x)


def test_prox_is_the_argmin():
    from ptft.dln.theory import q_k
    z, k, g = 1.7, 1e-4, 0.5
    x = prox(z, k, g)
    grid = x + np.linspace(-1e-3, 1e-3, 2001)
    obj = (grid - z) ** 2 / (2 * g) + q_k(grid, k)
    assert abs(grid[np.argmin(obj)] - x) <= 1e-6


def _mc_expect(groups, s2, g, n, rng):
    out_e, out_g, se_e, se_g = 0.0, 0.0, 0.0, 0.0
    for gr in groups:
        X = rng.normal(size=n) * np.sqrt(gr.var_x)
        xh = prox(X + np.sqrt(s2) * rng.normal(size=n), gr.sqrt_k**2, g)
        e = (X - xh) ** 2
        kc = np.sqrt(gr.sqrt_k**2 + 4 * xh**2)
        gt = g * kc / (kc + g)
        out_e += gr.prob * e.mean()
        out_g += gr.prob * gt.mean()
        se_e += (gr.prob * e.std() / np.sqrt(n)) ** 2
        se_g += (gr.prob * gt.std() / np.sqrt(n)) ** 2
    return out_e, out_g, np.sqrt(se_e), np.sqrt(se_g)


@pytest.mark.parametrize("init,s2,g", [((1.0, 0.0, 0.0), 3.0, 1.0), ((1e-6, 0.0, 0.0), 5.0, 0.3),
                                       ((1e-3, -0.999999, 1e-6), 30.0, 2.5), ((1e-3, -0.99, 0.0), 0.5, 0.05),
                                       ((1e-3, 0.0, 10.0), 2.0, 50.0)])
def test_quadrature_agrees_with_monte_carlo(init, s2, g):
    """Channel expectations at fixed (s^2, g): quadrature within 4 standard errors of an 80 000-sample MC
    per group (the MC standard error is about 0.3% here; the quadrature itself is exact to ~1e-10)."""
    c, lam, gamma = init
    groups = channel_groups(rho_pt=0.1, rho_ft=0.1, omega=0.5, c_pt=c, lam_pt=lam, gamma=gamma)
    P = np.array([x.prob for x in groups])
    VX = np.array([x.var_x for x in groups])
    K = np.array([x.sqrt_k for x in groups])
    e_q, g_q, mass = _quad_expect(P, VX, K, s2, g, 400)
    assert abs(mass - 1) < 1e-9
    e_mc, g_mc, se_e, se_g = _mc_expect(groups, s2, g, 80_000, np.random.default_rng(0))
    assert abs(e_q - e_mc) < 4 * se_e
    assert abs(g_q - g_mc) < 4 * se_g + 1e-12
    e_fine = _quad_expect(P, VX, K, s2, g, 1600)[0]
    assert abs(e_q - e_fine) < 1e-9 * e_fine


@pytest.mark.parametrize("init,omega", [((1.0, 0.0, 0.0), 0.0), ((1e-3, -0.99, 0.0), 0.0),
                                        ((1e-3, 0.0, 0.0), 1.0)])
def test_fixed_point_quadrature_vs_paper_monte_carlo(init, omega):
    """The full fixed point with the paper's numerics (80 000-sample MC) agrees with quadrature."""
    c, lam, gamma = init
    kw = dict(PAPER, omega=omega, c_pt=c, lam_pt=lam, gamma=gamma)
    alphas = np.array([0.05, 0.15, 0.3])
    q = generalization_error(alphas, **kw)
    mc = np.array([generalization_error(alphas, method="mc", seed=s, **kw).error for s in range(3)])
    # seed-to-seed spread measures the MC error; the quadrature lies inside it
    se = mc.std(axis=0, ddof=1) / np.sqrt(len(mc))
    assert np.all(np.abs(mc.mean(axis=0) - q.error) < 4 * se + 0.01 * q.error + 1e-4)


def test_converged_residuals_and_determinism():
    for init in [(1.0, 0.0, 0.0), (1e-6, 0.0, 0.0), (1e-3, -0.99, 0.0), (1e-3, -0.999999, 1e-6), (1e-3, 0.99, 0.0)]:
        for omega, rho_ft in [(0.0, 0.1), (1.0, 0.1), (1.0, 0.01), (0.0, 0.9)]:
            kw = dict(rho_pt=0.1, rho_ft=rho_ft, omega=omega, c_pt=init[0], lam_pt=init[1], gamma=init[2])
            r = generalization_error(ALPHAS, **kw)
            assert r.converged.all() and np.all(r.residual < 1e-6), (kw, r.residual)
            assert np.all(np.isfinite(r.error)) and np.all(r.error >= 0)
            r2 = generalization_error(ALPHAS, **kw)
            np.testing.assert_array_equal(r.error, r2.error)
    mc1 = generalization_error([0.2], method="mc", seed=3, n_mc=20_000, **PAPER, omega=1.0, c_pt=1e-3, lam_pt=0.0,
                               gamma=0.0)
    mc2 = generalization_error([0.2], method="mc", seed=3, n_mc=20_000, **PAPER, omega=1.0, c_pt=1e-3, lam_pt=0.0,
                               gamma=0.0)
    np.testing.assert_array_equal(mc1.error, mc2.error)


def test_solution_independent_of_continuation_path():
    kw = dict(PAPER, omega=1.0, c_pt=1e-3, lam_pt=-0.99, gamma=0.0)
    full = generalization_error(ALPHAS, **kw)
    rev = generalization_error(ALPHAS[::-1], **kw)  # solved in ascending order anyway, returned as given
    np.testing.assert_allclose(rev.error[::-1], full.error, rtol=1e-12)
    single = generalization_error(ALPHAS[[3, 12, 20]], **kw)  # no continuation from the small alphas
    np.testing.assert_allclose(single.error, full.error[[3, 12, 20]], rtol=1e-5, atol=1e-8)
    damped = generalization_error(ALPHAS[12:], solver="damped", max_iter=5000, **kw)
    assert damped.converged.all()
    np.testing.assert_allclose(damped.error, full.error[12:], rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("kw", [dict(c_pt=1e-3, lam_pt=0.0, gamma=1e3), dict(c_pt=1e6, lam_pt=0.0, gamma=0.0)])
def test_lazy_limit_is_one_minus_alpha(kw):
    """For l2 min-norm interpolation with E[beta*^2] = 1, error = 1 - alpha for alpha < 1."""
    for omega, rho_ft in [(0.0, 0.1), (1.0, 0.1), (0.0, 0.9)]:
        r = generalization_error(ALPHAS, rho_pt=0.1, rho_ft=rho_ft, omega=omega, **kw)
        np.testing.assert_allclose(r.error, 1 - ALPHAS, rtol=2e-4)
    # gamma = 10 (paper panel b/e) is close to lazy, not exactly
    r = generalization_error(ALPHAS, **PAPER, omega=0.0, c_pt=1e-3, lam_pt=0.0, gamma=10.0)
    np.testing.assert_allclose(r.error, 1 - ALPHAS, atol=0.01)


def test_noise_raises_error_and_stl_is_ft_without_pt():
    base = dict(PAPER, omega=1.0, c_pt=1e-3, lam_pt=0.0, gamma=0.0)
    clean = generalization_error(ALPHAS, **base)
    noisy = generalization_error(ALPHAS, sigma0=0.3, **base)
    assert np.all(noisy.error > clean.error)
    # STL with scale c equals FT with no PT support and c_FT = c (2 c_pt (1 + lam) * 2 = 2 c at lam = 0)
    for c in (1e-6, 1e-2, 1.0):
        stl = generalization_error_stl(ALPHAS, rho=0.1, c=c)
        ft = generalization_error(ALPHAS, rho_pt=0.0, rho_ft=0.1, omega=0.0, c_pt=c / 2, lam_pt=0.0, gamma=0.0)
        np.testing.assert_allclose(stl.error, ft.error, rtol=1e-9)
    np.testing.assert_allclose(generalization_error_stl(ALPHAS, rho=0.5, c=1e6).error, 1 - ALPHAS, rtol=1e-4)
    # rich STL on a sparse teacher: far below the lazy error once alpha passes the l1 transition
    assert generalization_error_stl([0.45], rho=0.1, c=1e-6).error[0] < 0.05


def test_unconverged_points_are_flagged():
    r = generalization_error(ALPHAS[:3], **PAPER, omega=0.0, c_pt=1e-3, lam_pt=-0.99, gamma=0.0, tol=1e-14,
                             max_iter=1)
    assert not r.converged.any() and np.all(r.residual > 1e-14)
    with pytest.raises(RuntimeError, match="not converged"):
        r.require_converged()


def test_bad_input_is_a_config_error():
    kw = dict(c_pt=1e-3, lam_pt=0.0, gamma=0.0)
    with pytest.raises(ConfigError, match="infeasible"):
        generalization_error([0.1], rho_pt=0.05, rho_ft=0.1, omega=1.0, **kw)
    with pytest.raises(ConfigError, match="alphas"):
        generalization_error([0.1, -0.2], **PAPER, omega=0.0, **kw)
    with pytest.raises(ConfigError, match="k = 0"):
        generalization_error([0.1], **PAPER, omega=0.0, c_pt=1e-3, lam_pt=-1.0, gamma=0.0)
    with pytest.raises(ConfigError, match="dln.c"):
        generalization_error([0.1], **PAPER, omega=0.0, c_pt=0.0, lam_pt=0.0, gamma=0.0)
    with pytest.raises(ConfigError, match="rho"):
        generalization_error_stl([0.1], rho=0.0, c=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("init,omega", [((1.0, 0.0, 0.0), 0.0), ((1e-3, -0.99, 0.0), 1.0),
                                        ((1e-3, 0.0, 0.0), 0.0), ((1e-3, -0.999999, 1e-6), 1.0)])
def test_theory_matches_simulation(init, omega):
    """Replica prediction vs the exact min-penalty interpolator at D = 2000 (8 seeds)."""
    c, lam, gamma = init
    D, alpha = 2000, 0.2
    th = generalization_error([alpha], **PAPER, omega=omega, c_pt=c, lam_pt=lam, gamma=gamma).error[0]
    errs = []
    for seed in range(8):
        rng = np.random.default_rng(1000 + seed)
        b_pt, b_ft = make_teachers(D, 0.1, 0.1, omega, 1.0, rng)
        X = make_inputs(int(alpha * D), D, rng)
        beta = implicit_bias_solution(X, X @ b_ft, k_finetune(b_pt, c, lam, gamma))
        errs.append(np.sum((beta - b_ft) ** 2) / D)
    se = np.std(errs, ddof=1) / np.sqrt(len(errs))
    assert abs(np.mean(errs) - th) < 4 * se + 0.03 * th + 1e-3, (np.mean(errs), se, th)
