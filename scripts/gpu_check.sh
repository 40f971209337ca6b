#!/usr/bin/env bash
# GPU checks for a machine with an NVIDIA GPU (H200 or any CUDA GPU); under 8 minutes.
#   scripts/gpu_check.sh [OUT_DIR]
# Needs torch with CUDA (onnx/onnxruntime-gpu and tensorrt are used when present). Installs nothing
# that downloads weights; nnspec is used from this checkout (PYTHONPATH), no install needed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-gpu-check-out}}"
mkdir -p "$OUT"
# The checkout's folders are the nnspec packages; map them without installing.
python3 scripts/gpu_check.py --out "$OUT" "${@:2}" 2>&1 | tee "$OUT/gpu_check.log"
