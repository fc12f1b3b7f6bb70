#!/usr/bin/env bash
# The one GPU check of the suite (issue #9, part 4): run it, as one command, on a machine with a CUDA GPU.
#
#   scripts/gpu_check.sh                 # on the GPU machine, from the repository root
#   scripts/gpu_check.sh --dry-run       # anywhere: what would run, and what is missing; runs nothing
#   scripts/gpu_check.sh --fetch-wheels  # on a machine with pip access: build the wheels it carries (.whl/)
#
# What it needs there: python3 with torch, torchvision, numpy, scipy, pytest (the H200 image has them).
# hydra-core, omegaconf and antlr4-python3-runtime are NOT on that image: if .whl/ holds their wheels
# (made here by --fetch-wheels, pure-Python, pinned to the versions of this environment) they are
# installed into /tmp/ptft-site with plain pip (--no-index) and every step runs; without them only the
# plain-torch parts run (the agreement and host-sync tests, bench_vision) and the report says which
# steps were skipped and why. The project itself is used from src/ (PYTHONPATH), not installed: its
# Hydra configs live in conf/ of the source tree. wandb is not needed (every run uses wandb.mode=disabled).
#
# Steps, each under its own timeout inside an overall budget of 470 s (< 8 minutes on one H200):
#   1. pytest -m gpu tests/test_gpu.py: all but the compiled pipeline test (<= 90 s), then that test
#      (<= 170 s; torch.compile on CUDA: train and eval graphs of the PT and the FT model)
#   2. bench_vision, batch 128: resnet18 (LL's) width 64 eager (<= 45 s), resnet18_cifar width 64 --compile
#      (<= 80 s): img/s, TFLOP/s, MFU against a 790 TFLOP/s bf16 peak (what a bf16 matmul reaches on the
#      H200 we are lent; bench_vision's default is the 989 of the data sheet)
#   3. bench_dln on CUDA at D = 5000 (--no-grid where it has it), if scripts/bench_dln.py takes --device (<= 35 s)
#   4. a short paper-scale DLN slice on CUDA: D = 5000, 5 seeds batched, alpha 0.255, at most 20000
#      steps (<= 40 s; a timeout there is reported as such, with the steps it reached)
# (90 + 170 + 45 + 80 + 35 + 40 = 460 s; the overall deadline cuts a step short rather than run past 470 s.)
# GPU_CHECK_DEVICE=cpu runs the same steps on the CPU (only to test this script's own logic; expect timeouts).
# Findings go to results/gpu_check/gpu_check.txt (or $GPU_CHECK_OUT; each step's full output in /tmp/ptft-gpu-check/),
# and, when $OUT is set (the device machine), to $OUT/gpu_check.txt with the step logs beside it.
# Exit status: 0 every step ran and passed; 1 a step failed or timed out; 4 none failed but some steps or
# tests were skipped (e.g. no .whl/); 2 no CUDA device (nothing ran, no report written); 3 bad usage.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
REPORT=${GPU_CHECK_OUT:-results/gpu_check/gpu_check.txt}
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}
PEAK=790
WHL=.whl
SITE=/tmp/ptft-site
WORK=/tmp/ptft-gpu-check
HYDRA_PKGS=(hydra-core omegaconf antlr4-python3-runtime)
DEV=${GPU_CHECK_DEVICE:-cuda}

mode=run
case "${1:-}" in
  "") ;;
  --dry-run) mode=dry ;;
  --fetch-wheels) mode=fetch ;;
  *) echo "usage: scripts/gpu_check.sh [--dry-run | --fetch-wheels]" >&2; exit 3 ;;
esac

if [ "$mode" = fetch ]; then
  # the versions installed here (so the GPU machine runs what the tests ran with here)
  specs=$("$PY" -c "import importlib.metadata as m, sys; print(' '.join(f'{p}=={m.version(p)}' for p in sys.argv[1:]))" \
          "${HYDRA_PKGS[@]}") || { echo "gpu_check: ${HYDRA_PKGS[*]} must be installed here to pin them" >&2; exit 1; }
  mkdir -p "$WHL"
  echo "gpu_check: building wheels for $specs into $WHL/ (git ignores it: name it in the device run's carry)"
  "$PY" -m pip wheel -q --no-deps -w "$WHL" $specs || exit 1
  ls -l "$WHL"
  exit 0
fi

read -r have_cuda py_torch < <("$PY" -c "import sys, torch; print(int(torch.cuda.is_available()), sys.version.split()[0], 'torch', torch.__version__)" 2>/dev/null || echo "0 (python3 with torch not found: set PYTHON)")
wheels=$(ls "$WHL"/*.whl 2>/dev/null | wc -l)
dln_device=0; grep -q -- "--device" scripts/bench_dln.py 2>/dev/null && dln_device=1

if [ "$mode" = dry ]; then
  echo "gpu_check --dry-run: nothing is run"
  echo "  python, torch: $py_torch"
  echo "  CUDA device: $([ "$have_cuda" = 1 ] && echo yes || echo 'no CUDA device (a real run would stop here, exit 2)')"
  echo "  wheels in $WHL/: $wheels ($([ "$wheels" -gt 0 ] && echo 'installed into '$SITE' first' || echo 'none: hydra steps run only if hydra is importable already'))"
  echo "  hydra importable now: $("$PY" -c 'import hydra, omegaconf; print("yes")' 2>/dev/null || echo no)"
  echo "  bench_dln.py takes --device: $([ "$dln_device" = 1 ] && echo yes || echo 'no (step 3 would be skipped)')"
  echo "  budget: $BUDGET_S s; report: $REPORT"
  echo "  steps: pytest -m gpu tests/test_gpu.py -k 'not end_to_end' (90 s) | -k end_to_end (170 s) |" \
       "bench_vision resnet18 w64 (45 s) | bench_vision resnet18_cifar w64 --compile (80 s) |" \
       "bench_dln --device cuda --dim 5000 (35 s) | DLN D=5000 slice (40 s)"
  exit 0
fi

if [ "$have_cuda" != 1 ] && [ "$DEV" = cuda ]; then
  echo "gpu_check: no CUDA device (torch.cuda.is_available() is False; $PY: $py_torch): nothing checked, no report written" >&2
  exit 2
fi

# ---- environment -------------------------------------------------------------------------------------
export PYTHONPATH=src OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} PYTHONUNBUFFERED=1 WANDB_MODE=disabled
whl_note="no .whl/ carried"
if [ "$wheels" -gt 0 ]; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHL"/*.whl; then
    export PYTHONPATH="$SITE:src"; whl_note="installed from .whl/: $(cd "$WHL" && ls *.whl | tr '\n' ' ')"
  else
    whl_note="pip install of .whl/ FAILED"
  fi
fi
hydra=$("$PY" -c "import hydra, omegaconf; print(1)" 2>/dev/null || echo 0)
rm -rf "$WORK"; mkdir -p "$WORK" "$(dirname "$REPORT")"
start=$(date +%s)
failed=0
skipped=0
nstep=0
{
  echo "# scripts/gpu_check.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
  [ "$DEV" = cuda ] || echo "GPU_CHECK_DEVICE=$DEV: a test of this script, not a GPU check"
  echo "hydra/omegaconf: $([ "$hydra" = 1 ] && echo available || echo 'missing: the Hydra steps are skipped') ($whl_note)"
  echo "budget: $BUDGET_S s"
} > "$REPORT"

# step NAME BUDGET_S CMD...: run CMD under min(BUDGET_S, time left), log its output and result to the report
step() {
  local name=$1 budget=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - start) ))
  [ "$left" -lt "$budget" ] && budget=$left
  echo >> "$REPORT"; echo "## $name" >> "$REPORT"
  if [ "$budget" -lt 10 ]; then
    echo "SKIPPED: out of time (${left} s of the budget left)" | tee -a "$REPORT"; skipped=1; return
  fi
  echo "\$ $*   (timeout ${budget} s)" >> "$REPORT"
  nstep=$((nstep + 1))
  local t0=$(date +%s) rc log="$WORK/step$nstep.log"
  timeout -k 10 "$budget" "$@" > "$log" 2>&1; rc=$?
  tr '\r' '\n' < "$log" | grep -v -E "Warning|warn\(|^\s*$" | tail -n 40 >> "$REPORT"
  local verdict=ok
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && verdict="TIMED OUT after ${budget} s"
  [ "$rc" != 0 ] && [ "$verdict" = ok ] && verdict="FAILED (exit $rc)"
  [ "$rc" != 0 ] && failed=1
  if [ "$rc" = 0 ] && grep -q -E "[0-9]+ skipped" "$log"; then verdict="ok, but with SKIPPED tests"; skipped=1; fi
  echo "-> $verdict, $(( $(date +%s) - t0 )) s (full output: step$nstep.log)" | tee -a "$REPORT"
}

skip() {
  echo >> "$REPORT"; echo "## $1" >> "$REPORT"; echo "SKIPPED: $2" | tee -a "$REPORT"; skipped=1
}

echo "gpu_check: running; findings in $REPORT"
# the compile-heavy test apart, so that a timeout there leaves the other results whole
step "gpu tests (pytest -m gpu), all but the compiled pipeline" 90 \
  "$PY" -m pytest -m gpu tests/test_gpu.py -k "not end_to_end" -q -rs -s -p no:cacheprovider
step "gpu test: vision pipeline end to end on CUDA, amp + channels_last + compile" 170 \
  "$PY" -m pytest -m gpu tests/test_gpu.py -k "end_to_end" -q -rs -s -p no:cacheprovider
step "bench_vision resnet18 width 64 (bf16 + channels_last)" 45 \
  "$PY" scripts/bench_vision.py --device "$DEV" --model resnet18 --width 64 --steps 200 --threads 8 --workers 4 --peak "$PEAK"
step "bench_vision resnet18_cifar width 64 (bf16 + channels_last + compile)" 80 \
  "$PY" scripts/bench_vision.py --device "$DEV" --model resnet18_cifar --width 64 --steps 200 --threads 8 --workers 4 \
  --compile --peak "$PEAK"
if [ "$hydra" != 1 ]; then
  skip "bench_dln on CUDA" "needs hydra-core + omegaconf (carry .whl/: scripts/gpu_check.sh --fetch-wheels)"
  skip "DLN paper-scale slice on CUDA" "needs hydra-core + omegaconf (carry .whl/)"
else
  if [ "$dln_device" = 1 ]; then
    # step throughput at the paper's D (the panel grid too, unless the script can leave it out)
    dln_args=(--device "$DEV" --dim 5000 --threads 8)
    grep -q -- "--no-grid" scripts/bench_dln.py && dln_args+=(--no-grid)
    step "bench_dln on CUDA (D=5000)" 35 "$PY" scripts/bench_dln.py "${dln_args[@]}"
  else
    skip "bench_dln on CUDA" "scripts/bench_dln.py has no --device flag yet"
  fi
  step "DLN paper-scale slice on CUDA (D=5000, 5 seeds batched, alpha 0.255, 20000 steps)" 40 \
    "$PY" -m ptft.dln.main "device=$DEV" dln.dim=5000 dln.alpha=0.255 "dln.seeds=[0,1,2,3,4]" train.max_steps=20000 \
    wandb.mode=disabled "store.root=$WORK/runs" "hydra.run.dir=$WORK/hydra" name=gpu_check
fi
echo >> "$REPORT"
if [ "$failed" = 1 ]; then verdict="a step FAILED or timed out (see above)"; rc=1
elif [ "$skipped" = 1 ]; then verdict="nothing failed, but some steps or tests were SKIPPED (see above)"; rc=4
else verdict="every step ran and passed"; rc=0; fi
echo "total: $(( $(date +%s) - start )) s of $BUDGET_S s; $verdict" | tee -a "$REPORT"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then cp "$REPORT" "$OUT/gpu_check.txt"; cp "$WORK"/step*.log "$OUT/" 2>/dev/null; fi
exit "$rc"
