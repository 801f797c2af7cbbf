#!/usr/bin/env bash
# Slurm Prolog (runs as root on each node before a job): start the node agent and
# publish this node as a Prometheus file_sd target.
set -eu
TARGETS=${MRCDIAG_TARGETS_DIR:-/etc/prometheus/mrcdiag-targets}   # shared with Prometheus
PORT=${MRCDIAG_AGENT_PORT:-9464}
if ! pgrep -f "mrcdiag agent --port $PORT" >/dev/null; then
  nohup mrcdiag agent --port "$PORT" --interval 1 --job "${SLURM_JOB_NAME:-slurm}" \
    >/var/log/mrcdiag-agent.log 2>&1 &
fi
mkdir -p "$TARGETS"
printf '[{"targets": ["%s:%s"], "labels": {"slurm_job_id": "%s"}}]\n' \
  "$(hostname -f)" "$PORT" "${SLURM_JOB_ID:-0}" >"$TARGETS/$(hostname -s).json.tmp"
mv "$TARGETS/$(hostname -s).json.tmp" "$TARGETS/$(hostname -s).json"
