#!/usr/bin/env bash
# Pretrain on one machine with several processes (one per GPU, or CPU processes with gloo).
#
# Usage: launch/local.sh [--dry-run] --config FILE -o RUN_DIR [--resume] [KEY=VALUE ...]
#
# Variables:
#   NPROC        processes to start (default: number of GPUs, else 2)
#   LAUNCHER     torchrun (default) or deepspeed
#   MASTER_PORT  rendezvous port on 127.0.0.1 (default 29500)
#   PYTHON       interpreter with sc_fm installed (default: .venv/bin/python if present, else python)
# --dry-run prints the resolved command instead of running it.
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
if [[ -z "${NPROC:-}" ]]; then
  NPROC=$(nvidia-smi -L 2>/dev/null | wc -l || true)
  [[ "$NPROC" -gt 0 ]] || NPROC=2
fi
LAUNCHER="${LAUNCHER:-torchrun}"
MASTER_PORT="${MASTER_PORT:-29500}"

case "$LAUNCHER" in
  torchrun)
    CMD=("$PYTHON" -m torch.distributed.run --standalone --nnodes=1 "--nproc_per_node=$NPROC"
         -m sc_fm pretrain "$@") ;;
  deepspeed)
    CMD=("$PYTHON" -m deepspeed.launcher.runner "--num_gpus=$NPROC" "--master_port=$MASTER_PORT"
         --no_local_rank --module sc_fm pretrain "$@") ;;
  *)
    echo "launch/local.sh: LAUNCHER=$LAUNCHER is not torchrun or deepspeed" >&2; exit 2 ;;
esac

if [[ "$DRY_RUN" == 1 ]]; then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
exec "${CMD[@]}"
