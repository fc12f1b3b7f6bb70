"""A built wheel works on its own: ptft (configs included) comes from the wheel installed in a fresh virtual
environment, not from this source tree, and its console scripts run without the SLURM extra."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM_EXTRA = ("submitit", "hydra_submitit_launcher")  # left out: the core must run without them


def _deps_view(dest: Path) -> Path:
    """The heavy dependencies already installed here (torch, hydra, ...) as a PYTHONPATH folder of links,
    without ptft itself (nor its editable-install hooks) and without the SLURM extra."""
    site = Path(sysconfig.get_paths()["purelib"])
    dest.mkdir()
    for entry in site.iterdir():
        name = entry.name
        if name.startswith(("ptft", "__editable__", *SLURM_EXTRA)) or name.endswith(".pth"):
            continue
        if name == "hydra_plugins":  # a namespace package: keep the other plugins
            (dest / name).mkdir()
            for sub in entry.iterdir():
                if sub.name not in SLURM_EXTRA:
                    (dest / name / sub.name).symlink_to(sub)
            continue
        (dest / name).symlink_to(entry)
    return dest


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path):
    src = tmp_path / "src_copy"  # build from a copy: nothing (build/, egg-info) is written into the checkout
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(src)], check=True, capture_output=True, text=True)
    wheel = next(dist.glob("ptft-*.whl"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, text=True)

    cwd = tmp_path / "work"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(_deps_view(tmp_path / "deps")), "WANDB_MODE": "disabled"}
    env.pop("PTFT_CONF_DIR", None)

    def run(*cmd: str) -> subprocess.CompletedProcess:
        p = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{cmd}: exit {p.returncode}\n{p.stdout[-2000:]}{p.stderr[-2000:]}"
        return p

    where = json.loads(run(str(py), "-c", "import json, importlib.util, ptft, ptft.app; print(json.dumps("
                                          "[ptft.__file__, str(ptft.app.conf_dir()), "
                                          "importlib.util.find_spec('submitit') is None]))").stdout)
    assert all(Path(p).is_relative_to(venv) for p in where[:2]) and where[2], where

    out = run(str(venv / "bin" / "ptft-dln"), "experiment=dln/smoke", "dln.dim=20", f"store.root={tmp_path / 'runs'}")
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    assert json.loads((run_dir / "result.json").read_text())["status"] == "ok"
    assert "dln/panel_a" in run(str(venv / "bin" / "ptft-dln"), "--help").stdout
    adv = run(str(venv / "bin" / "ptft-theory"), "advise", "--rho-pt", "0.1", "--rho-ft", "0.1", "--omega", "1",
              "--alpha", "0.2")
    assert "best:" in adv.stdout

    p = subprocess.run([str(venv / "bin" / "ptft-dln"), "-m", "hydra/launcher=slurm"], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and "pip install 'ptft[slurm]'" in p.stderr and not (cwd / "multirun").exists()
