"""Exact asymptotic generalisation error of fine-tuning and of learning from scratch (docs/paper.md section 5).

Pure numpy. As D, n -> inf with alpha = n / D fixed, the minimum-penalty interpolator of section 3
decouples into a scalar channel: for a coordinate with teacher value X and V ~ N(0, 1),

    z = X + s V,   X_hat = prox_{g q_k}(z)   (x - z + (g/2) arcsinh(2 x / sqrt k) = 0)
    s^2 = sigma0^2 + E[(X - X_hat)^2] / alpha
    g   = g_ext + (1/alpha) E[1 / (1/g + 1/sqrt(k + 4 X_hat^2))]
    generalisation error = E[(X - X_hat)^2]

X is a mixture over four groups (PT&FT, FT-only, PT-only, neither; see `channel_groups`), each with
its own k = k_finetune(beta_PT, c, lam, gamma), beta_PT = a_pt on the PT support and 0 outside; on the FT
support X ~ N(0, 1/rho_ft), elsewhere X = 0.

Quadrature (method="quad", default). Within a group, (X, z) is jointly Gaussian and X_hat depends on z
only, so every expectation is a 1-D integral over z ~ N(0, var_x + s^2), using
E[(X - X_hat)^2 | z] = var_x s^2 / v + (var_x z / v - X_hat)^2 with v = var_x + s^2. The integral is
taken in the prox's dual variable u = arcsinh(2 X_hat / sqrt k), where everything is explicit:
X_hat = (sqrt k / 2) sinh u, z = X_hat + (g/2) u, dz/du = (sqrt k / 2) cosh u + g/2 and
sqrt(k + 4 X_hat^2) = sqrt k cosh u. No prox has to be solved, tiny and huge k are both resolved, and
the trapezoid rule on [0, u_max] (the integrand is even and analytic in u) converges spectrally;
n_quad nodes per group (default 400) are far more accurate than 80 000-sample Monte Carlo.
method="mc" reproduces the paper's numerics: a fixed sample of the mixture (common random numbers
across iterations, so the result is deterministic for a given seed) and a vectorised prox (`prox`).

Fixed point on (s^2, g), stopping when the relative residual max(|map(s^2) - s^2| / s^2,
|map(g) - g| / g) < tol. solver="newton" (default): Newton on map(x) - x in log coordinates with a
finite-difference Jacobian and backtracking; when a Newton step fails, an alternating step (g solved
exactly at the current s^2 by bracketing, whose solution is unique, then the s^2 update damped as below)
keeps it globally robust (the paper's plain iteration oscillates or diverges at small alpha in rich
regimes). solver="damped": the paper's iteration, new = damping * old + (1 - damping) * map(old).
Alphas are solved in ascending order, each starting from the previous solution (continuation). Every
point carries its residual and a `converged` flag; nothing unconverged is returned silently (see
ReplicaResult.require_converged). Cost: ~4 ms per point from scratch, ~1 ms with continuation.

Public API: `generalization_error`, `generalization_error_stl`, `channel_groups`, `prox`, `ReplicaResult`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize

from ptft import ConfigError
from ptft.dln.teachers import check_feasible
from ptft.dln.theory import sqrt_k_finetune

__all__ = ["ReplicaResult", "Group", "channel_groups", "prox", "generalization_error", "generalization_error_stl"]

_TAIL = 10.0  # integrate z out to _TAIL standard deviations
_K_MIN = 1e-250  # below this sqrt(k) the dual variable u overflows sinh


@dataclass(frozen=True)
class Group:
    """One component of the scalar channel: probability, teacher variance (0 or 1/rho_ft), sqrt(k)."""
    name: str
    prob: float
    var_x: float
    sqrt_k: float


@dataclass(frozen=True)
class ReplicaResult:
    """Per-alpha arrays: generalisation error, final relative residual of the fixed-point map,
    converged flag (residual < tol), iterations used, and the order parameters s^2 and g."""
    alphas: np.ndarray
    error: np.ndarray
    residual: np.ndarray
    converged: np.ndarray
    iters: np.ndarray
    s2: np.ndarray
    g: np.ndarray

    def require_converged(self) -> "ReplicaResult":
        """Return self, or raise RuntimeError naming the alphas whose fixed point did not converge."""
        if not np.all(self.converged):
            bad = self.alphas[~self.converged]
            raise RuntimeError(f"replica fixed point not converged at alpha = {bad.tolist()} "
                               f"(residuals {self.residual[~self.converged].tolist()}); raise max_iter")
        return self

    def as_dict(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("alphas", "error", "residual", "converged", "iters", "s2", "g")}


def channel_groups(*, rho_pt: float, rho_ft: float, omega: float, c_pt: float, lam_pt: float, gamma: float,
                   a_pt: float = 1.0) -> list[Group]:
    """The four groups of the FT scalar channel with nonzero probability (docs/paper.md sections 4-5)."""
    check_feasible(rho_pt, rho_ft, omega)
    _check_init(c_pt, lam_pt, gamma)
    shared = omega * rho_ft
    spec = [("PT&FT", shared, 1.0, a_pt), ("FT-only", rho_ft - shared, 1.0, 0.0),
            ("PT-only", rho_pt - shared, 0.0, a_pt), ("neither", 1.0 - rho_pt - (rho_ft - shared), 0.0, 0.0)]
    out = []
    for name, p, has_x, b in spec:
        if p > 1e-15:
            sk = float(sqrt_k_finetune(b, c_pt, lam_pt, gamma))
            out.append(Group(name, float(p), has_x / rho_ft if has_x else 0.0, sk))
    for grp in out:
        if not grp.sqrt_k > _K_MIN:
            if lam_pt == -1.0 and gamma == 0.0:
                raise ConfigError(
                    f"k = 0 in group {grp.name} (lam={lam_pt}, gamma={gamma}): the penalty is undefined at lam = -1 "
                    "with gamma = 0; use lam > -1 (e.g. -0.999999) or gamma > 0")
            raise ConfigError(  # not lam = -1: c (1 + lam) is so small that sqrt(k) underflows
                f"k underflows in group {grp.name} (sqrt(k) = {grp.sqrt_k:.3g} < {_K_MIN:g} at c={c_pt:g}, "
                f"lam={lam_pt}, gamma={gamma}): the theory's arithmetic cannot resolve so small an initialisation; "
                "raise c (or 1 + lam) or gamma")
    return out


def _check_init(c: float, lam: float, gamma: float) -> None:
    if not (np.isfinite(c) and c > 0):
        raise ConfigError(f"dln.c={c} must be > 0")
    if not -1.0 <= lam <= 1.0:
        raise ConfigError(f"dln.lam={lam} must be in [-1, 1] (normalised relative scale)")
    if not (np.isfinite(gamma) and gamma >= 0):
        raise ConfigError(f"dln.gamma={gamma} must be >= 0")


def prox(z, k, g, *, tol: float = 1e-14, max_iter: int = 100) -> np.ndarray:
    """prox_{g q_k}(z): the root x of x - z + (g/2) arcsinh(2 x / sqrt k) = 0 (vectorised, float64).

    Solved as (sqrt k / 2) sinh u + (g/2) u = |z| for u = arcsinh(2x/sqrt k) by Newton from the upper
    bound min(2|z|/g, arcsinh(2|z|/sqrt k)); the function is convex and increasing, so the iterates
    decrease monotonically to the root. Robust for tiny k (soft-threshold-like) and huge k (linear).
    """
    z = np.asarray(z, dtype=np.float64)
    K = np.sqrt(np.asarray(k, dtype=np.float64))
    g = np.asarray(g, dtype=np.float64)
    az = np.abs(z)
    z, K, g, az = np.broadcast_arrays(z, K, g, az)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.minimum(np.where(g > 0, 2.0 * az / g, np.inf), np.arcsinh(2.0 * az / K))
    for _ in range(max_iter):
        f = 0.5 * K * np.sinh(u) + 0.5 * g * u - az
        du = f / (0.5 * K * np.cosh(u) + 0.5 * g)
        u = np.maximum(u - du, 0.0)
        if np.all(np.abs(du) <= tol * np.maximum(u, 1e-300)):
            break
    return np.sign(z) * 0.5 * K * np.sinh(u)


# ----------------------------------------------------------------------------------------------
# Expectations of the channel


def _quad_expect(P, VX, K, s2, g, n_quad):
    """E[(X - X_hat)^2], E[1/(1/g + 1/sqrt(k + 4 X_hat^2))] and the quadrature's total mass."""
    v = VX + s2
    L = _TAIL * np.sqrt(v)
    # u_max: root of (K/2) sinh u + (g/2) u = L; Newton from the upper bound (monotone, as in prox)
    u = np.minimum(2.0 * L / g, np.arcsinh(2.0 * L / K))
    for _ in range(6):
        u = np.maximum(u - (0.5 * K * np.sinh(u) + 0.5 * g * u - L) / (0.5 * K * np.cosh(u) + 0.5 * g), 0.0)
    u = np.maximum(u, 1e-300)
    t = np.linspace(0.0, 1.0, n_quad + 1)
    w = np.full(n_quad + 1, 2.0 / n_quad)  # trapezoid on [0, 1] doubled (even integrand over [-u, u])
    w[0] = w[-1] = 1.0 / n_quad
    uu = u[:, None] * t[None, :]
    Kc = K[:, None] * np.cosh(uu)
    x = 0.5 * K[:, None] * np.sinh(uu)
    z = x + 0.5 * g * uu
    dens = np.exp(-0.5 * z * z / v[:, None]) * (0.5 * Kc + 0.5 * g) * (w * u[:, None] / np.sqrt(2 * np.pi * v[:, None]))
    m = (VX / v)[:, None]
    err_g = dens @ np.ones(n_quad + 1) * (VX * s2 / v) + np.einsum("gj,gj->g", dens, (m * z - x) ** 2)
    gt_g = np.einsum("gj,gj->g", dens, g * Kc / (Kc + g))
    return float(P @ err_g), float(P @ gt_g), float(P @ dens.sum(axis=1))


@dataclass
class _MCSample:
    K: np.ndarray
    X: np.ndarray
    V: np.ndarray


def _mc_sample(groups: list[Group], n_mc: int, seed: int) -> _MCSample:
    rng = np.random.default_rng(seed)
    P = np.array([gr.prob for gr in groups])
    lab = rng.choice(len(groups), size=n_mc, p=P / P.sum())
    sd = np.sqrt(np.array([gr.var_x for gr in groups]))
    X = rng.standard_normal(n_mc) * sd[lab]
    V = rng.standard_normal(n_mc)
    return _MCSample(np.array([gr.sqrt_k for gr in groups])[lab], X, V)


def _mc_expect(smp: _MCSample, s2, g):
    xh = prox(smp.X + np.sqrt(s2) * smp.V, smp.K**2, g)
    Kc = np.sqrt(smp.K**2 + 4 * xh * xh)
    return float(np.mean((smp.X - xh) ** 2)), float(np.mean(g * Kc / (Kc + g))), 1.0


# ----------------------------------------------------------------------------------------------
# Fixed point


def _solve(alphas, groups: list[Group], *, sigma0, g_ext, damping, tol, max_iter, n_quad, method, n_mc, seed,
           solver="newton", init=None) -> ReplicaResult:
    a = np.asarray(alphas, dtype=np.float64).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ConfigError(f"alphas={a.tolist()} must be a non-empty list of finite values > 0")
    if not (0.0 <= damping < 1.0):
        raise ConfigError(f"damping={damping} must be in [0, 1)")
    if not (g_ext > 0 and tol > 0 and max_iter >= 1 and n_quad >= 8 and sigma0 >= 0):
        raise ConfigError("need g_ext > 0, tol > 0, max_iter >= 1, n_quad >= 8 and sigma0 >= 0")
    if solver not in ("newton", "damped"):
        raise ConfigError(f"solver={solver!r} must be 'newton' or 'damped'")
    if method not in ("quad", "mc"):
        raise ConfigError(f"method={method!r} must be 'quad' or 'mc'")
    P = np.array([gr.prob for gr in groups])
    VX = np.array([gr.var_x for gr in groups])
    K = np.array([gr.sqrt_k for gr in groups])
    if method == "mc":
        smp = _mc_sample(groups, n_mc, seed)
        expect = lambda s2, g: _mc_expect(smp, s2, g)  # noqa: E731
    else:
        expect = lambda s2, g: _quad_expect(P, VX, K, s2, g, n_quad)  # noqa: E731
    ex2 = float(P @ VX)

    def fmap(x: np.ndarray) -> tuple[np.ndarray, float]:
        """(log of the mapped (s^2, g), error) at x = log(s^2, g)."""
        s2, g = np.exp(x)
        err, gt, _ = expect(s2, g)
        return np.log([max(sigma0**2 + err / alpha, 1e-300), g_ext + gt / alpha]), err

    def rel_res(x: np.ndarray, fx: np.ndarray) -> float:
        return float(np.max(np.abs(np.expm1(fx - x))))  # max relative change of (s^2, g)

    def g_star(s2: float, g0: float) -> float:
        """The g solving the g-equation at fixed s^2 (unique: log(map_g / g) decreases in g)."""
        psi = lambda lg: float(np.log(g_ext + expect(s2, np.exp(lg))[1] / alpha) - lg)  # noqa: E731
        lo = hi = float(np.log(g0))
        plo = phi = psi(lo)
        for _ in range(200):
            if phi <= 0:
                break
            lo, plo, hi = hi, phi, hi + 2.0
            phi = psi(hi)
        for _ in range(200):
            if plo >= 0:
                break
            hi, phi, lo = lo, plo, lo - 2.0
            plo = psi(lo)
        if not (plo >= 0 >= phi):
            return float("nan")
        return float(np.exp(scipy.optimize.brentq(psi, lo, hi, xtol=1e-13, rtol=1e-13))) if plo > 0 > phi \
            else float(np.exp(lo if plo == 0 else hi))

    order = np.argsort(a, kind="stable")
    out = {k: np.empty(a.size) for k in ("error", "residual", "s2", "g")}
    iters = np.zeros(a.size, dtype=np.int64)
    conv = np.zeros(a.size, dtype=bool)
    state = None if init is None else np.log(np.asarray(init, dtype=np.float64))
    for idx in order:
        alpha = a[idx]
        if state is None:  # X_hat = 0 guess for s^2; g from the lazy formula, then solved given s^2
            s2_0 = sigma0**2 + ex2 / alpha + 1e-12
            g0 = max(float(P @ K) * max(1.0 / alpha - 1.0, 0.1), g_ext)
            if solver == "newton":
                g0 = g_star(s2_0, g0)
            x = np.log([s2_0, g0])
        else:
            x = state.copy()
        fx, err = fmap(x)
        res = rel_res(x, fx)
        it = 0
        while it < max_iter and np.isfinite(res) and res >= tol:
            it += 1
            r = fx - x
            moved = False
            if solver == "newton":
                # Newton on R(x) = F(x) - x in log coordinates, forward-difference Jacobian, backtracking
                h = 1e-6
                J = np.empty((2, 2))
                for j in range(2):
                    xp = x.copy()
                    xp[j] += h
                    J[:, j] = ((fmap(xp)[0] - xp) - r) / h
                try:
                    step = -np.linalg.solve(J, r)
                except np.linalg.LinAlgError:
                    step = np.full(2, np.nan)
                if np.all(np.isfinite(step)):
                    step *= min(1.0, 2.0 / max(float(np.max(np.abs(step))), 1e-300))  # at most a factor e^2
                    t, nr = 1.0, float(np.max(np.abs(r)))
                    for _ in range(4):
                        xn = x + t * step
                        fxn, errn = fmap(xn)
                        if np.all(np.isfinite(fxn)) and np.max(np.abs(fxn - xn)) < (1.0 - 1e-4 * t) * nr:
                            x, fx, err, moved = xn, fxn, errn, True
                            break
                        t *= 0.5
                if not moved:  # alternating step: g solved exactly at this s^2, then the s^2 update
                    g = g_star(float(np.exp(x[0])), float(np.exp(x[1])))
                    if np.isfinite(g):
                        x = np.array([x[0], np.log(g)])
                        fx, err = fmap(x)
                        x = np.array([np.log(damping * np.exp(x[0]) + (1.0 - damping) * np.exp(fx[0])), x[1]])
                        fx, err = fmap(x)
                        moved = True
            if not moved:  # damped fixed-point step on (s^2, g) jointly (the paper's iteration)
                x = np.log(damping * np.exp(x) + (1.0 - damping) * np.exp(fx))
                fx, err = fmap(x)
            res = rel_res(x, fx)
        s2, g = np.exp(x)
        out["error"][idx], out["residual"][idx], out["s2"][idx], out["g"][idx] = err, res, s2, g
        iters[idx], conv[idx] = it, bool(res < tol)
        if np.isfinite(res) and res < 1.0:
            state = x
    return ReplicaResult(a, out["error"], out["residual"], conv, iters, out["s2"], out["g"])


def generalization_error(alphas, *, rho_pt: float, rho_ft: float, omega: float, c_pt: float, lam_pt: float,
                         gamma: float, a_pt: float = 1.0, sigma0: float = 0.0, g_ext: float = 1e-6,
                         damping: float = 0.25, tol: float = 1e-6, max_iter: int = 1000, n_quad: int = 400,
                         method: str = "quad", n_mc: int = 80_000, seed: int = 0,
                         solver: str = "newton") -> ReplicaResult:
    """Asymptotic FT generalisation error E[(X - X_hat)^2] at each alpha (docs/paper.md section 5).

    PT from the (c_pt, lam_pt) init (lam normalised) converged to the PT teacher (value a_pt on a
    fraction rho_pt of coordinates); FT from readout scale gamma on a teacher with FT support rho_ft,
    a fraction omega of it inside the PT support, values ~ N(0, 1/rho_ft); label noise sigma0.
    Raises ConfigError for an infeasible teacher or bad input; see the module docstring for the method.
    """
    groups = channel_groups(rho_pt=rho_pt, rho_ft=rho_ft, omega=omega, c_pt=c_pt, lam_pt=lam_pt, gamma=gamma,
                            a_pt=a_pt)
    return _solve(alphas, groups, sigma0=sigma0, g_ext=g_ext, damping=damping, tol=tol, max_iter=max_iter,
                  n_quad=n_quad, method=method, n_mc=n_mc, seed=seed, solver=solver)


def generalization_error_stl(alphas, *, rho: float, c: float, sigma0: float = 0.0, g_ext: float = 1e-6,
                             damping: float = 0.25, tol: float = 1e-6, max_iter: int = 1000, n_quad: int = 400,
                             method: str = "quad", n_mc: int = 80_000, seed: int = 0,
                         solver: str = "newton") -> ReplicaResult:
    """Asymptotic error of learning from scratch (STL) on a teacher with support rho, values N(0, 1/rho).

    From the (c, lam) init (beta = 0, invariant c per coordinate) gradient flow is the mirror flow
    d beta = -2 sqrt(c^2 + beta^2) dL, whose implicit penalty is q_k with k = 4 c^2 for every lam.
    """
    if not 0.0 < rho <= 1.0:
        raise ConfigError(f"dln.rho_ft={rho} must be in (0, 1]")
    _check_init(c, 0.0, 0.0)
    groups = [Group("FT", rho, 1.0 / rho, 2.0 * c)]
    if rho < 1.0:
        groups.append(Group("zero", 1.0 - rho, 0.0, 2.0 * c))
    return _solve(alphas, groups, sigma0=sigma0, g_ext=g_ext, damping=damping, tol=tol, max_iter=max_iter,
                  n_quad=n_quad, method=method, n_mc=n_mc, seed=seed, solver=solver)
