"""llama.cpp, built once from the `llama-cpp-python` source package and cached under var/.

llama.cpp is a real engine for the tests (its `llama-server` speaks the OpenAI-compatible
completions protocol) and our peer on CPU for the benches. Its source ships inside the sdist on
PyPI (`vendor/llama.cpp`); this module downloads that sdist with pip, builds the few programs we
use with cmake, and reuses the build while the version stays the same. On this CPU llama.cpp's
default AMX repacking crashes on multi-token batches: run its programs with `--repack 0`
(`NO_REPACK`).

`python -m tests.llama_cpp` builds it (the test setup does so when it is absent).
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python; its vendor/llama.cpp is the llama.cpp we build
PROGRAMS = ("llama-server", "llama-bench", "llama-batched-bench", "llama-cli")
ROOT = Path(__file__).resolve().parents[1] / "var" / f"llama.cpp-{VERSION}"
BIN = ROOT / "build" / "bin"
NO_REPACK = ("--repack", "0")  # see the module's docstring


def program(name: str) -> Path:
    """The path of a built llama.cpp program, building everything first if needed."""
    ensure_built()
    return BIN / name


def ensure_built() -> Path:
    """Build llama.cpp's programs under var/ unless they are there; returns the bin folder.
    A lock file keeps two test runs from building at once."""
    ROOT.mkdir(parents=True, exist_ok=True)
    with open(ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all((BIN / name).exists() for name in PROGRAMS):
            return BIN
        source = ROOT / "src"
        if not (source / "CMakeLists.txt").exists():
            _unpack(source)
        build = ROOT / "build"
        subprocess.run(
            ["cmake", "-S", str(source), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
             "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
             "-DLLAMA_BUILD_EXAMPLES=OFF"],
            check=True,
        )
        subprocess.run(["cmake", "--build", str(build), "--target", *PROGRAMS], check=True)
        return BIN


def _unpack(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={VERSION}", "-d", tmp],
            check=True,
        )
        (archive,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(archive) as tar:
            prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for member in members:
                member.name = member.name[len(prefix):]
            tar.extractall(Path(tmp) / "src", members=members, filter="data")
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(Path(tmp) / "src"), dest)


if __name__ == "__main__":
    print(ensure_built())
