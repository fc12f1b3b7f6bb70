#!/usr/bin/env bash
# Tear down the cluster started by scripts/slurm_local/start.sh, in the safe order:
# cancel/drain the queue, then slurmd, slurmctld, slurmdbd, mariadb, and munged LAST
# (stopping munged first leaves slurmstepd hung). Leaves no daemon behind; idempotent.
# The state dir ($PTFT_SLURM_DIR, default /tmp/ptft-slurm) is kept, so the accounting
# database survives a restart; pass --purge to delete it too.
set -uo pipefail

DIR=${PTFT_SLURM_DIR:-/tmp/ptft-slurm}
RUN=$DIR/run
export SLURM_CONF=$DIR/etc/slurm.conf
log() { echo "[slurm_local] $*" >&2; }
T0=$(date +%s.%N)

[[ $(id -u) -eq 0 ]] || { echo "[slurm_local] ERROR: must run as root" >&2; exit 1; }

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
# stop_daemon NAME PIDFILE [SECONDS]: SIGTERM, wait, then SIGKILL; removes the pid file.
stop_daemon() {
  local name=$1 pidfile=$2 secs=${3:-20} pid
  if alive "$pidfile"; then
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null
    local end=$((SECONDS + secs))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < end)); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored SIGTERM for ${secs}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null
      sleep 0.2
    fi
    log "$name stopped ($(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $T0}")s)"
  fi
  rm -f "$pidfile"
}

# 1. the queue: cancel every job and wait (briefly) for their steps to end.
if alive "$RUN/slurmctld.pid" && [[ -f $SLURM_CONF ]]; then
  scontrol update nodename=localhost state=drain reason=ptft-stop >/dev/null 2>&1 || true
  if [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
    scancel --full --quiet "$(squeue -h -o %i | paste -sd,)" 2>/dev/null || true
    scancel --quiet --state=PENDING 2>/dev/null || true
    end=$((SECONDS + 30))
    while [[ -n $(squeue -h -o %i 2>/dev/null) ]] && ((SECONDS < end)); do sleep 0.2; done
    log "queue drained"
  fi
fi
# Job steps still alive (slurmstepd of this node's slurmd) would hang without munged: end them now.
if alive "$RUN/slurmd.pid"; then
  end=$((SECONDS + 10))   # steps of jobs that just ended exit on their own within a second or two
  while pgrep -x slurmstepd >/dev/null && ((SECONDS < end)); do sleep 0.2; done
  steps=$(pgrep -x slurmstepd 2>/dev/null | paste -sd' ')
  if [[ -n $steps ]]; then
    log "ending leftover job steps: $steps"
    kill -TERM $steps 2>/dev/null; sleep 1; kill -KILL $steps 2>/dev/null
  fi
fi

# 2. daemons, in order.
stop_daemon slurmd "$RUN/slurmd.pid"
stop_daemon slurmctld "$RUN/slurmctld.pid"
stop_daemon slurmdbd "$RUN/slurmdbd.pid"
stop_daemon mariadb "$RUN/mariadb.pid" 60
stop_daemon munged "$DIR/munge/munged.pid"

if [[ ${1:-} == --purge ]]; then
  rm -rf "$DIR"
  log "removed $DIR"
fi
log "stopped in $(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $T0}")s"
