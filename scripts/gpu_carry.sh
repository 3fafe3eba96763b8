#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what the GPU machine lacks for scripts/gpu_check.sh: the wheels chattune's
# training route needs there (its image has torch, transformers, peft, accelerate, pandas, pyarrow, ...,
# but not datasets, pydantic, bitsandbytes or liger-kernel) and the Qwen3 tokenizer from the asset cache.
# About 60 MiB: run it here, then carry `.whl` with the device call.
set -euo pipefail
cd "$(dirname "$0")/.."
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
WHEELS=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.4 pydantic-core==2.50.5
        annotated-types==0.8.0 typing-inspection==0.4.5 bitsandbytes==0.50.2 liger-kernel==0.8.5)
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
ASSETS=${CHATTUNE_ASSETS:-${CHATTUNE_CACHE:-$HOME/.cache/chattune}/assets}
mkdir -p .whl/qwen3_tokenizer
cp "$ASSETS/tokenizers/qwen3/tokenizer.json" "$ASSETS/tokenizers/qwen3/tokenizer_config.json" .whl/qwen3_tokenizer/
du -sh .whl
