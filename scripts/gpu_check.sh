#!/usr/bin/env bash
# The GPU proof in one run, sized for < 8 minutes on one H200: chattune's own training route (`chattune.train`)
# on random-init Qwen3 0.6B / 4B / 8B shapes, LoRA r16 all-linear, seq 2048, padded and packed, Liger on/off,
# QLoRA NF4 on the 8B shape, against the tutorial recipe (HF Trainer + PEFT, pad to max length) on the same
# data: tokens/s, MFU, peak memory and the run plan's memory estimate, as a markdown table.
#
#   scripts/gpu_carry.sh                        # here, once: wheels + tokenizer the GPU machine lacks → .whl/
#   scripts/gpu_check.sh                        # on the GPU machine (carry .whl); table → $OUT/gpu_check.md
#   scripts/gpu_check.sh --device cpu --tiny    # anywhere: the same script end to end on a tiny model (CI)
# Extra arguments go to bench/gpu_throughput.py (e.g. --models 8B --variants packed,qlora).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/chattune_site .whl/*.whl
  export PYTHONPATH=/tmp/chattune_site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
TOK=()
if [ -f .whl/qwen3_tokenizer/tokenizer.json ]; then TOK=(--tokenizer .whl/qwen3_tokenizer); fi
DEST=${OUT:-runs}/gpu_check.md
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
# 470 s: the lease's 8 minutes minus start-up; a run cut short still prints every finished row
timeout 470 "$PY" bench/gpu_throughput.py ${TOK[@]+"${TOK[@]}"} --out "$DEST" "$@"
echo "table: $DEST"
