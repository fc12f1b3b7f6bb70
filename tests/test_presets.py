"""Presets belong to their app: conf/experiment/<track>/ folders, each app lists and accepts only its own
presets and groups (a foreign one ends with one line naming its app), and every app has a smoke preset
that runs the whole pipeline in seconds."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import ptft.dln.main  # noqa: F401  (registers the schemas of each app's primary config)
import ptft.pipeline.main  # noqa: F401
from ptft import ConfigError, app

def _main(script: str):
    """The function behind a console script, per this tree's pyproject.toml (not installed metadata)."""
    import importlib
    import tomllib

    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
        module, fn = tomllib.load(f)["project"]["scripts"][script].split(":")
    return getattr(importlib.import_module(module), fn)


def test_every_preset_folder_belongs_to_an_app():
    folders = {p.name for p in (app.conf_dir() / "experiment").iterdir() if p.is_dir()}
    assert folders == {t for _, _, tracks in app.APPS.values() for t in tracks}
    assert not list((app.conf_dir() / "experiment").glob("*.yaml"))  # nothing outside a track folder
    for name, (_, _, tracks) in app.APPS.items():
        assert {p.split("/")[0] for p in app.presets(name)} == set(tracks)
        assert f"{tracks[0]}/smoke" in app.presets(name)


@pytest.mark.parametrize("name", sorted(app.APPS))
def test_a_foreign_preset_or_group_names_the_app_that_owns_it(name):
    script = app.APPS[name][0]
    foreign = sorted(set(app.presets()) - set(app.presets(name)))
    assert foreign
    for p in foreign:
        owner = " and ".join(s for s, _, tracks in app.APPS.values() if p.split("/")[0] in tracks)
        with pytest.raises(ConfigError, match=f"experiment={p} belongs to {owner}, not {script}"):
            app.check(name, [f"experiment={p}"])
    with pytest.raises(ConfigError, match="belongs to"):  # also inside a sweep, before the preset's sweep is read
        app.precheck(name, ["-m", f"experiment={app.presets(name)[0]},{foreign[0]}"])
    for group in {g for _, groups, _ in app.APPS.values() for g in groups} - set(app.APPS[name][1]):
        with pytest.raises(ConfigError, match=f"{group}=x belongs to .*, not {script}"):
            app.check(name, [f"{group}=x"])


def test_old_flat_names_point_to_the_new_ones():
    renamed = {"dln_panel_a": "dln/panel_a", "ll_dln_rescale": "dln/ll_rescale", "digits_rescale": "digits/rescale",
               "modarith_demo": "arith/modarith_demo", "demo_synthetic": "vision/demo_synthetic"}
    for old, new in renamed.items():
        for name in app.APPS:
            with pytest.raises(ConfigError, match=f"experiment={old}: .* did you mean experiment={new} "):
                app.check(name, [f"experiment={old}"])


def test_help_lists_only_the_apps_own_presets_and_a_foreign_preset_exits_2(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("dln", "finetune"):
        monkeypatch.setattr(sys, "argv", [app.APPS[name][0], "--help"])
        with pytest.raises(SystemExit) as e:
            _main(app.APPS[name][0])()
        assert not e.value.code
        out = capsys.readouterr().out
        groups = out.split("== Configuration groups ==")[1].split("== Config ==")[0]
        listed = {p.strip() for line in groups.splitlines() if line.startswith("experiment:")
                  for p in line.split(":", 1)[1].split(",")}
        assert listed == set(app.presets(name)), out
        assert out.startswith(app.APPS[name][0])
        assert ("data:" in groups) == ("data" in app.APPS[name][1])
    monkeypatch.setattr(sys, "argv", ["ptft-finetune", "experiment=dln/panel_a"])
    with pytest.raises(SystemExit) as e:
        _main("ptft-finetune")()
    assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
        "ptft: error: experiment=dln/panel_a belongs to ptft-dln, not ptft-finetune (`ptft-finetune --help` "
        "lists its presets)"]
    assert not any(tmp_path.iterdir())  # nothing written


def _result(run) -> dict:
    return json.loads(run.file("result.json").read_text())


@pytest.mark.parametrize("track", ["dln", "vision", "arith"])
def test_smoke_preset_runs_the_whole_pipeline(track, tmp_path):
    """experiment=<track>/smoke end to end in-process (what the README's examples run): a result.json with
    status ok for every run, PT included."""
    store = [f"store.root={tmp_path / 'runs'}"]
    if track == "dln":
        from ptft.dln.main import run_job

        run, res = run_job(app.check("dln", ["experiment=dln/smoke", *store]))
        assert _result(run)["status"] == res["status"] == "ok" and len(res["members"]) == 2
        return
    from ptft.pipeline.main import run_finetune

    if track == "vision":
        from ptft.vision import synthetic

        assert synthetic.main(["synthetic", "--root", str(tmp_path / "smoke"), "--format", "svhn",
                               "--n-train-per-class", "20", "--n-test-per-class", "10"]) == 0
        store.append(f"data.root={tmp_path / 'smoke'}")
    done = run_finetune(app.check("finetune", [f"experiment={track}/smoke", *store]))
    assert len(done) == 2 and all(_result(run)["status"] == "ok" for run, _ in done)
    pts = list((tmp_path / "runs" / "pretrain").glob("*/result.json"))
    assert len(pts) == 1 and json.loads(pts[0].read_text())["status"] == "ok"
