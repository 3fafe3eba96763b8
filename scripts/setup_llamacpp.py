"""`make setup` step: llama.cpp for `chattune export`, from ONE pinned llama-cpp-python sdist (PyPI):

* the Python binding, built from the sdist once into a wheel kept in chattune's cache (a rebuild takes many
  minutes on a small CPU; later setups install the kept wheel in seconds);
* llama.cpp's converter scripts with their gguf-py, from the llama.cpp tree the sdist vendors, extracted
  into the cache — so the converter always matches the runtime.

Usage: python scripts/setup_llamacpp.py [--sdist PATH]   (PATH: an already downloaded sdist)
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from chattune.export.llamacpp import CONVERTER_PARTS, LLAMA_CPP_PYTHON_VERSION, converter_dir

PKG = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
# CPU only, no multimodal (mtmd) library, no tools/examples/tests: what export needs, in the least build time.
CMAKE_ARGS = ("-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF "
              "-DLLAMA_BUILD_SERVER=OFF")


def _pip(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def cache() -> Path:
    return converter_dir().parent


def ensure_sdist(given: Path | None) -> Path:
    """The pinned sdist in the cache (downloaded once)."""
    dest = cache() / "sdist" / SDIST
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if given is None:
        with tempfile.TemporaryDirectory() as tmp:
            _pip("download", "-q", "--no-deps", "--no-binary", ":all:", PKG, "-d", tmp)
            shutil.move(str(Path(tmp) / SDIST), dest.with_suffix(".part"))
    else:
        shutil.copyfile(given, dest.with_suffix(".part"))
    dest.with_suffix(".part").replace(dest)
    return dest


def extract_converter(sdist: Path) -> None:
    dest = converter_dir()
    if all((dest / p).exists() for p in CONVERTER_PARTS):
        return
    root = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
    with tempfile.TemporaryDirectory(dir=cache()) as tmp:
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith(root) and m.name[len(root):].split("/")[0] in CONVERTER_PARTS]
            if not members:
                raise SystemExit(f"{sdist} holds no llama.cpp converter under {root}")
            tar.extractall(tmp, members=members, filter="data")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(Path(tmp) / root, dest)  # complete, or not there at all
    print(f"llama.cpp {LLAMA_CPP_PYTHON_VERSION} converter → {dest}", flush=True)


def ensure_wheel(sdist: Path) -> Path:
    wheels = cache() / "wheels"
    found = sorted(wheels.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}-*.whl"))
    if found:
        return found[-1]
    env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    print(f"building {PKG} for this CPU (several minutes, once; kept in {wheels})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        _pip("wheel", "-q", "--no-deps", str(sdist), "-w", tmp, env=env)
        built = next(Path(tmp).glob("*.whl"))
        wheels.mkdir(parents=True, exist_ok=True)
        shutil.move(str(built), wheels / (built.name + ".part"))
        (wheels / (built.name + ".part")).replace(wheels / built.name)
    return wheels / built.name


def install_binding(sdist: Path) -> None:
    try:
        import llama_cpp

        if llama_cpp.__version__ == LLAMA_CPP_PYTHON_VERSION:
            return
    except ImportError:
        pass
    _pip("install", "-q", str(ensure_wheel(sdist)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdist", type=Path, help="a downloaded llama-cpp-python sdist (default: pip download)")
    ap.add_argument("--wheel-only", action="store_true", help="only build (and keep) the wheel")
    args = ap.parse_args()
    sdist = ensure_sdist(args.sdist)
    if args.wheel_only:
        print(ensure_wheel(sdist))
        return
    extract_converter(sdist)
    install_binding(sdist)


if __name__ == "__main__":
    main()
