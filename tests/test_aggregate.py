"""ptft-aggregate: run stores and sweep directories -> one tidy table (no cluster needed)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from ptft.analysis import aggregate as agg

CFG = {
    "dln": {"dim": 20, "lam_pt": -0.5, "seeds": None},
    "train": {"lr": 0.5, "max_steps": 100},
    "seed": 0,
    "name": "fig2",
    "force": False,
    "store": {"root": "runs"},
    "wandb": {"mode": "offline", "project": "ptft"},
}


def make_run(store: Path, name: str, cfg: dict, result: dict | None | str) -> Path:
    d = store / "dln" / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    if isinstance(result, dict):
        (d / "result.json").write_text(json.dumps(result))
    elif isinstance(result, str):
        (d / "result.json").write_text(result)
    return d


def with_(cfg: dict, **dln) -> dict:
    out = json.loads(json.dumps(cfg))
    for k, v in dln.items():
        if k in ("seed",):
            out[k] = v
        else:
            out["dln"][k] = v
    return out


@pytest.fixture
def store(tmp_path: Path) -> Path:
    s = tmp_path / "runs"
    make_run(s, "aaa", with_(CFG, lam_pt=-0.5), {"status": "ok", "steps": 40, "test_mse": 0.25})
    make_run(s, "bbb", with_(CFG, lam_pt=0.5), {"status": "diverged", "steps": 7, "test_mse": float("nan")})
    make_run(s, "ccc", with_(CFG, lam_pt=0.9), None)  # killed: config but no result
    make_run(s, "ddd", with_(CFG, lam_pt=0.0), '{"status": "ok", "ste')  # truncated by hand
    members = [{"seed": 3, "status": "ok", "test_mse": 0.1}, {"seed": 4, "status": "max_steps", "test_mse": 0.3}]
    make_run(s, "eee", with_(CFG, seeds=[3, 4]), {"status": "max_steps", "test_mse_mean": 0.2, "members": members})
    return s


def by_hash(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["run_hash"], []).append(r)
    return out


def test_flatten_nested_and_lists():
    assert agg.flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2], "f": {}}) == {
        "a.b": 1, "a.c.d": None, "e": "[1, 2]", "f": "{}"}


def test_every_run_listed_with_status(store: Path):
    rows = agg.collect(store)
    runs = by_hash(rows)
    assert set(runs) == {"aaa", "bbb", "ccc", "ddd", "eee"}  # nothing silently dropped
    assert runs["aaa"][0]["status"] == "ok" and runs["aaa"][0]["test_mse"] == 0.25
    assert runs["bbb"][0]["status"] == "diverged"
    assert runs["ccc"][0]["status"] == agg.INCOMPLETE
    assert runs["ddd"][0]["status"] == agg.UNREADABLE and "JSONDecodeError" in runs["ddd"][0]["error"]
    # config columns, dotted; non-scientific sections left out
    r = runs["ccc"][0]
    assert r["dln.lam_pt"] == 0.9 and r["train.lr"] == 0.5 and r["seed"] == 0 and r["stage"] == "dln"
    assert not any(k.startswith(("store.", "wandb.")) or k == "force" for k in r)


def test_batched_job_gives_one_row_per_member(store: Path):
    rows = by_hash(agg.collect(store))["eee"]
    assert [r["member"] for r in rows] == [0, 1]
    assert [r["seed"] for r in rows] == [3, 4]  # member keys override the job's (config seed=0)
    assert [r["status"] for r in rows] == ["ok", "max_steps"]
    assert [r["test_mse"] for r in rows] == [0.1, 0.3]
    assert all(r["test_mse_mean"] == 0.2 and r["dln.seeds"] == "[3, 4]" for r in rows)


def test_same_run_from_two_paths_counted_once(store: Path):
    n = len(agg.collect(store))
    assert len(agg.collect([store, store / "dln", store / "dln" / "aaa"])) == n == 6


def test_csv_roundtrip_and_column_order(store: Path, tmp_path: Path):
    rows = agg.collect(store)
    out = tmp_path / "sub" / "res.csv"
    text = agg.to_csv(rows, out)
    assert out.read_text() == text
    back = list(csv.DictReader(io.StringIO(text)))
    assert len(back) == len(rows)
    header = next(csv.reader(io.StringIO(text)))
    assert header[:6] == list(agg.BOOKKEEPING)
    assert header.index("dln.lam_pt") < header.index("test_mse")  # config before metrics
    assert {r["status"] for r in back} == {"ok", "diverged", "incomplete", "unreadable", "max_steps"}
    df = agg.to_frame(rows)
    assert list(df.columns) == header and len(df) == len(rows)


def _job_dir(sweep: Path, num: int, cfg: dict, cwd: Path, pointer: Path | None = None) -> Path:
    j = sweep / str(num)
    (j / ".hydra").mkdir(parents=True)
    (j / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (j / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"cwd": str(cwd)}}}))
    if pointer is not None:
        (j / agg.POINTER).write_text(str(pointer) + "\n")
    return j


def test_sweep_dir_finds_runs_in_the_store(store: Path, tmp_path: Path):
    """A sweep dir holds Hydra job dirs; runs live in the store. Found by pointer file, by the
    submitit log, or by matching config; a job that never got a run is listed as incomplete."""
    sweep = tmp_path / "multirun" / "fig2" / "2026-01-01_00-00-00_abc123"
    _job_dir(sweep, 0, with_(CFG, lam_pt=-0.5), tmp_path, pointer=store / "dln" / "aaa")
    _job_dir(sweep, 1, with_(CFG, lam_pt=0.5), tmp_path)                 # by config -> bbb
    # by the submitit log only (its config matches no run, its store is unknown) -> eee
    _job_dir(sweep, 2, with_(CFG, seeds=[3, 4], lam_pt=0.77), Path("/nonexistent"))
    _job_dir(sweep, 3, with_(CFG, lam_pt=0.123), tmp_path)               # failed before its run dir
    log = sweep / ".submitit" / "17_2" / "17_2_0_log.out"
    log.parent.mkdir(parents=True)
    log.write_text(f"training...\n{store / 'dln' / 'eee'}\nsubmitit INFO - Exiting after successful completion\n")
    rows = agg.collect(sweep)
    got = {(r["job_dir"].rsplit("/", 1)[-1], r["run_hash"], r["status"]) for r in rows}
    assert got == {("0", "aaa", "ok"), ("1", "bbb", "diverged"), ("2", "eee", "ok"), ("2", "eee", "max_steps"),
                   ("3", "", "incomplete")}
    assert next(r for r in rows if r["job_dir"].endswith("3"))["dln.lam_pt"] == 0.123


def test_cli(store: Path, tmp_path: Path, capsys):
    out = tmp_path / "r.csv"
    assert agg.main([str(store), "--out", str(out)]) == 0
    assert "6 rows" in capsys.readouterr().err
    assert len(list(csv.DictReader(out.open()))) == 6
    assert agg.main([str(tmp_path / "nope")]) == 2
    assert "no such path" in capsys.readouterr().err


def test_real_dln_runs(tmp_path: Path):
    """Against the real pipeline: a single run and a batched job, through the run store."""
    pytest.importorskip("ptft.dln.main")
    import torch

    from ptft import app
    from ptft.dln import main as dln_main

    torch.set_num_threads(1)
    common = ["dln.dim=20", "train.max_steps=300", "wandb.mode=disabled", f"store.root={tmp_path / 'runs'}"]
    run1, res1 = dln_main.run_job(app.compose("dln", common + ["seed=5"]))
    run2, res2 = dln_main.run_job(app.compose("dln", common + ["dln.seeds=[1,2]"]))
    rows = by_hash(agg.collect(tmp_path / "runs"))
    (r1,) = rows[run1.run_hash]
    assert r1["seed"] == 5 and r1["dln.dim"] == 20 and r1["status"] == res1["status"]
    assert r1["test_mse"] == res1["test_mse"] and r1["steps"] == res1["steps"]
    rs = rows[run2.run_hash]
    assert [r["seed"] for r in rs] == [1, 2]
    assert [r["test_mse"] for r in rs] == [m["test_mse"] for m in res2["members"]]
