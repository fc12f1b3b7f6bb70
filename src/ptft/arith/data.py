"""Modular-arithmetic tasks `(a op b) mod p` as a :class:`~ptft.pipeline.track.TaskData` (docs/paper.md section 9).

Inputs are the three tokens ``[a, op, b]``: a and b are residues 0..p-1, the op token is ``p + OPS.index(op)``
(a fixed vocabulary of p + len(OPS) tokens, so a model pretrained on one op can be fine-tuned on another);
the answer, a residue 0..p-1, is read at the last position.

Ops (all mod p): ``add`` a+b, ``sub`` a-b, ``mul`` a*b, ``div`` a*b^(p-2) (b != 0: the pairs with b = 0 are
not part of the task), ``x2y2`` a^2+b^2, ``lin`` 2a+b (partial overlap with add), ``perm_add`` perm[a+b]
with a fixed random permutation of the residues drawn from ``perm_seed`` (every feature of add reusable,
only the readout must change).

Splits are functions of the seeds only (numpy ``default_rng``):
- pretraining: the pairs of every op in ``pt_ops`` (pooled), a ``pt_frac`` fraction drawn with
  ``split_seed`` for training, all the others for testing;
- fine-tuning on ``ft_op``: a permutation of its pairs drawn with ``sample_seed`` (null: ``split_seed``);
  the first ``n_ft`` pairs train, ALL the remaining ones test (so for fixed seeds the n = 10 training set
  is inside the n = 20 one).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from ptft import ConfigError
from ptft.pipeline.track import Split, TaskData

OPS = ("add", "sub", "mul", "div", "x2y2", "perm_add", "lin")


@dataclass
class ModArithConfig:
    """`data=modarith` (Hydra structured config; see the module docstring)."""

    name: str = "modarith"
    p: int = 113                                     # prime modulus (Nanda et al.: 113)
    pt_ops: List[str] = field(default_factory=lambda: ["add"])  # pretraining ops (a mixture when several)
    pt_frac: float = 0.3                             # fraction of the PT pairs used for training, in (0, 1]
    ft_op: str = "sub"                               # fine-tuning op
    n_ft: Optional[int] = 200                        # FT training pairs; the rest of ft_op's pairs are the test set
    split_seed: int = 0                              # PT train/test split
    sample_seed: Optional[int] = None                # FT draw (null: split_seed)
    perm_seed: int = 0                               # the permutation of perm_add


def is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, int(p ** 0.5) + 1))


def labels(op: str, a: np.ndarray, b: np.ndarray, p: int, perm_seed: int = 0) -> np.ndarray:
    """(a op b) mod p for arrays of residues (int64)."""
    a, b = a.astype(np.int64), b.astype(np.int64)
    if op == "add":
        return (a + b) % p
    if op == "sub":
        return (a - b) % p
    if op == "mul":
        return (a * b) % p
    if op == "div":
        inv = np.array([pow(int(v), p - 2, p) for v in range(p)], dtype=np.int64)  # Fermat: b^(p-2) = 1/b
        return (a * inv[b]) % p
    if op == "x2y2":
        return (a * a + b * b) % p
    if op == "lin":
        return (2 * a + b) % p
    if op == "perm_add":
        return permutation(p, perm_seed)[(a + b) % p]
    raise ConfigError(f"unknown op {op!r}; ops: {list(OPS)}")


def permutation(p: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, p, 0x9E3]).permutation(p)


def pairs(op: str, p: int) -> tuple[np.ndarray, np.ndarray]:
    """All valid (a, b) of an op, in row-major order (div: b != 0)."""
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = a.ravel(), b.ravel()
    if op == "div":
        keep = b != 0
        a, b = a[keep], b[keep]
    return a, b


def n_pairs(op: str, p: int) -> int:
    return p * (p - 1) if op == "div" else p * p


def check_size(p: int, n_ops: int) -> None:
    """The p^2 pairs of each op (pairs, tokens, labels, splits: ~64 bytes a pair) fit in memory (ptft.limits)."""
    from ptft.limits import check_memory

    check_memory(f"data.p={p} ({n_ops} ops of {p}^2 pairs)", 64.0 * n_ops * p * p, "lower data.p")


def n_pt_train(cfg: ModArithConfig) -> int:
    """Pretraining pairs (the full batch of every PT step)."""
    return int(round(cfg.pt_frac * sum(n_pairs(o, cfg.p) for o in cfg.pt_ops)))


def validate(cfg: ModArithConfig, check_n_ft: bool = True) -> None:
    """Every data check that needs no compute (check_n_ft=False: data.n_ft is not used, e.g. pretraining)."""
    if cfg.name != "modarith":
        raise ConfigError(f"data.name={cfg.name!r}: the arithmetic data group is data=modarith "
                          f"(switch datasets with the group syntax data=cifar100|svhn|modarith)")
    p = cfg.p
    if not isinstance(p, int) or isinstance(p, bool) or p < 3:
        raise ConfigError(f"data.p={p!r} must be a prime >= 3")
    ops = list(cfg.pt_ops)
    check_size(p, len(ops) + 1)  # before the primality test, which takes ~sqrt(p) steps
    if not is_prime(p):
        raise ConfigError(f"data.p={p!r} must be a prime >= 3")
    if not ops:
        raise ConfigError("data.pt_ops=[] is empty; give at least one op of " + str(list(OPS)))
    for key, vals in (("data.pt_ops", ops), ("data.ft_op", [cfg.ft_op])):
        bad = [o for o in vals if o not in OPS]
        if bad:
            raise ConfigError(f"{key}: unknown op(s) {bad}; ops: {list(OPS)}")
    if len(set(ops)) != len(ops):
        raise ConfigError(f"data.pt_ops={ops} has repeated ops")
    f = cfg.pt_frac
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not np.isfinite(f) or not 0 < f <= 1:
        raise ConfigError(f"data.pt_frac={f!r} must be in (0, 1]")
    if n_pt_train(cfg) < 1:
        raise ConfigError(f"data.pt_frac={f} leaves no pretraining pair at p={p}")
    avail = n_pairs(cfg.ft_op, p)
    if not check_n_ft:
        pass
    elif not isinstance(cfg.n_ft, int) or isinstance(cfg.n_ft, bool) or cfg.n_ft < 1:
        raise ConfigError(f"data.n_ft={cfg.n_ft!r} must be an integer >= 1 (FT training pairs)")
    elif cfg.n_ft > avail - 1:
        raise ConfigError(f"data.n_ft={cfg.n_ft} is larger than the {avail - 1} pairs available to "
                          f"{cfg.ft_op} at p={p} (one pair at least must be left to test on)")
    for key in ("split_seed", "sample_seed", "perm_seed"):
        v = getattr(cfg, key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ConfigError(f"data.{key}={v!r} must be an integer >= 0")


def tokens(op: str, a: np.ndarray, b: np.ndarray, p: int) -> torch.Tensor:
    """(N, 3) int64 tokens [a, op, b]."""
    return torch.from_numpy(np.stack([a, np.full_like(a, p + OPS.index(op)), b], axis=1).astype(np.int64))


def _split(op_idx: list[tuple[str, np.ndarray, np.ndarray]], p: int, perm_seed: int) -> Split:
    x = torch.cat([tokens(op, a, b, p) for op, a, b in op_idx]) if op_idx else torch.zeros(0, 3, dtype=torch.long)
    y = torch.from_numpy(np.concatenate([labels(op, a, b, p, perm_seed) for op, a, b in op_idx]))
    return Split(x=x, y=y, y_orig=y.clone(), classes=list(range(p)))


def load_task(cfg: ModArithConfig) -> TaskData:
    validate(cfg)
    p = cfg.p
    # pretraining: the pooled pairs of pt_ops, a pt_frac fraction for training
    pool = [(op, *pairs(op, p)) for op in cfg.pt_ops]
    sizes = [len(a) for _, a, _ in pool]
    n_tr = int(round(cfg.pt_frac * sum(sizes)))
    order = np.random.default_rng([cfg.split_seed, p, 0x5EED]).permutation(sum(sizes))
    is_tr = np.zeros(sum(sizes), dtype=bool)
    is_tr[order[:n_tr]] = True
    offs = np.cumsum([0, *sizes])
    pt_tr, pt_te = [], []
    for i, (op, a, b) in enumerate(pool):
        m = is_tr[offs[i]:offs[i + 1]]
        pt_tr.append((op, a[m], b[m]))
        pt_te.append((op, a[~m], b[~m]))
    # fine-tuning: the first n_ft pairs of a seeded permutation of ft_op's pairs; all the rest test
    a, b = pairs(cfg.ft_op, p)
    seed = cfg.split_seed if cfg.sample_seed is None else cfg.sample_seed
    perm = np.random.default_rng([seed, p, 0xF7]).permutation(len(a))
    tr, te = perm[:cfg.n_ft], perm[cfg.n_ft:]
    return TaskData(pt_train=_split(pt_tr, p, cfg.perm_seed), pt_test=_split(pt_te, p, cfg.perm_seed),
                    ft_train=_split([(cfg.ft_op, a[tr], b[tr])], p, cfg.perm_seed),
                    ft_test=_split([(cfg.ft_op, a[te], b[te])], p, cfg.perm_seed),
                    num_classes_total=p, pt_classes=list(range(p)), ft_classes=list(range(p)))
