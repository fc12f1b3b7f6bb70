"""The import house: the contracts of pyproject.toml [tool.importlinter] hold, lower layers load no track at run
time, and tracks plug into the pipeline through the registry (ptft.pipeline.track), not through imports."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRACKS = ("ptft.vision", "ptft.arith", "ptft.dln")


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_lint_imports_keeps_every_contract() -> None:
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra: pip install -e '.[dev]'")
    exe = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(exe), "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout and "layers" in proc.stdout and "no import circles" in proc.stdout


@pytest.mark.parametrize("modules, forbidden", [
    (("ptft.pipeline.main", "ptft.pipeline.config", "ptft.pipeline.diagnostics"), TRACKS + ("ptft.analysis",)),
    (("ptft.train.trainer", "ptft.train.store", "ptft.log", "ptft.app"), TRACKS + ("ptft.pipeline",)),
    (("ptft",), ("ptft.",)),  # the package's own helpers (ConfigError, ArgumentParser) import nothing of it
])
def test_lower_layers_load_no_track(modules: tuple, forbidden: tuple) -> None:
    """At run time too (lazy imports inside functions included in what a plain import runs)."""
    proc = python(f"import sys\nimport {', '.join(modules)}\n"
                  f"print(sorted(m for m in sys.modules if m.startswith({forbidden!r})))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"{modules} loaded {proc.stdout.strip()}"


def test_tracks_come_from_entry_points_and_are_loaded_only_when_composing() -> None:
    """A fresh process (as a multirun / submitit job): importing the pipeline loads no track; composing its
    config registers the tracks' schemas from the entry points, and track_of finds the track by data type."""
    proc = python(
        "import json, sys\n"
        "from ptft import app\n"
        "from ptft.pipeline import main\n"
        "from ptft.pipeline.track import track_of, tracks\n"
        "before = [m for m in sys.modules if m.startswith(('ptft.vision', 'ptft.arith'))]\n"
        "cfg = app.check('finetune', ['data=modarith', 'model=transformer'])\n"
        "print(json.dumps([before, track_of(cfg).name, track_of(app.check('finetune', [])).name, sorted(tracks())]))\n")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [[], "arith", "vision", ["arith", "dln", "vision"]]


@dataclass
class ToyData:
    name: str = "toy"


@dataclass
class ToyModel:
    name: str = "toy_mlp"


def test_a_new_track_plugs_in_without_editing_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    from ptft import ConfigError
    from ptft.pipeline import track as T

    class ToyTrack(T.Track):
        name = "toy"
        schemas = {("schema/data", "toy"): ToyData, ("model", "toy_mlp"): ToyModel}
        added_keys = {"data.new_knob": 0}

    toy = ToyTrack()
    monkeypatch.setitem(T.tracks(), "toy", toy)
    cfg = OmegaConf.create({"data": OmegaConf.structured(ToyData), "model": OmegaConf.structured(ToyModel)})
    assert T.track_of(cfg) is toy and toy.data_schema is ToyData and toy.model_names == ["toy_mlp"]
    assert T.added_keys()["data.new_knob"] == 0
    vision_model = OmegaConf.create({"data": OmegaConf.structured(ToyData), "model": {"name": "resnet18"}})
    with pytest.raises(ConfigError, match="does not fit data=toy: use model=toy_mlp"):
        T.track_of(vision_model)
    with pytest.raises(TypeError, match="not a named"):
        T.register_track(T.Track())
