"""llama.cpp, built once from the `llama-cpp-python` source package and cached under var/.

llama.cpp is a real engine for the tests (its `llama-server` speaks the OpenAI-compatible
completions protocol) and our peer on CPU for the benches. Its source ships inside the sdist on
PyPI (`vendor/llama.cpp`); this module downloads that sdist with pip, builds the few programs we
use with cmake, and reuses the build while the version stays the same. On this CPU llama.cpp's
default AMX repacking crashes on multi-token batches: run its programs with `--repack 0`
(`NO_REPACK`), llama-server with `--no-repack` (`SERVER_NO_REPACK`: its flag takes no value).
`LlamaServer` runs llama-server for the tests; `logits_program()` compiles tests/llama_logits.cpp.

`python -m tests.llama_cpp` builds it (the test setup does so when it is absent).
"""

from __future__ import annotations

import fcntl
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python; its vendor/llama.cpp is the llama.cpp we build
PROGRAMS = ("llama-server", "llama-bench", "llama-batched-bench", "llama-cli")
ROOT = Path(__file__).resolve().parents[1] / "var" / f"llama.cpp-{VERSION}"
BIN = ROOT / "build" / "bin"
NO_REPACK = ("--repack", "0")  # see the module's docstring (llama-bench, llama-batched-bench)
SERVER_NO_REPACK = ("--no-repack",)  # the same for llama-server, whose flag takes no value


def program(name: str) -> Path:
    """The path of a built llama.cpp program, building everything first if needed."""
    ensure_built()
    return BIN / name


class LlamaServer:
    """`llama-server` serving `model` (a .gguf) on a free loopback port, logging to `log`;
    `slots` replies at once, each with `slot_context` tokens. Sampling as the worker asks and
    nothing more: no top-k 40 or min-p 0.05 of llama.cpp's own."""

    def __init__(self, model: Path, log: Path, *, slots: int = 4, slot_context: int = 4096) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            str(program("llama-server")), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
            "-np", str(slots), "-c", str(slots * slot_context), "--top-k", "0", "--min-p", "0",
            "-t", "2", "--no-webui", *SERVER_NO_REPACK,
        ]
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        with open(self.log, "ab") as log:  # the server keeps its own copy of the descriptor
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.log.read_text(errors="replace")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"llama-server not up in {timeout}s"
            time.sleep(0.2)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def logits_program() -> Path:
    """`llama-logits` (tests/llama_logits.cpp: every position's logits, which no llama.cpp program
    prints), compiled against the built libllama when absent or older than its source."""
    ensure_built()
    source = Path(__file__).with_name("llama_logits.cpp")
    binary = BIN / "llama-logits"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(
            ["c++", "-O2", "-std=c++17", str(source), "-o", str(binary),
             f"-I{ROOT / 'src' / 'include'}", f"-I{ROOT / 'src' / 'ggml' / 'include'}",
             f"-L{BIN}", "-lllama", "-lggml", "-lggml-base", f"-Wl,-rpath,{BIN}"],
            check=True,
        )
    return binary


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
