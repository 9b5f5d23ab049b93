#!/usr/bin/env bash
# The one-command GPU check of costeff_fast's triton backend (bench/gpu_check.py says what it measures).
#
#   bash bench/gpu_check.sh RESULTS_DIR             # on a CUDA GPU: under 8 minutes on an H100/H200, cold cache
#   bash bench/gpu_check.sh RESULTS_DIR --dry-run   # on any CPU: tiny sizes through the Triton interpreter
#
# On the project's GPU machine (the device `run` tool): command `bash bench/gpu_check.sh "$OUT"`, carry
# ["bench/gpu_payload"] (build it first: python bench/make_gpu_payload.py --model CHECKPOINT), timeout_s 540.
# Sections: environment, prewarm, kernels, engine_random, engine_checkpoint, throughput, pytest (the long one
# last); the measured figures sit next to the prediction of bench/roofline.py (docs/design.md, GPU prediction).
# It needs only what that machine has (torch, triton, transformers, tokenizers, safetensors, numpy, pytest): the
# repository goes on PYTHONPATH, nothing is installed, nothing is downloaded, the native CPU kernels are not
# built. Writes RESULTS_DIR/gpu_check.json (after every section) and RESULTS_DIR/gpu_check.log (all output);
# exits 0 when no section failed. The python interpreter: $PYTHON, else the checkout's .venv, else python3.
set -uo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: bash bench/gpu_check.sh RESULTS_DIR [--dry-run]" >&2
  exit 2
fi
RESULTS=$1
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
mkdir -p "$RESULTS" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 COSTEFF_FAST_NATIVE=0 \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# seconds: the script's own budget is 440 s (its docstring gives the caps' arithmetic); this is the last guard:
# 470 s + 10 s to die = 8 minutes, in a 10-minute device call
LIMIT=470
for arg in "$@"; do
  if [[ "$arg" == "--dry-run" ]]; then
    # the kernels pick the interpreter when they are defined: set before python starts; hide any GPU
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
    LIMIT=330
  fi
done
LOG="$RESULTS/gpu_check.log"
timeout --kill-after=10 "$LIMIT" "$PYTHON" "$ROOT/bench/gpu_check.py" "$RESULTS" "$@" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
if [[ $status == 124 || $status == 137 ]]; then
  echo "gpu_check.sh: stopped by the ${LIMIT} s time limit (gpu_check.json holds what was done)" | tee -a "$LOG"
fi
exit "$status"
