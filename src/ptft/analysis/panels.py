"""The DLN figures of docs/paper.md section 7 as data: which configurations each panel compares.

Every curve is a dict of `dln.*` values (the rest at the paper's settings: rho_pt = 0.1, a_pt = 1,
c = 1e-3, lam = gamma = 0, rho_ft = 0.1). Both the simulation driver and the plots read these, and the
`ptft-dln` overrides of each point's job.
"""
from __future__ import annotations

import itertools

import numpy as np

PAPER_DEFAULTS = dict(rho_pt=0.1, a_pt=1.0, c_pt=1e-3, lam_pt=0.0, gamma=0.0, rho_ft=0.1, omega=1.0)

SCALES = {  # simulation scale: dimension and seeds
    "cpu": dict(dim=1000, seeds=5),
    "paper": dict(dim=5000, seeds=14),
    "tiny": dict(dim=200, seeds=3),
}

SIM_ALPHAS = np.round(np.linspace(0.01, 0.5, 11), 4)
THEORY_ALPHAS = np.linspace(0.01, 0.5, 80)


def _grid(**axes) -> list[dict]:
    keys = list(axes)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(axes[k] for k in keys))]


# panel -> (title, curves); the first key of each curve dict is the panel's varied knob
PANELS: dict[str, tuple[str, list[dict]]] = {
    "a": ("absolute scale c (lam = gamma = 0, rho_FT = 0.1)", _grid(c_pt=[1e-6, 1e-3, 1.0], omega=[0.0, 1.0])),
    "b": ("readout scale gamma (c = 1e-3, rho_FT = 0.1)", _grid(gamma=[0.0, 1.0, 10.0], omega=[0.0, 1.0])),
    "c": ("relative scale lam (c = 1e-3, rho_FT = 0.1)", _grid(lam_pt=[-0.99, 0.0, 0.99], omega=[0.0, 0.5, 1.0])),
    "d": ("c on new features (omega = 0)", _grid(c_pt=[1e-6, 1e-3, 1.0], rho_ft=[0.1, 0.9], omega=[0.0])),
    "e": ("gamma on new features (omega = 0, c = 1e-3)", _grid(gamma=[0.0, 1.0, 10.0], rho_ft=[0.1, 0.9], omega=[0.0])),
    "f": ("lam on a sparse subset of PT features (omega = 1)",
          _grid(lam_pt=[-0.99, 0.0, 0.99], rho_ft=[0.01, 0.04, 0.1], omega=[1.0])),
}

# the four regimes on three ground truths (theory), c = 1e-3
REGIMES = {
    "II lazy, PT-dependent": dict(lam_pt=0.0, gamma=0.0),
    "IV rich, PT-dependent": dict(lam_pt=-0.99, gamma=0.0),
    "I rich, PT-independent": dict(lam_pt=-0.999999, gamma=1e-6),
    "III lazy, PT-independent": dict(lam_pt=0.0, gamma=10.0),
}
GROUND_TRUTHS = [dict(omega=0.0, rho_ft=0.1), dict(omega=1.0, rho_ft=0.1), dict(omega=1.0, rho_ft=0.01)]


def curve_config(curve: dict) -> dict:
    """Full dln.* values of one curve."""
    return {**PAPER_DEFAULTS, **curve}


def unique_curves() -> list[dict]:
    seen, out = set(), []
    for _, curves in PANELS.values():
        for c in curves:
            cfg = curve_config(c)
            key = tuple(sorted(cfg.items()))
            if key not in seen:
                seen.add(key)
                out.append(cfg)
    return out


# ---- the ptft-dln job of each point (dln_sims runs them; dln_figures and the studies find their runs) ----
# the config columns of the sims CSV (ptft.analysis.dln_sims) and of the figures' tables (dln_figures)
CONFIG_KEYS = ["rho_pt", "a_pt", "c_pt", "lam_pt", "gamma", "rho_ft", "omega"]


def _curve_keys(curve: dict) -> dict:
    # a large readout scale (gamma = 10: c_FT >= 50) makes lr 0.5 unstable at small n: cap the step there
    return {**curve, **({"lr_cap": True} if curve.get("gamma", 0.0) >= 5 else {})}


def _common(alpha: float, dim: int, seeds: int | list[int], store: str, device: str) -> list[str]:
    """`seeds`: a count (seeds 0 .. seeds - 1) or the list of seeds."""
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    return [f"dln.alpha={alpha}", f"dln.dim={dim}", f"dln.seeds={seeds}", f"store.root={store}",
            "wandb.mode=disabled", "name=dln_sims", f"device={device}"]


def _value(v) -> str:
    return "true" if v is True else "false" if v is False else repr(v)


def job_overrides(curve: dict, alpha: float, dim: int, seeds: int, store: str, device: str = "cpu") -> list[str]:
    """The single-configuration job of one (curve, alpha): its run directory is the point's."""
    return [f"dln.{k}={_value(v)}" for k, v in _curve_keys(curve).items()] + _common(alpha, dim, seeds, store, device)


def group_overrides(curves: list[dict], alpha: float, dim: int, seeds: int | list[int], store: str,
                    device: str = "cpu") -> list[str]:
    """One multi-configuration job over `curves` at one alpha (shared X per seed)."""
    entries = ",".join("{" + ",".join(f"{k}:{_value(v)}" for k, v in _curve_keys(c).items()) + "}" for c in curves)
    return [f"dln.configs=[{entries}]"] + _common(alpha, dim, seeds, store, device)
