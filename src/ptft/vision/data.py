"""CIFAR-100 / SVHN as resident uint8 tensors, split into pretraining and fine-tuning tasks (LL protocol).

Files are checked before they are read: real data against torchvision's MD5 list (``data.download=true``
fetches it with torchvision's downloader), a dataset written by ``ptft-data`` (listed in
``<root>/PTFT_SYNTHETIC.json``) against the sha256s recorded there. A checksum only says the file is the
one expected, not that it is harmless (the marker sits in the same folder as the files), so the
CIFAR-format pickles are then read by ONE restricted unpickler (:func:`load_data_pickle`: numpy arrays,
lists, dicts, strings, bytes and numbers; any other global is refused before anything is called) and
the arrays and labels are checked (shape, dtype, labels in range), each failure one line naming the
file. SVHN's ``.mat`` files are read with ``scipy.io.loadmat`` (no code in that format).

Splits (all seeded with numpy's ``default_rng``, so identical on every platform):

- classes: a permutation of all classes drawn with ``split_seed``; FT classes are the LAST
  ``ft_classes`` of it, PT classes the first ``pt_classes`` of the rest (None: all the rest, i.e.
  98/2 on CIFAR-100 as Lippl & Lindsey, 8/2 on SVHN). ``ft_class_list`` / ``pt_class_list``, when
  given, override the counts (and the drawn classes avoid them).
- other FT tasks of one pretraining: ``ft_task = i`` takes the i-th group of ``ft_classes`` held-out
  classes counted from the end of the permutation (0: the last ones, as above; 1: the ``ft_classes``
  before them, ...). The PT classes must not depend on it, so ``ft_task > 0`` needs ``pt_classes`` (or
  ``pt_class_list``): e.g. ``pt_classes=90`` leaves 10 held-out CIFAR-100 classes, 5 FT pairs.
- labels are remapped within each stage: stage label ``k`` is original class ``classes[k]``
  (``Split.y``); the original labels are kept in ``Split.y_orig`` (LL's reused 100-way head trains
  and fine-tunes on original labels).
- FT training images: ``n_ft`` images drawn without replacement (seed ``sample_seed``, default
  derived from ``split_seed``). Default ``ft_balanced=False`` is LL's rule: draw from the FT classes'
  POOLED train images, so class counts vary (at n=10 a class may get 2 images, or none).
  ``ft_balanced=True`` draws ``n_ft // K`` per class (the first ``n_ft % K`` classes get one more).
  Both rules are nested: for fixed seeds the n=10 set is a subset of the n=20 set, and so on.
- FT test: all test images of the FT classes; PT train: all train images of the PT classes
  (``n_pt`` subsamples them, pooled); PT test: all test images of the PT classes.

Images are uint8 ``(N, 3, 32, 32)`` (NCHW, contiguous) and labels int64, so a fast path can keep
them on the device and normalise there with :func:`normalize` (ToTensor + Normalize(0.5, 0.5)).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from ptft import ConfigError
from ptft.pipeline.track import Split, TaskData
from ptft.train.store import sha256_file
from ptft.vision.formats import CIFAR_DIR, MARKER, NUM_CLASSES, dataset_files, read_marker

__all__ = ["DataConfig", "Split", "TaskData", "validate_data_config", "split_classes", "load_split",
           "load_task", "normalize", "NUM_CLASSES"]


@dataclass
class DataConfig:
    """Dataset and PT/FT split (Hydra structured config; see the module docstring)."""

    name: str = "cifar100"  # cifar100 | svhn
    root: str = "data"  # holds cifar-100-python/ or {train,test}_32x32.mat
    download: bool = False  # let torchvision download the real data (needs internet)
    ft_classes: int = 2  # number of FT classes (ignored when ft_class_list is given)
    pt_classes: Optional[int] = None  # number of PT classes; None: all classes not used for FT
    ft_class_list: Optional[List[int]] = None  # explicit FT classes (original labels)
    pt_class_list: Optional[List[int]] = None  # explicit PT classes (original labels)
    split_seed: int = 0  # seed of the class permutation
    n_ft: Optional[int] = 100  # FT training images; None: all train images of the FT classes
    ft_balanced: bool = False  # False: LL's pooled draw; True: n_ft // K per class
    sample_seed: Optional[int] = None  # seed of the FT (and PT) image draws; None: from split_seed
    n_pt: Optional[int] = None  # PT training images (pooled draw); None: all
    ft_task: int = 0  # which group of ft_classes held-out classes is the FT task (0: the last; see above)


def normalize(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images -> ToTensor + Normalize(0.5, 0.5), bit-identical to torchvision's ops (x/255-0.5)/0.5."""
    return x.to(dtype).div_(255).sub_(0.5).div_(0.5)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _check_list(key: str, values: Optional[List[int]], n_total: int) -> Optional[List[int]]:
    if values is None:
        return None
    vals = list(values)
    if not vals or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
        raise ConfigError(f"data.{key}={vals} must be a non-empty list of integer class labels")
    bad = [v for v in vals if not 0 <= v < n_total]
    if bad:
        raise ConfigError(f"data.{key}={vals}: labels {bad} out of range 0..{n_total - 1}")
    if len(set(vals)) != len(vals):
        raise ConfigError(f"data.{key}={vals} has repeated classes")
    return [int(v) for v in vals]


def validate_data_config(cfg: DataConfig) -> None:
    """Check every knob that does not need the images (call before any compute)."""
    if cfg.name not in NUM_CLASSES:
        raise ConfigError(f"data.name={cfg.name!r} must be one of {sorted(NUM_CLASSES)}")
    split_classes(cfg)
    for key in ("n_ft", "n_pt"):
        v = getattr(cfg, key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"data.{key}={v!r} must be an integer >= 1 (or null for all images)")
    for key in ("split_seed", "sample_seed"):
        v = getattr(cfg, key)
        if v is not None and (not isinstance(v, int) or v < 0):
            raise ConfigError(f"data.{key}={v!r} must be an integer >= 0")
    n_ft_cls = len(cfg.ft_class_list) if cfg.ft_class_list is not None else cfg.ft_classes
    if cfg.ft_balanced and cfg.n_ft is not None and cfg.n_ft < n_ft_cls:
        raise ConfigError(f"data.n_ft={cfg.n_ft} < {n_ft_cls} FT classes with data.ft_balanced=true: "
                          f"every class needs at least one image; raise n_ft or set ft_balanced=false")


def split_classes(cfg: DataConfig) -> tuple[List[int], List[int]]:
    """(pt_classes, ft_classes) as original labels, in stage-label order."""
    if cfg.name not in NUM_CLASSES:
        raise ConfigError(f"data.name={cfg.name!r} must be one of {sorted(NUM_CLASSES)}")
    n_total = NUM_CLASSES[cfg.name]
    ft_list = _check_list("ft_class_list", cfg.ft_class_list, n_total)
    pt_list = _check_list("pt_class_list", cfg.pt_class_list, n_total)
    if ft_list is not None and pt_list is not None and set(ft_list) & set(pt_list):
        raise ConfigError(f"data.pt_class_list and data.ft_class_list share classes "
                          f"{sorted(set(ft_list) & set(pt_list))}: PT and FT classes must be disjoint")
    if not isinstance(cfg.split_seed, int) or cfg.split_seed < 0:
        raise ConfigError(f"data.split_seed={cfg.split_seed!r} must be an integer >= 0")
    perm = [int(c) for c in np.random.default_rng(cfg.split_seed).permutation(n_total)]
    task = cfg.ft_task
    if not isinstance(task, int) or isinstance(task, bool) or task < 0:
        raise ConfigError(f"data.ft_task={task!r} must be an integer >= 0 (0: the last held-out classes)")
    if task and ft_list is not None:
        raise ConfigError(f"data.ft_task={task} picks among drawn FT classes; with data.ft_class_list set, "
                          f"leave it 0 and list the classes you want")
    if task and pt_list is None and cfg.pt_classes is None:
        raise ConfigError(f"data.ft_task={task} needs data.pt_classes (or data.pt_class_list): with null, PT "
                          f"trains on every class but the FT ones, so PT would change with the FT task")
    if ft_list is None:
        n_ft_cls = cfg.ft_classes
        if not isinstance(n_ft_cls, int) or n_ft_cls < 2:
            raise ConfigError(f"data.ft_classes={n_ft_cls!r} must be an integer >= 2 (a classification task)")
        pool = [c for c in perm if pt_list is None or c not in pt_list]
        if n_ft_cls > len(pool) - (0 if pt_list is not None else 2):
            raise ConfigError(f"data.ft_classes={n_ft_cls} leaves too few of the {n_total} {cfg.name} classes "
                              f"for pretraining (need >= 2)")
        if task:  # groups counted from the end, clear of the first pt_classes (the PT classes)
            front = 0 if pt_list is not None else cfg.pt_classes
            n_tasks = (len(pool) - front) // n_ft_cls if isinstance(front, int) and front >= 0 else 0
            if task >= n_tasks:
                raise ConfigError(f"data.ft_task={task}: the {len(pool) - front} held-out classes hold {n_tasks} "
                                  f"FT tasks of data.ft_classes={n_ft_cls} (ft_task 0..{n_tasks - 1}); lower it "
                                  f"or data.pt_classes")
        end = len(pool) - n_ft_cls * task
        ft_list = pool[end - n_ft_cls:end]
    elif len(ft_list) < 2:
        raise ConfigError(f"data.ft_class_list={ft_list} needs >= 2 classes (a classification task)")
    if pt_list is None:
        pool = [c for c in perm if c not in ft_list]
        n_pt_cls = len(pool) if cfg.pt_classes is None else cfg.pt_classes
        if not isinstance(n_pt_cls, int) or not 2 <= n_pt_cls <= len(pool):
            raise ConfigError(f"data.pt_classes={cfg.pt_classes!r} must be an integer in 2..{len(pool)} "
                              f"({n_total} {cfg.name} classes minus {len(ft_list)} FT classes), or null for all")
        pt_list = pool[:n_pt_cls]
    elif len(pt_list) < 2:
        raise ConfigError(f"data.pt_class_list={pt_list} needs >= 2 classes")
    return pt_list, ft_list


# ----------------------------------------------------------------------------------------------
# Loading: checksums, then the restricted readers
# ----------------------------------------------------------------------------------------------
# numpy's array reconstruction, by exact qualified name (numpy 1 and 2 spell the modules differently):
# the only globals a CIFAR-format pickle may name. Everything else in such a file is a list, dict,
# tuple, string, bytes or number, which the unpickler builds without calling anything.
_NUMPY_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype")} | {
    (f"numpy.{core}.{mod}", name) for core in ("core", "_core")
    for mod, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}


class _DataUnpickler(pickle.Unpickler):
    """Unpickles plain data only: refuses every global but numpy's array reconstruction (so a file whose
    pickle would call os.system, open, eval, ... fails before anything is called)."""

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 writes bytes from Python 3
            return _latin1_bytes
        if (module, name) not in _NUMPY_GLOBALS:
            raise _Refused(f"{module}.{name}")
        import importlib

        try:
            return getattr(importlib.import_module(module.replace(".core.", "._core.")), name)
        except ImportError:  # numpy < 2
            return getattr(importlib.import_module(module.replace("._core.", ".core.")), name)

    def persistent_load(self, pid):  # type: ignore[override]
        raise _Refused("a persistent id")


class _Refused(pickle.UnpicklingError):
    pass


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    if encoding != "latin1" or not isinstance(text, str):
        raise _Refused(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


def load_data_pickle(path: Path) -> object:
    """A CIFAR-format pickle (train / test / meta, real or synthetic) through the restricted unpickler:
    numpy arrays, dtypes, lists, dicts, tuples, strings, bytes and numbers only. Anything else, or a
    file that is not a pickle, is a ConfigError naming the file; nothing in the file is ever run."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _DataUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise ConfigError(f"{path}: refused without loading it: its pickle refers to {e}, which a data file "
                          f"never needs (only numpy arrays, lists, dicts, strings, bytes and numbers are "
                          f"allowed); it may be malicious: delete it and regenerate or re-download the "
                          f"dataset") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e}); check its permissions") from None
    except Exception as e:  # a damaged pickle raises many types (EOFError, ValueError, MemoryError, ...)
        raise ConfigError(f"{path}: not a readable data pickle ({type(e).__name__}: {str(e)[:80]}); "
                          f"regenerate or re-download the dataset") from None
    return obj


def _check_labels(path: Path, labels: np.ndarray, lo: int, hi: int) -> None:
    bad = labels[(labels < lo) | (labels > hi)] if labels.size else labels
    if bad.size:
        raise ConfigError(f"{path}: {bad.size} labels outside {lo}..{hi} (e.g. {int(bad[0])}); the file is "
                          f"damaged or not in this format: regenerate or re-download the dataset")


def _read_cifar(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(x NCHW uint8, fine labels int64) of cifar-100-python/{train,test}, as torchvision reads them."""
    meta_path = root / CIFAR_DIR / "meta"
    meta = load_data_pickle(meta_path)
    names = meta.get("fine_label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != NUM_CLASSES["cifar100"]:
        raise ConfigError(f"{meta_path}: no list of {NUM_CLASSES['cifar100']} fine_label_names; "
                          f"the file is damaged: regenerate or re-download the dataset")
    path = root / CIFAR_DIR / ("train" if train else "test")
    d = load_data_pickle(path)
    data = d.get("data") if isinstance(d, dict) else None
    labels = d.get("fine_labels") if isinstance(d, dict) else None
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        y = None
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072
            or y is None or y.shape != (len(data),)):
        raise ConfigError(f"{path}: expected 'data' (N x 3072 uint8) and N 'fine_labels'; the file is damaged "
                          f"or not CIFAR-100: regenerate or re-download the dataset")
    _check_labels(path, y, 0, NUM_CLASSES["cifar100"] - 1)
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32)), y


def _read_svhn(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(x NCHW uint8, labels int64 with 10 -> 0) of {train,test}_32x32.mat, as torchvision reads them."""
    from scipy.io import loadmat

    path = root / f"{'train' if train else 'test'}_32x32.mat"
    try:
        mat = loadmat(str(path))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e}); check its permissions") from None
    except Exception as e:  # scipy raises many types on a damaged MAT file
        raise ConfigError(f"{path}: not a readable MAT file ({type(e).__name__}: {str(e)[:80]}); "
                          f"regenerate or re-download the dataset") from None
    x, y = mat.get("X"), mat.get("y")
    if (not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3)
            or not isinstance(y, np.ndarray) or y.size != x.shape[3] or not np.issubdtype(y.dtype, np.integer)):
        raise ConfigError(f"{path}: expected X (32, 32, 3, N) uint8 and N integer labels y; the file is damaged "
                          f"or not SVHN: regenerate or re-download the dataset")
    y = y.astype(np.int64).reshape(-1)
    _check_labels(path, y, 0, NUM_CLASSES["svhn"])  # SVHN writes the digit 0 as 10
    y[y == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y


def _download(root: Path, name: str) -> None:
    """torchvision's download (its archive MD5 checked); the files are then read as any others."""
    from torchvision.datasets import CIFAR100, SVHN
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    if name == "cifar100":
        download_and_extract_archive(CIFAR100.url, str(root), filename=CIFAR100.filename, md5=CIFAR100.tgz_md5)
    else:
        for url, filename, md5 in (SVHN.split_list[s] for s in ("train", "test")):
            download_url(url, str(root), filename, md5)


def _synthetic_problems(root: Path, name: str) -> List[str]:
    recorded = read_marker(root)["formats"][name]["files"]
    problems = []
    for rel in dataset_files(name):
        path = root / rel
        if rel not in recorded:
            problems.append(f"{path} is not listed in {root / MARKER}")
        elif not path.is_file():
            problems.append(f"{path} is missing" + (" (a directory stands in its place)" if path.is_dir() else ""))
        elif _unreadable(path, problems):
            continue
        elif sha256_file(path) != recorded[rel]:
            problems.append(f"{path} does not match the sha256 recorded in {root / MARKER} (corrupt or modified)")
    return problems


def _unreadable(path: Path, problems: List[str]) -> bool:
    """Whether `path` cannot be opened for reading (then says why in `problems`)."""
    try:
        with open(path, "rb"):
            return False
    except OSError as e:
        problems.append(f"{path} cannot be read ({e.strerror or e}; check its permissions)")
        return True


def _real_problems(root: Path, name: str) -> List[str]:
    from torchvision.datasets import CIFAR100, SVHN
    from torchvision.datasets.utils import check_integrity

    if name == "cifar100":
        expected = [(f"{CIFAR100.base_folder}/{f}", md5) for f, md5 in CIFAR100.train_list + CIFAR100.test_list]
        expected.append((f"{CIFAR100.base_folder}/{CIFAR100.meta['filename']}", CIFAR100.meta["md5"]))
    else:
        expected = [(v[1], v[2]) for k, v in SVHN.split_list.items() if k != "extra"]
    problems = []
    for rel, md5 in expected:
        path = root / rel
        if not path.is_file():
            problems.append(f"{path} is missing" + (" (a directory stands in its place)" if path.is_dir() else ""))
        elif _unreadable(path, problems):
            continue
        elif not check_integrity(str(path), md5):
            problems.append(f"{path} fails torchvision's MD5 check (corrupt or incomplete)")
    return problems


def _dataset_error(root: Path, name: str, problems: List[str], synthetic: bool, cause: str = "") -> ConfigError:
    expected = ", ".join(str(root / f) for f in dataset_files(name))
    what = "synthetic " if synthetic else ""
    fixes = (f"regenerate it with `ptft-data synthetic --root {root} --format {name}`"
             if synthetic else
             f"download it (data.download=true, needs internet), point data.root at a directory that "
             f"holds it, or write a synthetic stand-in with `ptft-data synthetic --root {root} --format {name}`")
    detail = "; ".join(problems) if problems else cause
    return ConfigError(f"data.name={name}: {detail} ({what}dataset not found or corrupted under data.root={root}; "
                       f"expected {expected}). To fix: {fixes}.")


def _file_stamp(root: Path, name: str) -> tuple:
    """(path, size, mtime) of the dataset files and marker: the cache key, so edited files are re-read."""
    stamp = []
    for rel in [*dataset_files(name), MARKER]:
        try:
            st = (root / rel).stat()
            stamp.append((rel, st.st_size, st.st_mtime_ns))
        except OSError:
            stamp.append((rel, None, None))
    return tuple(stamp)


@lru_cache(maxsize=4)
def _load_cached(name: str, root: str, train: bool, download: bool, stamp: tuple
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    rootp = Path(root)
    synthetic = name in read_marker(rootp).get("formats", {})
    if synthetic:
        problems = _synthetic_problems(rootp, name)
    else:
        problems = _real_problems(rootp, name)
        if problems and download:
            try:
                _download(rootp, name)
            except (RuntimeError, OSError, ValueError) as e:
                raise _dataset_error(rootp, name, [], False, cause=f"download failed: {type(e).__name__}: {e}") \
                    from None
            problems = _real_problems(rootp, name)
    if problems:
        raise _dataset_error(rootp, name, problems, synthetic)
    x, y = (_read_cifar if name == "cifar100" else _read_svhn)(rootp, train)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    x_t.requires_grad_(False)
    return x_t, y_t


def load_split(name: str, root: str, train: bool, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of one split: uint8 (N, 3, 32, 32) and int64 original labels (cached; do not modify)."""
    if name not in NUM_CLASSES:
        raise ConfigError(f"data.name={name!r} must be one of {sorted(NUM_CLASSES)}")
    rootp = Path(os.path.expanduser(root)).absolute()
    return _load_cached(name, str(rootp), bool(train), bool(download), _file_stamp(rootp, name))


def _draw(rng: np.random.Generator, labels: np.ndarray, pool_idx: np.ndarray, n: Optional[int],
          classes: List[int], balanced: bool, key: str) -> np.ndarray:
    """Indices (sorted) of ``n`` images drawn without replacement from ``pool_idx``; nested in n."""
    if n is None:
        return pool_idx
    if n > len(pool_idx):
        raise ConfigError(f"data.{key}={n} exceeds the {len(pool_idx)} available train images of its classes")
    if not balanced:
        return np.sort(rng.permutation(pool_idx)[:n])
    k = len(classes)
    per_class = [n // k + (1 if i < n % k else 0) for i in range(k)]
    chosen = []
    for c, m in zip(classes, per_class):
        idx_c = pool_idx[labels[pool_idx] == c]
        if m > len(idx_c):
            raise ConfigError(f"data.{key}={n} with ft_balanced=true needs {m} images of class {c}, "
                              f"only {len(idx_c)} exist")
        chosen.append(rng.permutation(idx_c)[:m])
    return np.sort(np.concatenate(chosen))


def _subset(x: torch.Tensor, y: torch.Tensor, idx: np.ndarray, classes: List[int], n_total: int) -> Split:
    remap = torch.full((n_total,), -1, dtype=torch.int64)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    idx_t = torch.from_numpy(idx)
    y_orig = y[idx_t]
    return Split(x=x[idx_t], y=remap[y_orig], y_orig=y_orig, classes=list(classes))


def load_task(cfg: DataConfig) -> TaskData:
    """Load the dataset of ``cfg`` and split it into PT/FT train/test sets (see module docstring)."""
    validate_data_config(cfg)
    pt_cls, ft_cls = split_classes(cfg)
    n_total = NUM_CLASSES[cfg.name]
    xtr, ytr = load_split(cfg.name, cfg.root, True, cfg.download)
    xte, yte = load_split(cfg.name, cfg.root, False, cfg.download)
    ytr_np, yte_np = ytr.numpy(), yte.numpy()
    seed = cfg.split_seed if cfg.sample_seed is None else cfg.sample_seed
    ft_pool = np.flatnonzero(np.isin(ytr_np, ft_cls))
    pt_pool = np.flatnonzero(np.isin(ytr_np, pt_cls))
    ft_idx = _draw(np.random.default_rng([seed, 1]), ytr_np, ft_pool, cfg.n_ft, ft_cls, cfg.ft_balanced, "n_ft")
    pt_idx = _draw(np.random.default_rng([seed, 2]), ytr_np, pt_pool, cfg.n_pt, pt_cls, False, "n_pt")
    return TaskData(
        pt_train=_subset(xtr, ytr, pt_idx, pt_cls, n_total),
        pt_test=_subset(xte, yte, np.flatnonzero(np.isin(yte_np, pt_cls)), pt_cls, n_total),
        ft_train=_subset(xtr, ytr, ft_idx, ft_cls, n_total),
        ft_test=_subset(xte, yte, np.flatnonzero(np.isin(yte_np, ft_cls)), ft_cls, n_total),
        num_classes_total=n_total, pt_classes=pt_cls, ft_classes=ft_cls,
    )
