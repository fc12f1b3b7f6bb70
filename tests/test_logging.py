"""The logging facade: metrics.jsonl always, wandb modes, resumed jobs continue their wandb run."""
import json

import pytest

from ptft import ConfigError
from ptft.log import Logger, WandbConfig


def test_metrics_jsonl_and_truncation_on_resume(tmp_path):
    with Logger(tmp_path, {}, WandbConfig(mode="disabled"), stage="s", group="g", name="n") as lg:
        for step in (10, 20, 30):
            lg.log(step, {"loss": step / 10, "inf": float("inf")})
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30] and rows[0]["inf"] == "inf"
    # a job resumed from a checkpoint at step 20 drops what came after it, then appends
    with Logger(tmp_path, {}, WandbConfig(mode="disabled"), stage="s", group="g", name="n", resume_step=20) as lg:
        lg.log(30, {"loss": 3.0})
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [10, 20, 30]
    assert not (tmp_path / "wandb").exists()  # disabled writes nothing


def test_resumed_job_continues_the_same_offline_wandb_run(tmp_path):
    for resume in (None, 1):
        with Logger(tmp_path, {"a": 1}, WandbConfig(mode="offline"), stage="dln-ptft", group="grp",
                    name="dln.lam_pt=0", resume_step=resume) as lg:
            lg.log(1 if resume is None else 2, {"loss": 0.5})
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    # one wandb run id across the kill and resume (wandb adds "-1" to a second directory made in the same second)
    assert all(r.name.split("-")[3] == run_id for r in runs), [r.name for r in runs]


def test_bad_wandb_mode(tmp_path):
    with pytest.raises(ConfigError, match="wandb.mode"):
        Logger(tmp_path / "run", {}, WandbConfig(mode="sometimes"), stage="s", group="g", name="n")
    assert not (tmp_path / "run").exists()
