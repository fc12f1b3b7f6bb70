"""Test-wide setup: one thread per process (CPU steal makes 2-thread timings swing 10x), no network
for wandb, and helpers to run the real console scripts."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_MODE", None)  # tests choose the mode explicitly

REPO = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def cli():
    """Run a console script (e.g. cli('ptft-dln', 'dln.dim=50', cwd=tmp_path)); returns CompletedProcess."""

    def run(script, *args, cwd=None, env=None, timeout=600, check=False):
        e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        p = subprocess.run([str(BIN / script), *args], cwd=cwd, env=e, capture_output=True, text=True,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{script} {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    return run
