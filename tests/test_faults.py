"""Fault injection (issue 23): every file of a run directory, of a data root and every output path, damaged in
each of seven ways, then the same command again, in-process through its console script's entry point.

The outcome must be either a finished run whose numbers equal the undamaged run's ("recovered") or one
clear line on stderr with exit status 1 or 2 ("one line"); never a traceback, never a finished result lost
(a result is only ever moved aside as <name>.damaged-<n>, never deleted). Tracks: dln, the arithmetic
pipeline and the vision pipeline on a tiny synthetic CIFAR-100 set, each finished once per module (and, for
dln and arith, also killed mid-training: checkpoint.pt / checkpoint.start.pt). Damages: truncate, empty,
garbage bytes, a value of the wrong JSON/YAML/torch type, invalid UTF-8, a directory in its place,
unreadable (chmod 000; as root, where chmod does not stop reading, emulated by failing every open() of
the file with EACCES, as the kernel does for another user).

The full cross product is `slow`; a fast subset (every file with a few damages) runs by default. With -s
each module prints its tally: `tracks x files x damages: N recovered, M one-line errors`.
"""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from ptft.log.logger import Logger
from ptft.train.trainer import Preempted

torch.set_num_threads(1)

DAMAGES = ("truncate", "empty", "garbage", "wrong_type", "invalid_utf8", "directory", "unreadable")
FAST = ("garbage", "directory", "unreadable")  # the default subset: every file, three damages
TALLY: Counter = Counter()

DLN = ["dln.dim=20", "dln.alpha=0.5", "wandb.mode=disabled", "train.log_every=1"]
ARITH = ["data=modarith", "model=transformer", "data.p=13", "data.pt_frac=0.5", "model.d_model=16",
         "model.n_heads=2", "model.d_mlp=32", "wandb.mode=disabled", "runtime.device=cpu",
         "pretrain.train.max_steps=30", "train.max_steps=30", "train.log_every=1", "pretrain.train.log_every=1",
         "data.n_ft=40"]
VISION = ["model=resnet18_cifar", "model.width=2", "wandb.mode=disabled", "runtime.device=cpu",
          "pretrain.train.max_epochs=1", "train.max_epochs=1", "data.n_ft=6"]


def _cli(track: str):
    if track == "dln":
        from ptft.dln.cli import main
    else:
        from ptft.pipeline.main import finetune_main as main
    return main


def _argv(track: str, root: Path) -> list[str]:
    if track == "dln":
        return DLN
    if track == "arith":
        return ARITH
    return [*VISION, f"data.root={root / 'data'}"]


def run_cli(track: str, root: Path, store: Path, monkeypatch) -> tuple[int, str, str]:
    """The track's console script, in-process: (exit status, stdout, stderr). Any exception other than
    SystemExit propagates: a traceback fails the test."""
    from contextlib import redirect_stderr, redirect_stdout

    argv = ["ptft", *_argv(track, root), f"store.root={store}", f"hydra.run.dir={store.parent / 'hydra'}"]
    monkeypatch.setattr(sys, "argv", argv)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            _cli(track)()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def results(store: Path) -> dict[str, dict]:
    """{stage/hash: result without provenance} of every readable result.json under a store."""
    out = {}
    for f in sorted(store.glob("*/*/result.json")):
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        out[f"{f.parent.parent.name}/{f.parent.name}"] = {k: v for k, v in r.items() if k != "provenance"}
    return out


# ------------------------------------------------------------------------------------------------
# damages
# ------------------------------------------------------------------------------------------------
def damage(path: Path, kind: str, monkeypatch) -> None:
    data = path.read_bytes() if path.is_file() else b""
    if kind == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(len(data)).bytes(max(len(data), 64)))
    elif kind == "wrong_type":  # parses, but as the wrong kind of value
        if path.suffix == ".pt":
            torch.save([1, 2, 3], path)
        elif path.suffix == ".mat":
            from scipy.io import savemat

            savemat(str(path), {"X": np.zeros((2, 2)), "y": np.array(["a"])})
        elif path.parent.name == "cifar-100-python":
            import pickle

            path.write_bytes(pickle.dumps(["not", "a", "dict"], protocol=2))
        else:  # JSON / JSONL / YAML / text: a list where an object (or a line of objects) is expected
            path.write_bytes(b'["not", "an", "object"]\n')
    elif kind == "invalid_utf8":
        path.write_bytes(b"\xff\xfe\xfd" + data)
    elif kind == "directory":
        path.unlink()
        path.mkdir()
        (path / "inside").write_text("x")
    elif kind == "unreadable":
        unreadable(path, monkeypatch)
    else:
        raise ValueError(kind)


_HELD: list = []


@pytest.fixture(autouse=True)
def _close_held():
    yield
    while _HELD:
        _HELD.pop().close()


def unreadable(target: Path, monkeypatch) -> None:
    """chmod 000; as root (which reads anyway) every open of `target`'s inode fails with EACCES instead (as
    the kernel does for another user; a new file written in its place is readable again)."""
    if os.geteuid() != 0:
        os.chmod(target, 0)
        return
    real_open, real_os_open = builtins.open, os.open
    held = real_open(target, "rb")  # keeps the inode alive (its number not reused by a new file) till teardown
    _HELD.append(held)
    st = os.fstat(held.fileno())
    key = (st.st_dev, st.st_ino)

    def denied(file) -> bool:
        if held.closed or not isinstance(file, (str, bytes, os.PathLike)):
            return False
        try:
            s = os.stat(file)
        except OSError:
            return False
        return (s.st_dev, s.st_ino) == key

    def guarded_open(file, *a, **k):
        if denied(file):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(file))
        return real_open(file, *a, **k)

    def guarded_os_open(file, *a, **k):
        if denied(file):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(file))
        return real_os_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)


def judge(code: int, err: str, store: Path, ref: dict[str, dict], before: dict[str, dict], case: str) -> str:
    """'recovered' or 'one line' (asserting the issue's rule), for the tally."""
    now = results(store)
    if code == 0:
        assert now == ref, f"{case}: rerun finished with other numbers"
        return "recovered"
    lines = err.strip().splitlines()
    assert code in (1, 2) and len(lines) == 1 and lines[0].startswith("ptft: error:"), \
        f"{case}: exit {code}, not one clear line:\n{err}"
    for run in before:  # a finished result is kept, or moved aside (never deleted)
        d = store / run
        assert run in now or list(d.glob("result.json.damaged-*")), f"{case}: the finished result {run} was lost"
    return "one line"


# ------------------------------------------------------------------------------------------------
# finished (and killed) tiny runs of three tracks, built once per module
# ------------------------------------------------------------------------------------------------
def _preempted(track: str, root: Path, store: Path, monkeypatch, stage: str) -> None:
    orig = Logger.log

    def log(self, step, metrics):
        orig(self, step, metrics)
        if step == 8 and self.run_dir.parent.name == stage:
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(Logger, "log", log)
    code, _, err = run_cli(track, root, store, monkeypatch)
    monkeypatch.setattr(Logger, "log", orig)
    assert code == 128 + signal.SIGUSR1 and "rerun the same command to resume" in err


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory):
    """{(track, state): (root, template store, reference results, files to damage)}; state 'finished' or
    'killed' (a run stopped by a signal after its checkpoint: the state a kill leaves)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("faults")
    from ptft.vision import synthetic

    synthetic.generate(root / "data", "cifar100", n_train_per_class=4, n_test_per_class=2, seed=0)
    out = {}
    try:
        for track in ("dln", "arith", "vision"):
            store = root / track / "st"
            code, _, err = run_cli(track, root, store, mp)
            assert code == 0, err
            ref = results(store)
            files = sorted(p.relative_to(store) for p in store.glob("*/*/*") if p.is_file())
            files += sorted(p.relative_to(store) for p in store.glob("*/*.lock"))
            out[(track, "finished")] = (root, store, ref, files)
            if track == "vision":
                continue
            killed = root / track / "killed" / "st"
            if track == "arith":  # the pretraining finished, the fine-tuning killed mid-way
                shutil.copytree(store / "pretrain", killed / "pretrain")
            _preempted(track, root, killed, mp, "dln" if track == "dln" else "finetune")
            files = sorted(p.relative_to(killed) for p in killed.glob("*/*/*")
                           if p.is_file() and p.parent.parent.name != "pretrain")
            assert any(f.name == "checkpoint.pt" for f in files)
            out[(track, "killed")] = (root, killed, ref, files)
    finally:
        mp.undo()
    yield out
    if TALLY:
        print("\nfault injection:", ", ".join(f"{k}: {v}" for k, v in sorted(TALLY.items())))


def _cases(kinds):
    """(track, state, file index, damage) for every file of every made run (files are listed per run)."""
    per_run = {("dln", "finished"): 5, ("arith", "finished"): 11, ("vision", "finished"): 11,
               ("dln", "killed"): 3, ("arith", "killed"): 4}
    return [pytest.param(t, s, i, k, id=f"{t}-{s}-{i}-{k}", marks=() if k in FAST else pytest.mark.slow)
            for (t, s), n in per_run.items() for i in range(n) for k in kinds]


@pytest.mark.parametrize("track,state,index,kind", _cases(DAMAGES))
def test_damaged_run_file_recovers_or_is_one_line(made, tmp_path, monkeypatch, track, state, index, kind):
    root, template, ref, files = made[(track, state)]
    if index >= len(files):
        pytest.skip(f"the {track} {state} run has {len(files)} files")
    store = tmp_path / "st"
    shutil.copytree(template, store)
    rel = files[index]
    damage(store / rel, kind, monkeypatch)
    code, out, err = run_cli(track, root, store, monkeypatch)
    monkeypatch.undo()
    outcome = judge(code, err, store, ref, results(template), f"{track} {state} {rel} {kind}")
    TALLY[f"{track} {state} {outcome}"] += 1
    if outcome != "recovered":
        print(f"\n{track} {state} {rel} {kind}: {err.strip()}")


def test_every_file_of_the_runs_is_covered(made):
    """The case list above reaches every file the runs made (a new file in a run directory needs a case)."""
    counts = {key: len(files) for key, (_, _, _, files) in made.items()}
    assert counts == {("dln", "finished"): 5, ("arith", "finished"): 11, ("vision", "finished"): 11,
                      ("dln", "killed"): 3, ("arith", "killed"): 4}, counts
    names = {f.name for _, _, _, files in made.values() for f in files}
    assert {"config.yaml", "metrics.jsonl", "result.json", "timing.json", "model.pt", "checkpoint.pt",
            "checkpoint.start.pt"} <= names


# ------------------------------------------------------------------------------------------------
# data roots: each file of a CIFAR-100, an SVHN and a digits folder
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory):
    from ptft.vision import synthetic
    from ptft.vision.data import load_split

    base = tmp_path_factory.mktemp("roots")
    synthetic.generate(base / "cifar", "cifar100", 2, 1, seed=0)
    synthetic.generate(base / "svhn", "svhn", 2, 1, seed=0)
    out = {"cifar": ("cifar100", base / "cifar"), "svhn": ("svhn", base / "svhn")}
    try:
        from ptft.vision.digits import write_digits

        write_digits(base / "digits")
        out["digits"] = ("svhn", base / "digits")
    except Exception:  # scikit-learn missing: no digits folder
        pass
    ref = {k: [load_split(n, str(r), t) for t in (True, False)] for k, (n, r) in out.items()}
    return out, ref


DATA_FILES = {"cifar": ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta",
                        "PTFT_SYNTHETIC.json"],
              "svhn": ["train_32x32.mat", "test_32x32.mat", "PTFT_SYNTHETIC.json"],
              "digits": ["train_32x32.mat", "test_32x32.mat", "PTFT_SYNTHETIC.json"]}


@pytest.mark.parametrize("kind", DAMAGES)
@pytest.mark.parametrize("folder,rel", [(k, f) for k, fs in DATA_FILES.items() for f in fs])
def test_damaged_data_file_loads_the_same_or_is_one_line(roots, tmp_path, monkeypatch, folder, rel, kind):
    from ptft import ConfigError
    from ptft.vision.data import load_split

    found, ref = roots
    if folder not in found:
        pytest.skip("scikit-learn is not installed (ptft-data digits)")
    name, template = found[folder]
    root = tmp_path / folder
    shutil.copytree(template, root)
    damage(root / rel, kind, monkeypatch)
    try:
        got = [load_split(name, str(root), t) for t in (True, False)]
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg and (str(root / rel) in msg or str(root) in msg), msg
        TALLY[f"data {folder} one line"] += 1
        return
    finally:
        monkeypatch.undo()
    for (x, y), (x0, y0) in zip(got, ref[folder]):
        assert torch.equal(x, x0) and torch.equal(y, y0)
    TALLY[f"data {folder} recovered"] += 1


# ------------------------------------------------------------------------------------------------
# output paths: ptft-aggregate --out, ptft-plot --out, ptft-theory --csv
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [*DAMAGES, "parent_is_a_file"])
@pytest.mark.parametrize("tool", ["aggregate", "plot", "theory"])
def test_damaged_output_path_is_replaced_or_one_line(made, tmp_path, monkeypatch, capsys, tool, kind):
    from ptft.analysis import aggregate, plot
    from ptft.dln import advise

    _, store, _, _ = made[("arith", "finished")]
    out = tmp_path / ("t.png" if tool == "plot" else "t.csv")
    out.write_bytes(b"an old output\n")
    if kind == "parent_is_a_file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / out.name
    else:
        damage(out, kind, monkeypatch)
    argv = {"aggregate": [str(store), "--out", str(out)],
            "plot": [str(store), "--hue", "init.kappa", "--out", str(out)],
            "theory": ["advise", "--rho-pt", "0.1", "--rho-ft", "0.1", "--omega", "1", "--alpha", "0.2",
                       "--candidates", "1e-3,0,0", "--csv", str(out)]}[tool]
    main = {"aggregate": aggregate.main, "plot": plot.main, "theory": advise.main}[tool]
    capsys.readouterr()
    code = main(argv)
    monkeypatch.undo()
    err = capsys.readouterr().err
    if code == 0:
        assert out.is_file() and out.read_bytes() != b"an old output\n"
        TALLY[f"output {tool} written"] += 1
    else:
        assert code in (1, 2) and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        TALLY[f"output {tool} one line"] += 1
