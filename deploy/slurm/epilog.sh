#!/usr/bin/env bash
# Slurm Epilog: stop the node agent and withdraw this node's Prometheus target.
set -eu
TARGETS=${MRCDIAG_TARGETS_DIR:-/etc/prometheus/mrcdiag-targets}
PORT=${MRCDIAG_AGENT_PORT:-9464}
pkill -TERM -f "mrcdiag agent --port $PORT" || true
rm -f "$TARGETS/$(hostname -s).json"
