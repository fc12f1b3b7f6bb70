"""scripts/gpu_check.sh's CPU-side behaviour: usage, --dry-run, and a clean refusal without a CUDA device
(CUDA_VISIBLE_DEVICES="" hides any GPU, so these run the same on a GPU machine)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def run(*args: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "GPU_CHECK_OUT": str(out)}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_without_cuda_it_says_so_and_writes_no_report(tmp_path):
    p = run(out=tmp_path / "report.txt")
    assert p.returncode == 2, p.stderr
    assert "no CUDA device" in p.stderr and "nothing checked" in p.stderr
    assert not (tmp_path / "report.txt").exists()


def test_dry_run_lists_the_steps_and_what_is_missing(tmp_path):
    p = run("--dry-run", out=tmp_path / "report.txt")
    assert p.returncode == 0, p.stderr
    assert "no CUDA device" in p.stdout and "pytest -m gpu" in p.stdout and "bench_vision" in p.stdout
    assert "budget: 470 s" in p.stdout and not (tmp_path / "report.txt").exists()


def test_bad_usage_is_exit_3(tmp_path):
    p = run("--fast", out=tmp_path / "report.txt")
    assert p.returncode == 3 and "usage" in p.stderr
