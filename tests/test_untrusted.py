"""Untrusted files, damaged stores and oversized requests (issue 23): a poisoned data file never runs
code, a damaged run-store file never strands a run, an invalid result is never served, nothing finished
is lost, an oversized request is refused before it allocates, and each of these ends in one line."""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from ptft import ConfigError, app
from ptft.dln.main import run_job, scientific
from ptft.log.logger import Logger, WandbConfig
from ptft.pipeline.main import run_finetune, run_pretrain
from ptft.train import store
from ptft.train.store import StoreError
from ptft.train.trainer import Preempted, Trainer
from ptft.vision import synthetic
from ptft.vision.data import load_split

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------
# 1. code execution: CIFAR-format pickles go through one restricted unpickler
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("cifar")
    synthetic.generate(r, "cifar100", 2, 1, seed=3)
    return r


class Payload:
    """Unpickling this calls `open(marker, "w")`, i.e. creates the marker file: code execution."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _poison(root: Path, rel: str, tmp_path: Path, protocol: int = 2) -> tuple[Path, Path]:
    """Replace `rel` by a pickle whose load runs the payload (inside the dict the loader expects) and
    record its sha256 in PTFT_SYNTHETIC.json, as an attacker sharing the folder would."""
    marker = tmp_path / "payload-ran"
    data = pickle.loads((root / rel).read_bytes(), encoding="latin1")
    data["batch_label" if "batch_label" in data else "fine_label_names"] = Payload(marker)
    (root / rel).write_bytes(pickle.dumps(data, protocol=protocol))
    m = json.loads((root / synthetic.MARKER).read_text())
    m["formats"]["cifar100"]["files"][rel] = synthetic.sha256_file(root / rel)
    (root / synthetic.MARKER).write_text(json.dumps(m))
    return root / rel, marker


@pytest.mark.parametrize("rel", ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"])
@pytest.mark.parametrize("protocol", [2, 5])
def test_poisoned_pickle_with_matching_marker_never_runs(cifar_root, tmp_path, rel, protocol):
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    path, marker = _poison(root, rel, tmp_path, protocol)
    with pytest.raises(ConfigError) as e:
        load_split("cifar100", str(root), train=not rel.endswith("test"))
    assert not marker.exists()  # the payload never ran
    msg = str(e.value)
    assert str(path) in msg and "io.open" in msg and "refused" in msg and "\n" not in msg


def test_real_data_path_uses_the_same_restricted_unpickler(cifar_root, tmp_path, monkeypatch):
    """Without the marker the files count as real CIFAR-100: even files that pass the MD5 check load
    through the restricted unpickler."""
    import ptft.vision.data as vd

    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    path, marker = _poison(root, "cifar-100-python/train", tmp_path)
    (root / synthetic.MARKER).unlink()
    monkeypatch.setattr(vd, "_real_problems", lambda root, name: [])  # as if the MD5s matched
    with pytest.raises(ConfigError, match="refused"):
        load_split("cifar100", str(root), train=True)
    assert not marker.exists()


def test_restricted_unpickler_reads_the_real_format(cifar_root):
    """The files ptft-data writes (Python-2 pickles, numpy's _reconstruct) and a Python-3 protocol-5 dict
    of arrays both load; the arrays are those plain pickle gives."""
    from ptft.vision.data import load_data_pickle

    f = cifar_root / "cifar-100-python" / "train"
    ours, plain = load_data_pickle(f), pickle.loads(f.read_bytes(), encoding="latin1")
    assert set(ours) == set(plain) and ours["fine_labels"] == plain["fine_labels"]
    np.testing.assert_array_equal(ours["data"], plain["data"])


def test_restricted_unpickler_accepts_only_plain_data(tmp_path):
    from ptft.vision.data import load_data_pickle

    ok = {"a": np.arange(6, dtype=np.uint8).reshape(2, 3), "b": [1, 2.5, "x", b"y", None, True],
          "c": np.float64(1.5), "d": (1, 2)}
    for proto in (2, 4, 5):
        (tmp_path / "ok").write_bytes(pickle.dumps(ok, protocol=proto))
        got = load_data_pickle(tmp_path / "ok")
        assert got["b"] == ok["b"] and got["c"] == 1.5 and np.array_equal(got["a"], ok["a"])
    for bad in (Path("x"), {1, 2}, np.array([Path("x")], dtype=object), print):
        (tmp_path / "bad").write_bytes(pickle.dumps({"data": bad}, protocol=2))
        with pytest.raises(ConfigError, match="refused"):
            load_data_pickle(tmp_path / "bad")


def _rewrite_registered(root: Path, fmt: str, rel: str, data: bytes) -> Path:
    """Replace a registered file and record its new sha256 (so only the loader's own checks can object)."""
    (root / rel).write_bytes(data)
    m = json.loads((root / synthetic.MARKER).read_text())
    m["formats"][fmt]["files"][rel] = synthetic.sha256_file(root / rel)
    (root / synthetic.MARKER).write_text(json.dumps(m))
    return root / rel


@pytest.mark.parametrize("label", [150, -1, 100])
def test_cifar_labels_out_of_range_reject_the_file(cifar_root, tmp_path, label):
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    rel = "cifar-100-python/train"
    d = pickle.loads((root / rel).read_bytes(), encoding="latin1")
    d["fine_labels"][3] = label
    path = _rewrite_registered(root, "cifar100", rel, pickle.dumps(d))
    with pytest.raises(ConfigError) as e:
        load_split("cifar100", str(root), train=True)
    assert str(path) in str(e.value) and f"outside 0..99 (e.g. {label})" in str(e.value)


def test_svhn_labels_out_of_range_reject_the_file(tmp_path):
    from scipy.io import loadmat, savemat

    root = tmp_path / "svhn"
    synthetic.generate(root, "svhn", 2, 1, seed=0)
    mat = loadmat(str(root / "test_32x32.mat"))
    mat["y"][0, 0] = 150
    savemat(str(root / "tmp.mat"), {"X": mat["X"], "y": mat["y"]})
    path = _rewrite_registered(root, "svhn", "test_32x32.mat", (root / "tmp.mat").read_bytes())
    with pytest.raises(ConfigError) as e:
        load_split("svhn", str(root), train=False)
    assert str(path) in str(e.value) and "outside 0..10 (e.g. 150)" in str(e.value)


# ------------------------------------------------------------------------------------------------
# tiny runs of two tracks, and a preempted (killed) run's state
# ------------------------------------------------------------------------------------------------
DLN = ["dln.dim=20", "dln.alpha=0.5", "wandb.mode=disabled", "train.log_every=1"]
ARITH = ["data=modarith", "model=transformer", "data.p=13", "data.pt_frac=0.5", "model.d_model=16",
         "model.n_heads=2", "model.d_mlp=32", "wandb.mode=disabled", "runtime.device=cpu",
         "pretrain.train.max_steps=30", "train.max_steps=30", "train.log_every=1", "pretrain.train.log_every=1",
         "data.n_ft=40"]


def dln_cfg(root: Path, *ov: str):
    return app.compose("dln", [f"store.root={root}", *DLN, *ov])


def arith_cfg(root: Path, *ov: str, stage: str = "finetune"):
    return app.compose(stage, [f"store.root={root}", *ARITH, *ov])


def science(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("provenance", "resumed")}


def preempt(monkeypatch, job, stage: str, at: int = 8) -> None:
    """Run `job()` with SIGUSR1 arriving at step `at` of its `stage` run: the trainer writes a checkpoint
    and raises Preempted, leaving what a killed job leaves (checkpoint, metrics.jsonl, no result)."""
    orig = Logger.log

    def log(self, step, metrics):
        orig(self, step, metrics)
        if step == at and self.run_dir.parent.name == stage:
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(Logger, "log", log)
    with pytest.raises(Preempted):
        job()
    monkeypatch.setattr(Logger, "log", orig)


# ------------------------------------------------------------------------------------------------
# 2. runs stranded by a damaged file recover by themselves
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tail", [b'{"step": 9, "train_lo', b"\xff\xfe\x00garbage\n", b"[1, 2]\n",
                                  b'{"no_step": 1}\n', b'{"step": "9"}\n'])
def test_damaged_metrics_lines_are_dropped_on_resume(tmp_path, monkeypatch, capsys, tail):
    ref_run, ref = run_job(dln_cfg(tmp_path / "ref"))
    preempt(monkeypatch, lambda: run_job(dln_cfg(tmp_path / "st")), "dln")
    path = tmp_path / "st" / "dln" / ref_run.run_hash
    m = path / "metrics.jsonl"
    m.write_bytes(m.read_bytes() + tail)
    capsys.readouterr()
    run, res = run_job(dln_cfg(tmp_path / "st"))
    assert science(res) == science(ref)
    assert m.read_bytes() == (ref_run.path / "metrics.jsonl").read_bytes()  # as if never interrupted
    assert "metrics.jsonl" in capsys.readouterr().out and list(path.glob("metrics.jsonl.damaged-*"))


def test_metrics_truncation_is_atomic(tmp_path, monkeypatch):
    """A full disk during the resume's rewrite of metrics.jsonl leaves the file as it was (StoreError)."""
    m = tmp_path / "metrics.jsonl"
    m.write_text("".join(json.dumps({"step": s, "loss": 1 / (s + 1)}) + "\n" for s in range(20)))
    before = m.read_bytes()

    def full(path, data):
        raise store._store_error(Path(path), OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(store, "_write_temp", full)
    with pytest.raises(StoreError, match="no space left"):
        Logger(tmp_path, {}, WandbConfig(mode="disabled"), stage="s", group="g", name="n", resume_step=5)
    assert m.read_bytes() == before


@pytest.mark.parametrize("damage", ["missing", "garbage", "directory"])
def test_damaged_start_state_is_rebuilt_from_the_seed(tmp_path, monkeypatch, capsys, damage):
    ref = run_finetune(arith_cfg(tmp_path / "ref"))[0][1]
    cfg = arith_cfg(tmp_path / "st")
    preempt(monkeypatch, lambda: run_finetune(cfg), "finetune")
    start = next((tmp_path / "st" / "finetune").glob("*/checkpoint.start.pt"))
    assert (start.parent / "checkpoint.pt").exists()
    start.unlink()
    if damage == "garbage":
        start.write_bytes(b"PK\x03\x04 garbage")
    elif damage == "directory":
        start.mkdir()
    capsys.readouterr()
    res = run_finetune(cfg)[0][1]
    assert science(res) == science(ref)  # param_norm_start included: the same start state
    assert "checkpoint.start.pt" in capsys.readouterr().out


def test_garbage_pt_end_state_is_moved_aside_and_retrained(tmp_path, capsys):
    ov = ("dln.pt=train", "dln.alpha_pt=1.5")
    run, ref = run_job(dln_cfg(tmp_path, *ov))
    pt = next((tmp_path / "dln_pt").glob("*/seed0.pt"))
    pt.write_bytes(b"garbage")
    run.file("result.json").unlink()  # the fine-tuning runs again and needs its PT
    capsys.readouterr()
    _, res = run_job(dln_cfg(tmp_path, *ov))
    assert science(res) == science(ref)
    assert list(pt.parent.glob("seed0.pt.damaged-*")) and "seed0.pt" in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"\xff\xfe\x00", b"", b"../../etc\n", b"a" * 200, "directory"])
def test_damaged_wandb_id_gets_a_new_one(tmp_path, capsys, content):
    from ptft.log.logger import wandb_run_id

    f = tmp_path / "wandb_id.txt"
    f.mkdir() if content == "directory" else f.write_bytes(content)
    rid = wandb_run_id(tmp_path)
    assert re.fullmatch(r"[0-9a-z]{8}", rid) and f.read_text() == rid
    assert wandb_run_id(tmp_path) == rid  # a resumed job continues the same wandb run
    assert "wandb_id.txt" in capsys.readouterr().out


def test_invalid_utf8_wandb_id_resumes_a_killed_run(tmp_path, monkeypatch):
    ref_run, ref = run_job(dln_cfg(tmp_path / "ref"))
    ov = ("wandb.mode=offline",)
    preempt(monkeypatch, lambda: run_job(dln_cfg(tmp_path / "st", *ov)), "dln")
    path = tmp_path / "st" / "dln" / ref_run.run_hash
    (path / "wandb_id.txt").write_bytes(b"\xff\xfe\xfd")
    _, res = run_job(dln_cfg(tmp_path / "st", *ov))
    assert science(res) == science(ref)


# ------------------------------------------------------------------------------------------------
# 3. an invalid result is never served: moved aside, the run runs again
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit", [lambda r: {}, lambda r: {**r, "test_mse": "banana"},
                                  lambda r: {**r, "status": 3}, lambda r: {**r, "steps": "many"},
                                  lambda r: {**r, "members": "x"}, lambda r: {**r, "train_mse": True}])
def test_invalid_dln_result_is_moved_aside_and_rerun(tmp_path, capsys, edit):
    run, ref = run_job(dln_cfg(tmp_path))
    run.file("result.json").write_text(json.dumps(edit(json.loads(run.file("result.json").read_text()))))
    capsys.readouterr()
    _, res = run_job(dln_cfg(tmp_path))
    assert science(res) == science(ref) and list(run.path.glob("result.json.damaged-*"))
    assert "result.json" in capsys.readouterr().out


@pytest.mark.parametrize("edit", [lambda r: {**r, "test_acc": "banana"}, lambda r: {"status": "ok"}])
def test_invalid_finetune_result_is_moved_aside_and_rerun(tmp_path, edit):
    run, ref = run_finetune(arith_cfg(tmp_path))[0]
    run.file("result.json").write_text(json.dumps(edit(json.loads(run.file("result.json").read_text()))))
    _, res = run_finetune(arith_cfg(tmp_path))[0]
    assert science(res) == science(ref) and list(run.path.glob("result.json.damaged-*"))


def test_aggregate_never_lists_an_invalid_result_as_ok(tmp_path):
    from ptft.analysis.aggregate import collect

    run, _ = run_job(dln_cfg(tmp_path))
    for bad in ({}, {"status": "ok", "test_mse": "banana", "steps": 3, "train_mse": 0.1}):
        run.file("result.json").write_text(json.dumps(bad))
        (row,) = collect(tmp_path)
        assert row["status"] == "unreadable" and "result.json" in row["error"]


# ------------------------------------------------------------------------------------------------
# 4. nothing finished is lost
# ------------------------------------------------------------------------------------------------
def _boom(*a, **k):
    raise RuntimeError("the rerun failed")


def test_force_keeps_the_old_result_until_the_new_one_is_written(tmp_path, monkeypatch):
    run, ref = run_job(dln_cfg(tmp_path))
    old = run.file("result.json").read_bytes()
    monkeypatch.setattr(Trainer, "run", _boom)
    with pytest.raises(RuntimeError, match="the rerun failed"):
        run_job(dln_cfg(tmp_path, "force=true"))
    assert run.file("result.json").read_bytes() == old
    monkeypatch.undo()
    assert science(run_job(dln_cfg(tmp_path))[1]) == science(ref)  # still served
    _, res = run_job(dln_cfg(tmp_path, "force=true"))  # a rerun that succeeds replaces it
    assert science(res) == science(ref) and run.file("result.json").read_bytes() != old


def test_force_keeps_the_pretrained_model_until_the_new_one_is_written(tmp_path, monkeypatch):
    run, ref = run_pretrain(arith_cfg(tmp_path, stage="pretrain"))
    old = {f: run.file(f).read_bytes() for f in ("result.json", "model.pt")}
    monkeypatch.setattr(Trainer, "run", _boom)
    with pytest.raises(RuntimeError):
        run_pretrain(arith_cfg(tmp_path, "force=true", stage="pretrain"))
    monkeypatch.undo()
    assert {f: run.file(f).read_bytes() for f in old} == old and run.finished


@pytest.mark.parametrize("out", ["t.csv", "t.png"])
def test_plot_refuses_an_output_that_is_an_input(tmp_path, monkeypatch, capsys, out):
    from ptft.analysis import plot

    monkeypatch.chdir(tmp_path)
    run_finetune(arith_cfg(tmp_path / "st"))
    from ptft.analysis.aggregate import collect, to_csv

    to_csv(collect(tmp_path / "st"), tmp_path / "t.csv")
    before = (tmp_path / "t.csv").read_bytes()
    code = plot.main(["t.csv", "--hue", "init.kappa", "--out", out])
    err = capsys.readouterr().err
    assert code == 2 and "t.csv" in err and "input" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "t.csv").read_bytes() == before


# ------------------------------------------------------------------------------------------------
# 5. oversized requests are refused before they allocate
# ------------------------------------------------------------------------------------------------
MODARITH = ["data=modarith", "model=transformer"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("config,ov,needle", [
    ("dln", ["dln.dim=1000000000"], "dln.dim=1000000000"),
    ("dln", ["dln.n_test=1000000000000"], "dln.n_test=1000000000000"),
    ("dln", ["dln.dim=1000000000", "dln.n_ft=1"], "dln.dim=1000000000"),
    ("dln", ["dln.dim=100000", "dln.pt=train", "dln.n_pt=1000000"], "dln.n_pt=1000000"),
    ("dln", ["dln.dim=30000", "dln.seeds=[0,1,2,3,4,5,6,7,8,9]"], "10 seed(s)"),
    ("pretrain", [*MODARITH, "data.p=2305843009213693951"], "data.p=2305843009213693951"),  # prime: 2^61 - 1
    ("pretrain", [*MODARITH, "data.p=1000000007"], "data.p=1000000007"),
    ("finetune", [*MODARITH, "model.d_model=1000000000"], "model.d_model=1000000000"),
    ("finetune", [*MODARITH, "model.d_model=16384", "model.n_heads=4"], "model.d_model=16384"),
    ("pretrain", ["model.width=1000000"], "model.width=1000000"),
])
def test_oversized_request_is_refused_before_it_allocates(tmp_path, monkeypatch, config, ov, needle):
    from ptft.limits import ENV

    monkeypatch.setenv(ENV, "16")  # the same limit on every machine
    with pytest.raises(ConfigError) as e:
        app.check(config, [f"store.root={tmp_path}", "wandb.mode=disabled", *ov])
    msg = str(e.value)
    assert needle in msg and "GiB" in msg and ENV in msg and "\n" not in msg
    assert not any(tmp_path.iterdir())


def test_memory_limit_is_the_machines_unless_the_environment_says(monkeypatch, tmp_path):
    from ptft import limits

    monkeypatch.delenv(limits.ENV, raising=False)
    assert limits.memory_limit() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    ov = [f"store.root={tmp_path}", "dln.dim=2000", "dln.n_test=100000"]  # 1.5 GiB of test inputs
    monkeypatch.setenv(limits.ENV, "1")
    with pytest.raises(ConfigError, match="dln.n_test=100000"):
        app.check("dln", ov)
    monkeypatch.setenv(limits.ENV, "4")
    app.check("dln", ov)
    monkeypatch.setenv(limits.ENV, "lots")
    with pytest.raises(ConfigError, match=limits.ENV):
        app.check("dln", ov)


@pytest.mark.timeout(60)
def test_ptft_data_refuses_an_oversized_set_before_writing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PTFT_MEMORY_LIMIT_GB", "16")
    code = synthetic.main(["synthetic", "--root", str(tmp_path / "d"), "--format", "cifar100",
                           "--n-train-per-class", "1000000000"])
    err = capsys.readouterr().err
    assert code == 2 and "--n-train-per-class=1000000000" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_primality_test_is_bounded():
    from ptft.arith import data as D

    assert [p for p in range(60) if D.is_prime(p)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59]
    assert D.is_prime(1_000_000_007) and not D.is_prime(1_000_000_007 * 3)  # quick either way


# ------------------------------------------------------------------------------------------------
# 6. degenerate inputs are refused
# ------------------------------------------------------------------------------------------------
def test_zero_gradient_init_is_refused_by_ptft_dln_as_by_ptft_theory(tmp_path, capsys):
    from ptft.dln import advise

    with pytest.raises(ConfigError, match=r"dln.lam_pt=-1 with dln.gamma=0 gives k = 0") as e:
        app.check("dln", [f"store.root={tmp_path}", "dln.lam_pt=-1", "dln.gamma=0"])
    assert advise.main(["advise", "--rho-pt", "0.1", "--rho-ft", "0.1", "--omega", "1", "--alpha", "0.2",
                        "--candidates", "1e-3,-1,0"]) == 2
    why = "gives k = 0 (undefined penalty; fine-tuning starts at a zero gradient and never moves)"
    assert why in str(e.value) and why in capsys.readouterr().err  # one check, shared
    for ok in (["dln.gamma=0.1"], ["dln.mode=stl"], ["dln.ft_reinit=scale"], ["dln.lam_pt=-0.999"]):
        app.check("dln", [f"store.root={tmp_path}", "dln.lam_pt=-1", "dln.gamma=0", *ok])


@pytest.mark.parametrize("marker", [b"[]", b"{}", b'{"formats": []}', b'{"formats": {"cifar100": {}}}',
                                    b'{"formats": {"cifar100": {"files": ["x"]}}}',
                                    b'{"formats": {"cifar100": {"files": {"cifar-100-python/train": 5}}}}',
                                    b"\xff\xfe{", b"{\"formats\": "])
def test_malformed_marker_is_one_clear_line(cifar_root, tmp_path, marker):
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    (root / synthetic.MARKER).write_bytes(marker)
    with pytest.raises(ConfigError) as e:
        load_split("cifar100", str(root), train=True)
    assert str(root / synthetic.MARKER) in str(e.value) and "\n" not in str(e.value)


def test_empty_store_root_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for empty in ("store.root=", "store.root=' '"):
        with pytest.raises(ConfigError, match="store.root is empty"):
            app.precheck("dln", [empty])
    assert not any(tmp_path.iterdir())


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))


@pytest.mark.timeout(60)
def test_yaml_alias_bomb_in_a_store_is_not_expanded(tmp_path, capsys):
    from ptft.analysis.aggregate import collect

    run, ref = run_job(dln_cfg(tmp_path))
    run.file("config.yaml").write_text(BOMB)  # 9^10 strings once expanded
    (row,) = collect(tmp_path)
    assert row["status"] == "ok" and not any(k.startswith("dln.") for k in row)  # config unreadable, result kept
    _, res = run_job(dln_cfg(tmp_path))  # the run's own check moves it aside and reruns
    assert science(res) == science(ref) and list(run.path.glob("config.yaml.damaged-*"))
    assert "aliases" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# 7. one line instead of a traceback
# ------------------------------------------------------------------------------------------------
def one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_output_paths_that_are_directories_or_unwritable(tmp_path, capsys):
    from ptft.analysis import aggregate, plot
    from ptft.dln import advise

    run_job(dln_cfg(tmp_path / "st"))
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "adir", tmp_path / "afile" / "t.csv", Path("/proc/ptft-test/t.csv")):
        assert aggregate.main([str(tmp_path / "st"), "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert one_line(err) and str(out) in err
        theory = ["advise", "--rho-pt", "0.1", "--rho-ft", "0.1", "--omega", "1", "--alpha", "0.2",
                  "--candidates", "1e-3,0,0", "--csv", str(out)]
        assert advise.main(theory) == 2
        err = capsys.readouterr().err
        assert one_line(err) and str(out) in err
    for out in (tmp_path / "adir.png", tmp_path / "afile" / "t.png"):
        (tmp_path / "adir.png").mkdir(exist_ok=True)
        assert plot.main([str(tmp_path / "st"), "--hue", "dln.lam_pt", "--out", str(out)]) == 2
        assert one_line(capsys.readouterr().err)


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_hydra_output_dir_that_cannot_be_made_is_refused(tmp_path, monkeypatch, key):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    multirun = ["-m"] if key == "hydra.sweep.dir" else []
    for bad in (tmp_path / "afile", tmp_path / "afile" / "sub", "/proc/ptft-test"):
        with pytest.raises(ConfigError, match=f"{key}=.*cannot create or write"):
            app.precheck("dln", [*multirun, f"{key}={bad}", "store.root=st"])
    app.precheck("dln", [*multirun, f"{key}={tmp_path / 'fine' / '${now:%H}'}", "store.root=st"])


def test_run_dir_that_is_a_file_and_lock_that_is_a_directory_are_moved_aside(tmp_path, capsys):
    run, ref = run_job(dln_cfg(tmp_path / "ref"))
    path = tmp_path / "st" / "dln" / run.path.name
    path.parent.mkdir(parents=True)
    path.write_text("not a run")
    Path(str(path) + ".lock").mkdir()
    _, res = run_job(dln_cfg(tmp_path / "st"))
    out = capsys.readouterr().out
    assert science(res) == science(ref) and "is not a directory" in out and "is not a file" in out
    assert len(list(path.parent.glob("*.damaged-*"))) == 2


def test_binary_run_dir_txt_in_a_hydra_job_is_moved_aside(tmp_path, monkeypatch, capsys):
    import sys

    from ptft.analysis.aggregate import collect
    from ptft.dln.cli import main as dln_main

    monkeypatch.chdir(tmp_path)
    job = tmp_path / "job"
    job.mkdir()
    (job / "run_dir.txt").write_bytes(b"\xff\xfe\x00\x81binary")
    monkeypatch.setattr(sys, "argv", ["ptft-dln", f"hydra.run.dir={job}", "store.root=st", *DLN])
    dln_main()
    out = capsys.readouterr().out
    assert "run_dir.txt is damaged" in out and list(job.glob("run_dir.txt.damaged-*"))
    run_dir = out.strip().splitlines()[-1]
    assert (job / "run_dir.txt").read_text().split() == [run_dir]
    (job / "run_dir.txt").write_bytes(b"\xff\xfe")  # ptft-aggregate: found through the config instead
    rows = collect(job)
    assert [r["run_dir"] for r in rows] == [run_dir] and rows[0]["status"] == "ok"


def unreadable(monkeypatch, target: Path) -> None:
    """Make `target` unreadable: chmod 000 where that works; as root (which reads anyway) emulate it by
    making every open() of it fail with EACCES, as the kernel would for another user."""
    import builtins
    import io

    if os.geteuid() != 0:
        os.chmod(target, 0)
        return
    real = builtins.open

    def guarded(file, *a, **k):
        if isinstance(file, (str, os.PathLike)) and Path(file).resolve() == target.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real(file, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)


@pytest.mark.parametrize("rel", ["cifar-100-python/train", "cifar-100-python/meta", synthetic.MARKER])
def test_unreadable_data_file_is_one_line(cifar_root, tmp_path, monkeypatch, rel):
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    unreadable(monkeypatch, root / rel)
    with pytest.raises(ConfigError) as e:
        load_split("cifar100", str(root), train=True)
    assert str(root / rel) in str(e.value) and "\n" not in str(e.value)


def test_unwritable_data_root_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for root in ("/proc/ptft-test", str(tmp_path / "afile" / "sub")):
        assert synthetic.main(["synthetic", "--root", root, "--format", "svhn", "--n-train-per-class", "2"]) == 2
        err = capsys.readouterr().err
        assert one_line(err) and root in err


def test_misleading_messages_name_the_real_cause(tmp_path, capsys):
    from ptft.dln import advise

    assert advise.main(["advise", "--rho-pt", "0.1", "--rho-ft", "0.1", "--omega", "1", "--alpha", "0.2",
                        "--candidates", "1e-300,0,0"]) == 2
    err = capsys.readouterr().err
    assert "lam = -1" not in err and "underflows" in err and "c=1e-300" in err and one_line(err)
    with pytest.raises(ConfigError) as e:  # a pretraining that diverges because of its initialisation
        run_finetune(arith_cfg(tmp_path, "init.scale=1e9"))
    assert "lower init.scale" in str(e.value)


@pytest.mark.parametrize("damage", [b"garbage", "directory"])
def test_multi_configuration_job_resumes_past_a_damaged_checkpoint(tmp_path, monkeypatch, capsys, damage):
    """dln.configs jobs (ptft.dln.multi) read their checkpoints themselves: a damaged one is moved aside too."""
    from ptft.dln.multi import run_multi

    ov = ("dln.configs=[{lam_pt:0.0},{lam_pt:0.5}]",)
    ref = [science(r) for _, r in run_multi(dln_cfg(tmp_path / "ref", *ov))]
    preempt(monkeypatch, lambda: run_multi(dln_cfg(tmp_path / "st", *ov)), "dln")
    ckpts = sorted((tmp_path / "st" / "dln").glob("*/checkpoint.pt"))
    assert ckpts
    ckpts[0].unlink()
    ckpts[0].mkdir() if damage == "directory" else ckpts[0].write_bytes(damage)
    capsys.readouterr()
    assert [science(r) for _, r in run_multi(dln_cfg(tmp_path / "st", *ov))] == ref
    assert "checkpoint.pt is unreadable" in capsys.readouterr().out


def test_a_lock_that_cannot_be_opened_is_one_line_and_never_replaced(tmp_path, monkeypatch):
    """Another user's lock (EACCES) is not moved aside (that would let two jobs run the same run)."""
    cfg = dln_cfg(tmp_path)
    lock = Path(str(store.RunDir(tmp_path, "dln", scientific(cfg)).path) + ".lock")
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    real = os.open

    def denied(path, *a, **k):
        if os.fspath(path) == str(lock):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(StoreError, match="cannot open the lock") as e:
        run_job(cfg)
    assert "\n" not in str(e.value) and lock.is_file() and not list(lock.parent.glob("*.damaged-*"))
