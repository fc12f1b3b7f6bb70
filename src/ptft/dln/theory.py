"""Implicit bias of fine-tuning in the diagonal linear network (docs/paper.md sections 3 and 6).

Pure numpy/scipy functions of arrays (no torch, no Hydra); everything broadcasts.

Penalty. Fine-tuning by gradient flow from the FT state converges to

    beta_hat = argmin_beta sum_i q_{k_i}(beta_i)  subject to  X beta = y,
    q_k(z) = (sqrt(k)/4) (1 - sqrt(1 + 4 z^2/k) + (2 z/sqrt(k)) arcsinh(2 z/sqrt(k))).

With A = arcsinh(2 z / sqrt(k)) the same function reads q_k(z) = (z/2) (A - tanh(A/2)), which is
what `q_k` evaluates: no cancellation for tiny k (A large, q ~ (|z|/2) log(4|z|/sqrt k), l1-like)
nor for huge k (A small, q ~ z^2 / (2 sqrt k), weighted l2).

Public API
- `q_k(z, k)`, `q_k_prime(z, k)`, `q_k_second(z, k)`: the penalty and its derivatives.
- `k_finetune(beta_pt, c, lam, gamma)`: k = 4 c_FT^2 per coordinate (lam normalised in [-1, 1]).
  `sqrt_k_finetune` returns sqrt(k) = 2 c_FT directly (better for tiny or huge k).
- `pt_end_state`, `finetune_init`: re-exported from `ptft.dln.model`.
- `implicit_bias_solution(X, y, k)`: the minimiser above by Newton on the n-dimensional dual.
- `l_order`, `pt_dependence` (PD), `regime_of`: the local descriptors of section 6.

Descriptors (analytic). With A = arcsinh(2 beta_FT / sqrt k) and s = sqrt k:
    l-order = d log q / d log|beta_FT| = A / (A - tanh(A/2))  in [1, 2]  (1 as A -> inf, 2 as A -> 0)
    d log q / d log s = 1 - l-order                           (q is 1-homogeneous in (z, s))
    PD = (1 - l-order) * e,   e = d log s / d log|beta_PT| in [0, 1]
    e  = 2 c (1+lam) r^2 / sqrt(1+r^2) / s,  r = |beta_PT| / c,  s = 2 c (1+lam)(1+sqrt(1+r^2)) + gamma^2
Hence PD in [-1, 0] and l-order + PD = 1 + (l-order - 1)(1 - e) in [1, 2].

Limits (checked in tests/test_theory.py):
- lam -> -1, gamma -> 0 (k -> 0): l-order -> 1, PD -> 0 (regime I, l1).
- c -> 0 with lam > -1, gamma = 0: s -> 2 (1+lam)|beta_PT|, so e -> 1 and PD -> 1 - l-order; and
  l-order -> 2, PD -> -1 when in addition |beta_FT| << (1+lam)|beta_PT| (regime II, sum beta^2/|beta_PT|).
  At beta_FT = beta_PT = 1, c -> 0, lam = 0 the formulas give l-order = 1.89, PD = -0.89 (not exactly 2, -1).
- c -> inf or gamma -> inf: l-order -> 2, PD -> 0 (regime III, l2).
- lam slightly above -1 (e.g. -0.99) at moderate beta_PT: l-order between 1 and 2 with PD = 1 - l-order
  (regime IV, on the segment between I and II).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ptft.dln.model import finetune_init, pt_end_state

__all__ = [
    "q_k", "q_k_prime", "q_k_second", "k_finetune", "sqrt_k_finetune", "pt_end_state", "finetune_init",
    "implicit_bias_solution", "SolveInfo", "ConvergenceError", "l_order", "pt_dependence", "regime_of",
    "L_SPLIT", "PD_SPLIT",
]

# regime_of thresholds: "rich" iff l-order < L_SPLIT; "PT-dependent" iff PD < PD_SPLIT.
L_SPLIT = 1.5
PD_SPLIT = -0.1


class ConvergenceError(RuntimeError):
    """A numerical solver did not reach its tolerance."""


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _a_minus_th(A: np.ndarray) -> np.ndarray:
    """A - tanh(A/2), accurate for small |A| (series) and any large |A|."""
    small = np.abs(A) < 1e-3
    series = A / 2.0 + A**3 / 24.0
    return np.where(small, series, A - np.tanh(A / 2.0))


def q_k(z, k) -> np.ndarray:
    """The implicit-bias penalty q_k(z) of docs/paper.md section 3 (k > 0), stable for any k and z."""
    z, s = _f64(z), np.sqrt(_f64(k))
    with np.errstate(divide="ignore"):
        A = np.arcsinh(2.0 * z / s)
    return 0.5 * z * _a_minus_th(A)


def q_k_prime(z, k) -> np.ndarray:
    """q_k'(z) = arcsinh(2 z / sqrt k) / 2."""
    return 0.5 * np.arcsinh(2.0 * _f64(z) / np.sqrt(_f64(k)))


def q_k_second(z, k) -> np.ndarray:
    """q_k''(z) = 1 / sqrt(k + 4 z^2)."""
    z = _f64(z)
    return 1.0 / np.sqrt(_f64(k) + 4.0 * z * z)


def sqrt_k_finetune(beta_pt, c, lam, gamma) -> np.ndarray:
    """sqrt(k) = 2 c_FT = 2 c (1 + lam)(1 + sqrt(1 + (beta_pt/c)^2)) + gamma^2 (lam normalised)."""
    b, c, lam, gamma = _f64(beta_pt), _f64(c), _f64(lam), _f64(gamma)
    return 2.0 * c * (1.0 + lam) * (1.0 + np.hypot(1.0, b / c)) + gamma**2


def k_finetune(beta_pt, c, lam, gamma) -> np.ndarray:
    """k = 4 c_FT^2 = (2 c (1+lam)(1 + sqrt(1 + (beta_pt/c)^2)) + gamma^2)^2, lam normalised in [-1, 1]."""
    return sqrt_k_finetune(beta_pt, c, lam, gamma) ** 2


# ----------------------------------------------------------------------------------------------
# Local descriptors (section 6)


def _l_order_from_A(A: np.ndarray) -> np.ndarray:
    """A / (A - tanh(A/2)) = 1 / (1 - tanh(A/2)/A), with its limits 2 (A = 0) and 1 (A = inf)."""
    A = np.abs(A)
    small = A < 1e-3
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(small, 0.5 - A**2 / 24.0, np.tanh(A / 2.0) / np.where(small, 1.0, A))
    return 1.0 / (1.0 - ratio)


def _descriptor_parts(beta_ft, beta_pt, c, lam, gamma):
    z, b, c, lam, gamma = np.broadcast_arrays(_f64(beta_ft), _f64(beta_pt), _f64(c), _f64(lam), _f64(gamma))
    s = sqrt_k_finetune(b, c, lam, gamma)
    with np.errstate(divide="ignore"):
        A = np.arcsinh(2.0 * np.abs(z) / s)  # s = 0 (k = 0, lam = -1, gamma = 0) gives A = inf: l-order 1
    lo = _l_order_from_A(A)
    r = np.abs(b) / c
    h = np.hypot(1.0, r)
    # g(r) = r^2 / sqrt(1+r^2), written as a product that neither overflows nor cancels
    p = 2.0 * c * (1.0 + lam)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = p * (r / h) * r / s
        # k = 0 limit (lam = -1, gamma = 0) along lam -> -1: e = g / (1 + h)
        e = np.where(s > 0, e, (r / h) * (r / (1.0 + h)))
    e = np.clip(e, 0.0, 1.0)
    return lo, e


def l_order(beta_ft, beta_pt, c, lam, gamma) -> np.ndarray:
    """l-order = d log q_k(beta_FT) / d log|beta_FT| with k = k_finetune(beta_pt, c, lam, gamma); in [1, 2]."""
    return _descriptor_parts(beta_ft, beta_pt, c, lam, gamma)[0]


def pt_dependence(beta_ft, beta_pt, c, lam, gamma) -> np.ndarray:
    """PD = d log q_k(beta_FT) / d log|beta_PT| at fixed beta_FT (k through k_finetune); in [-1, 0]."""
    lo, e = _descriptor_parts(beta_ft, beta_pt, c, lam, gamma)
    return (1.0 - lo) * e


def regime_of(l_ord, pd) -> np.ndarray:
    """Name the fine-tuning regime (docs/paper.md section 6) of (l-order, PD) pairs; returns 'I'..'IV' strings.

    rich   <=> l-order < L_SPLIT (1.5);   PT-dependent <=> PD < PD_SPLIT (-0.1).
    I = rich & PT-independent, II = lazy & PT-dependent, III = lazy & PT-independent,
    IV = rich & PT-dependent ("reuse and refine"). Since PD >= 1 - l-order, a rich point can only be
    PT-dependent when l-order > 1.1: regime I is the corner l-order ~ 1.
    """
    lo, pd = np.broadcast_arrays(_f64(l_ord), _f64(pd))
    rich, dep = lo < L_SPLIT, pd < PD_SPLIT
    out = np.where(rich, np.where(dep, "IV", "I"), np.where(dep, "II", "III"))
    return out if out.ndim else out[()]


# ----------------------------------------------------------------------------------------------
# The minimum-penalty interpolator


@dataclass(frozen=True)
class SolveInfo:
    """Convergence report of `implicit_bias_solution`: Newton iterations, final max|X beta - y|
    relative to max(1, max|y|), and whether it is below tol."""
    iters: int
    residual: float
    converged: bool


def implicit_bias_solution(X, y, k, *, tol: float = 1e-10, max_iter: int = 200, return_info: bool = False,
                           raise_on_failure: bool = True):
    """argmin_beta sum_i q_{k_i}(beta_i) subject to X beta = y (float64).

    Newton with backtracking on the convex dual  min_nu  sum_i (sqrt(k_i)/4)(cosh(2 a_i) - 1) - nu.y,
    a = X^T nu, whose minimiser gives beta_i = (sqrt(k_i)/2) sinh(2 a_i); the KKT condition
    q'(beta) = X^T nu holds by construction, and the loop stops when max|X beta - y| <= tol * max(1, max|y|).
    `k` is a scalar or one value per column of X (all > 0). X must have full row rank (n <= D).
    Raises ConvergenceError if not converged (unless raise_on_failure=False); return_info=True returns
    (beta, SolveInfo).
    """
    X, y = _f64(X), _f64(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be (n, D) and y (n,); got {X.shape} and {y.shape}")
    s = np.broadcast_to(np.sqrt(_f64(k)), (X.shape[1],))
    if not np.all(s > 0) or not np.all(np.isfinite(s)):
        raise ValueError("k must be finite and > 0 for every coordinate")
    scale = max(1.0, float(np.max(np.abs(y), initial=0.0)))
    nu = np.zeros(X.shape[0])
    a = np.zeros(X.shape[1])

    def dual(a_: np.ndarray) -> float:
        with np.errstate(over="ignore"):
            # (s/4)(cosh 2a - 1) = (s/2) sinh(a)^2, exact also for small a
            return float(np.sum(0.5 * s * np.sinh(a_) ** 2))

    f = dual(a)
    beta = np.zeros_like(a)
    it = 0
    while True:
        grad = X @ beta - y
        res = float(np.max(np.abs(grad), initial=0.0)) / scale
        if res <= tol or it >= max_iter:
            break
        it += 1
        with np.errstate(over="ignore"):
            w = s * np.cosh(2.0 * a)
        H = (X * w) @ X.T
        try:
            step = scipy.linalg.cho_solve(scipy.linalg.cho_factor(H, check_finite=False), -grad, check_finite=False)
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
            jitter = 1e-12 * np.trace(H) / len(H)
            step = scipy.linalg.solve(H + jitter * np.eye(len(H)), -grad, assume_a="pos")
        da = X.T @ step
        slope = float(grad @ step)
        t = min(1.0, 2.0 / max(float(np.max(np.abs(da))), 1e-300))  # |delta a| <= 2 per step
        phi = f - float(nu @ y)
        accepted = False
        for _ in range(60):
            a_new, nu_new = a + t * da, nu + t * step
            f_new = dual(a_new)
            phi_new = f_new - float(nu_new @ y)
            if np.isfinite(phi_new) and phi_new <= phi + 0.25 * t * slope:
                accepted = True
                break
            # near the optimum the decrease drowns in rounding: accept if the residual shrinks
            if np.isfinite(phi_new) and abs(phi_new - phi) <= 1e-12 * (abs(f) + abs(phi)):
                with np.errstate(over="ignore"):
                    b_new = 0.5 * s * np.sinh(2.0 * a_new)
                if np.max(np.abs(X @ b_new - y)) < np.max(np.abs(grad)):
                    accepted = True
                    break
            t *= 0.5
        if not accepted:
            break
        a, nu, f = a_new, nu_new, f_new
        with np.errstate(over="ignore"):
            beta = 0.5 * s * np.sinh(2.0 * a)
    converged = bool(res <= tol)
    info = SolveInfo(iters=it, residual=res, converged=converged)
    if not converged and raise_on_failure:
        raise ConvergenceError(
            f"implicit_bias_solution: max|X beta - y| / max(1, |y|) = {res:.3g} > tol = {tol:g} after {it} "
            "Newton steps; raise max_iter or tol, or check that X has full row rank")
    return (beta, info) if return_info else beta
