#!/usr/bin/env bash
# Pretrain across several machines. Run once on every node (torchrun) or once on the first
# node with a hostfile (deepspeed, which starts the other nodes over passwordless ssh).
#
# Usage: launch/multinode.sh [--dry-run] --config FILE -o RUN_DIR [--resume] [KEY=VALUE ...]
#
# Variables:
#   LAUNCHER       deepspeed (default) or torchrun
#   HOSTFILE       deepspeed: file of "hostname slots=N" lines (default: hostfile)
#   NNODES         torchrun: number of nodes (required for torchrun)
#   NODE_RANK      torchrun: this node's index, 0..NNODES-1 (required for torchrun)
#   NPROC          processes per node (default: number of GPUs on this node, else 1)
#   MASTER_ADDR    address of node 0 (required)
#   MASTER_PORT    rendezvous port (default 29500)
#   PYTHON         interpreter with sc_fm installed on every node (default: python)
# RUN_DIR must be on a filesystem every node sees (checkpoints are written by all ranks).
# --dry-run prints the resolved command instead of running it.
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi

PYTHON="${PYTHON:-python}"
LAUNCHER="${LAUNCHER:-deepspeed}"
MASTER_PORT="${MASTER_PORT:-29500}"
: "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}"
if [[ -z "${NPROC:-}" ]]; then
  NPROC=$(nvidia-smi -L 2>/dev/null | wc -l || true)
  [[ "$NPROC" -gt 0 ]] || NPROC=1
fi

case "$LAUNCHER" in
  deepspeed)
    HOSTFILE="${HOSTFILE:-hostfile}"
    CMD=("$PYTHON" -m deepspeed.launcher.runner "--hostfile=$HOSTFILE" "--master_addr=$MASTER_ADDR"
         "--master_port=$MASTER_PORT" --no_local_rank --module sc_fm pretrain "$@") ;;
  torchrun)
    : "${NNODES:?set NNODES for torchrun}"
    : "${NODE_RANK:?set NODE_RANK (0..NNODES-1) for torchrun}"
    CMD=("$PYTHON" -m torch.distributed.run "--nnodes=$NNODES" "--node_rank=$NODE_RANK"
         "--nproc_per_node=$NPROC" --rdzv_backend=c10d "--rdzv_endpoint=$MASTER_ADDR:$MASTER_PORT"
         -m sc_fm pretrain "$@") ;;
  *)
    echo "launch/multinode.sh: LAUNCHER=$LAUNCHER is not deepspeed or torchrun" >&2; exit 2 ;;
esac

if [[ "$DRY_RUN" == 1 ]]; then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
exec "${CMD[@]}"
