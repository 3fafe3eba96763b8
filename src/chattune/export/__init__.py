"""Export a run for the engines people deploy on (llama.cpp, Ollama, vLLM), each verified against the run.

`run.export` is the entry point; `stage` reads the run once, `gguf`/`ollama`/`vllm` build the targets,
`verify_llamacpp`/`verify_ollama`/`verify_vllm` prove them, `report` writes export_report.json/.md.
`vllm_launch` is the one place that knows how to start vLLM (its venv, entry point, server process).
"""
