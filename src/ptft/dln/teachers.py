"""Teacher-student data of docs/paper.md section 4."""
from __future__ import annotations

import numpy as np

from ptft import ConfigError


def check_feasible(rho_pt: float, rho_ft: float, omega: float) -> None:
    """Raise ConfigError unless the (rho_pt, rho_ft, omega) teacher pair can exist."""
    for key, v in (("dln.rho_pt", rho_pt), ("dln.rho_ft", rho_ft), ("dln.omega", omega)):
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{key}={v} must be in [0, 1]")
    if omega * rho_ft > rho_pt + 1e-12:
        raise ConfigError(
            f"infeasible teacher: dln.omega * dln.rho_ft = {omega * rho_ft:g} exceeds dln.rho_pt = {rho_pt:g} "
            "(the FT support cannot share more coordinates than the PT support has); lower omega or rho_ft")
    if rho_pt + (1.0 - omega) * rho_ft > 1.0 + 1e-12:
        raise ConfigError(
            f"infeasible teacher: dln.rho_pt + (1 - dln.omega) * dln.rho_ft = {rho_pt + (1 - omega) * rho_ft:g} > 1 "
            "(not enough coordinates outside the PT support); lower rho_pt or rho_ft, or raise omega")


def make_teachers(dim: int, rho_pt: float, rho_ft: float, omega: float, a_pt: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(beta_pt, beta_ft): PT support of size round(rho_pt D) with value a_pt; FT support of size
    round(rho_ft D), round(omega rho_ft D) of it inside the PT support, values ~ N(0, 1/rho_ft)."""
    check_feasible(rho_pt, rho_ft, omega)
    n_pt, n_ft = int(round(rho_pt * dim)), int(round(rho_ft * dim))
    n_shared = int(round(omega * rho_ft * dim))
    perm = rng.permutation(dim)
    s_pt, outside = perm[:n_pt], perm[n_pt:]
    if n_shared > n_pt or n_ft - n_shared > len(outside):
        raise ConfigError(f"infeasible teacher after rounding at dln.dim={dim}; raise dln.dim")
    shared = rng.permutation(s_pt)[:n_shared]
    new = outside[: n_ft - n_shared]
    beta_pt = np.zeros(dim)
    beta_pt[s_pt] = a_pt
    beta_ft = np.zeros(dim)
    s_ft = np.concatenate([shared, new])
    beta_ft[s_ft] = rng.normal(0.0, 1.0 / np.sqrt(rho_ft), size=len(s_ft)) if rho_ft > 0 else 0.0
    return beta_pt, beta_ft


def make_ll_teachers(dim: int, k_pt: int, k_ft: int, overlap: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Lippl & Lindsey's teachers (docs/paper.md section 7): PT support of k_pt coordinates with values
    +-1/sqrt(k_pt) (random signs); FT support of k_ft coordinates with values +-1/sqrt(k_ft), `overlap`
    of them drawn from the PT support with the PT coordinate's sign, the rest from outside it."""
    perm = rng.permutation(dim)
    s_pt, outside = perm[:k_pt], perm[k_pt:]
    sign_pt = rng.choice([-1.0, 1.0], size=k_pt)
    beta_pt = np.zeros(dim)
    beta_pt[s_pt] = sign_pt / np.sqrt(k_pt)
    pick = rng.permutation(k_pt)[:overlap]
    new = outside[: k_ft - overlap]
    beta_ft = np.zeros(dim)
    beta_ft[s_pt[pick]] = sign_pt[pick] / np.sqrt(k_ft)
    beta_ft[new] = rng.choice([-1.0, 1.0], size=len(new)) / np.sqrt(k_ft)
    return beta_pt, beta_ft


def make_inputs(n: int, dim: int, rng: np.random.Generator, kind: str = "gaussian") -> np.ndarray:
    """X with i.i.d. N(0, 1/D) entries; kind="unit_norm": each row then rescaled to unit mean square
    (squared norm D), as in Lippl & Lindsey's DLN."""
    X = rng.normal(0.0, 1.0 / np.sqrt(dim), size=(n, dim))
    if kind == "unit_norm":
        X *= np.sqrt(dim) / np.linalg.norm(X, axis=1, keepdims=True)
    return X
