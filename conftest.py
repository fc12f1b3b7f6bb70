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


def slurm_tests_enabled() -> bool:
    """The SLURM tests install Debian packages and start daemons (as root): only in CI (CI=true) or
    when asked for (PTFT_SLURM_TESTS=1), never by a plain `make test` on a workstation."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("PTFT_SLURM_TESTS", "") == "1"


def pytest_collection_modifyitems(config, items):
    """`slurm` tests only with CI=true or PTFT_SLURM_TESTS=1; `gpu` tests only where torch sees CUDA. Each
    skip says why in one line."""
    import torch

    skip_slurm = pytest.mark.skip(reason="SLURM tests install packages and start daemons: run with "
                                         "PTFT_SLURM_TESTS=1 (or CI=true)")
    skip_gpu = pytest.mark.skip(reason="gpu: torch.cuda.is_available() is False (no CUDA device); "
                                       "run scripts/gpu_check.sh on a machine with one")
    for item in items:
        if "slurm" in item.keywords and not slurm_tests_enabled():
            item.add_marker(skip_slurm)
        if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


try:  # property tests: fixed examples by default (reproducible `make test`); HYPOTHESIS_PROFILE=ptft-explore searches
    from hypothesis import settings

    settings.register_profile("ptft", max_examples=300, derandomize=True, database=None, deadline=None)
    settings.register_profile("ptft-explore", max_examples=3000, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ptft"))
except ImportError:  # only tests/test_property_*.py need it (dev extra)
    pass


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


@pytest.fixture
def kill9_after_checkpoint():
    """Start a console script, SIGKILL it once its run has a checkpoint (mid-training), and check that
    it left a checkpoint and no result: the state a crashed or preempted job leaves behind."""
    import signal
    import time

    def run(script, args, run_dir, cwd, timeout=120):
        e = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([str(BIN / script), *args], cwd=cwd, env=e, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        deadline = time.time() + timeout
        while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.4)
        assert proc.poll() is None, f"{script} finished before it could be killed; make the run longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (run_dir / "result.json").exists() and (run_dir / "checkpoint.pt").exists()

    return run
