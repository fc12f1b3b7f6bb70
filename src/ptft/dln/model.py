"""Diagonal linear network state and its closed-form initialisations (docs/paper.md sections 1-2).

Pure numpy functions of arrays, usable without torch or Hydra. A state holds the four factors
per coordinate: beta = vp * wp - vm * wm (w = first layer, v = readout, p/m = the +/- pathway).
All functions broadcast over leading axes (e.g. a batch of members x coordinates).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class DLNState(NamedTuple):
    wp: np.ndarray
    wm: np.ndarray
    vp: np.ndarray
    vm: np.ndarray


def beta(s: DLNState) -> np.ndarray:
    """The linear predictor of a state: beta = v+ w+ - v- w-."""
    return s.vp * s.wp - s.vm * s.wm


def invariants(s: DLNState) -> tuple[np.ndarray, np.ndarray]:
    """(c, lambda): absolute scale c = w+ w- + v+ v-, relative scale lambda = w+^2 - v+^2."""
    c = s.wp * s.wm + s.vp * s.vm
    lam = s.wp**2 - s.vp**2
    return c, lam


def init_state(c, lam_norm, shape=()) -> DLNState:
    """Initial state with invariants (c, lambda = lam_norm * c) and beta = 0 (docs/paper.md sec. 1)."""
    c = np.broadcast_to(np.asarray(c, dtype=np.float64), shape) if shape else np.asarray(c, np.float64)
    lam = np.asarray(lam_norm, dtype=np.float64) * c
    w = np.sqrt((c + lam) / 2.0)
    v = np.sqrt((c - lam) / 2.0)
    w, v = np.broadcast_arrays(w, v)
    return DLNState(w.copy(), w.copy(), v.copy(), v.copy())


def pt_end_state(beta_pt, c, lam) -> DLNState:
    """The unique state with beta = beta_pt and invariants (c, lam = lam_norm * c) (docs/paper.md sec. 2).

    `lam` is normalised (in [-1, 1]); `c` > 0. Broadcasts over arrays.
    """
    b = np.asarray(beta_pt, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    lam_abs = np.asarray(lam, dtype=np.float64) * c
    b, c, lam_abs = np.broadcast_arrays(b, c, lam_abs)
    B = np.arcsinh(b / c)
    # lambda = 0: w+ = v+ = a, w- = v- = c / (2a), a^2 = (b + sqrt(b^2 + c^2)) / 2
    # written as a^2 = c^2 / (2 (sqrt(b^2 + c^2) - b)) for b < 0 to avoid cancellation.
    zero = lam_abs == 0
    r = np.hypot(b, c)
    with np.errstate(divide="ignore", invalid="ignore"):
        a2 = np.where(b >= 0, (b + r) / 2.0, c**2 / (2.0 * (r - b)))
    a = np.sqrt(a2)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.abs(lam_abs)
        A = np.arccosh(np.where(zero, 1.0, c / np.where(zero, 1.0, m)))
        thp, thm = (A + B) / 2.0, (A - B) / 2.0
        sq = np.sqrt(m)
        ch_p, sh_p, ch_m, sh_m = sq * np.cosh(thp), sq * np.sinh(thp), sq * np.cosh(thm), sq * np.sinh(thm)
    pos, neg = lam_abs > 0, lam_abs < 0
    # lambda > 0: w = sqrt(lam) cosh(th), v = sqrt(lam) sinh(th); lambda < 0: roles swapped.
    wp = np.where(pos, ch_p, np.where(neg, sh_p, a))
    wm = np.where(pos, ch_m, np.where(neg, sh_m, c / (2.0 * np.where(zero, a, 1.0))))
    vp = np.where(pos, sh_p, np.where(neg, ch_p, a))
    vm = np.where(pos, sh_m, np.where(neg, ch_m, c / (2.0 * np.where(zero, a, 1.0))))
    return DLNState(wp, wm, vp, vm)


def finetune_init(state: DLNState, gamma) -> DLNState:
    """FT re-initialisation: both first-layer pathways set to their sum, readout reset to gamma/sqrt(2)."""
    w = state.wp + state.wm
    v = np.broadcast_to(np.asarray(gamma, dtype=np.float64) / np.sqrt(2.0), w.shape)
    return DLNState(w.copy(), w.copy(), v.copy(), v.copy())


def finetune_rescale(state: DLNState, s, readout) -> DLNState:
    """Lippl & Lindsey's FT re-initialisation: both first-layer pathways multiplied by s (kept
    separate), both readout pathways set to the constant `readout`."""
    v = np.broadcast_to(np.asarray(readout, dtype=np.float64), np.shape(state.wp))
    return DLNState(s * state.wp, s * state.wm, v.copy(), v.copy())


def c_finetune(beta_pt, c, lam) -> np.ndarray:
    """c_FT per coordinate, without the readout term: (c + lambda)(1 + sqrt(1 + (b/c)^2)).

    Add gamma^2 / 2 for the full c_FT of docs/paper.md section 2.
    """
    b = np.asarray(beta_pt, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    return c * (1.0 + np.asarray(lam, np.float64)) * (1.0 + np.sqrt(1.0 + (b / c) ** 2))
