"""The whole stack as processes: Daphne in the embedded mode, or Daphne with worker processes and
a private Redis, and a websocket client that behaves like the chat page. Shared by the tests'
fixtures (tests/conftest.py), the fault scenarios (tests/faults.py) and the benches under bench/
(run as modules from the repository root: `python -m bench.NAME`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis
from websockets.asyncio.client import connect as ws_connect

from chat.events import Follower  # no Django: the benches import this module before setting it up

ROOT = Path(__file__).resolve().parents[1]
STARTUP = 120  # seconds for Daphne and the worker to come up on a busy machine
TIMEOUT = 20  # seconds for any one frame
# The tests' Redis database, flushed by them (a private redis-server where a test stops it).
TEST_REDIS_URL = os.environ.get("GROKWEB_TEST_REDIS_URL", "redis://127.0.0.1:6379/1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manage(env: dict, *args: str, timeout: float = 300) -> str:
    """Run `manage.py` with `args` in `env`; its output. Fails the caller if it fails."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


class EmbeddedServer:
    """Daphne in the embedded default mode, as `make run` starts it: SQLite in `var_dir`, the
    in-memory channel layer, the inference worker in a thread. `env` comes on top."""

    def __init__(self, var_dir: Path, checkpoint: Path, **env: str) -> None:
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DATABASE_URL", "REDIS_URL", "GROKWEB_DEBUG", "GROKWEB_ALLOWED_HOSTS"}
        }
        self.env.update(
            DJANGO_SETTINGS_MODULE="grokweb.settings.base",
            GROKWEB_VAR_DIR=str(var_dir),
            GROK_CHECKPOINT=str(checkpoint),
            GROK_EMBEDDED_WORKER="1",
            GROKWEB_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
            **env,
        )
        manage(self.env, "migrate", "--noinput")
        manage(self.env, "collectstatic", "--noinput")  # WhiteNoise serves the collected copies
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env["GROKWEB_PUBLIC_ORIGINS"] = self.url  # the page's websocket comes from here
        self.log = var_dir / "daphne.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "grokweb.asgi:application"],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("Daphne did not start:\n" + self.log.read_text(errors="replace")[-5000:])
            time.sleep(0.3)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/accounts/login/", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def shell(self, code: str, **data) -> str:
        """Run Python in the server's environment (same SQLite database); `data` as JSON in
        GW_DATA, so no quoting games."""
        return manage(dict(self.env, GW_DATA=json.dumps(data)), "shell", "-c", code, timeout=120).strip()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


class RedisServer:
    """A redis-server of our own on a free port, without persistence, so that stopping and
    starting it (as the fault tests do) never disturbs anyone else's Redis."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.tmp_path = tmp_path
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp_path)],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


class Stack:
    """Daphne, and a worker process unless the web process embeds one; `log(name)` tells what
    each said. `env` comes on top of the tiny model's settings."""

    def __init__(
        self, tmp_path: Path, checkpoint: Path, *, worker: bool = True, base_env=os.environ, **env: str
    ) -> None:
        self.port = free_port()
        self.tmp_path = tmp_path
        self.env = {
            **base_env,
            "GROK_CHECKPOINT": str(checkpoint),
            "GROK_QUANT": "none",
            "GROK_MAX_BATCH": "2",
            "OMP_NUM_THREADS": "1",  # two shared cores: more threads only contend
            "PYTHONUNBUFFERED": "1",
            # Plain HTTP on the loopback: the page's origin, and no redirect to HTTPS.
            "GROKWEB_PUBLIC_ORIGINS": f"http://127.0.0.1:{self.port}",
            "GROKWEB_SSL_REDIRECT": "false",
            **env,
        }
        self.processes: dict[str, subprocess.Popen] = {}
        self.start("daphne", "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "grokweb.asgi:application")
        if worker:
            self.start_worker("worker")

    def start(self, name: str, *args: str) -> None:
        out = open(self.tmp_path / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
        )

    def start_worker(self, name: str) -> None:
        self.start(name, "manage.py", "run_inference_worker")

    def add_worker(self, name: str) -> None:
        """Start one more worker process and wait until its model is loaded."""
        self.start_worker(name)
        deadline = time.monotonic() + STARTUP
        while "worker ready" not in self.log(name):
            assert self.processes[name].poll() is None and time.monotonic() < deadline, self.log(name)
            time.sleep(0.2)

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    def wait_ready(self, ready: Callable[[], bool] = lambda: True) -> None:
        deadline = time.monotonic() + STARTUP
        while True:
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} exited:\n{self.log(name)}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                if ready():
                    return
            except (OSError, redis.ResponseError):
                pass
            assert time.monotonic() < deadline, f"not up in {STARTUP}s: " + repr(
                {name: self.log(name) for name in self.processes}
            )
            time.sleep(0.2)

    def peak_rss(self, name: str) -> int:
        """Bytes: the most memory process `name` has held so far (Linux's VmHWM)."""
        for line in Path(f"/proc/{self.processes[name].pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise LookupError("no VmHWM")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def socket(self, cookie: str | None, origin: str | None = None):
        headers = {"Cookie": cookie} if cookie else {}
        return ws_connect(
            f"ws://127.0.0.1:{self.port}/ws/chat/",
            origin=origin or f"http://127.0.0.1:{self.port}",
            additional_headers=headers,
            open_timeout=TIMEOUT,
            max_queue=None,  # the benches' clients must never hold Daphne back
        )


async def receive(ws, timeout: float = TIMEOUT) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def send_and_collect(ws, content: str, until=None) -> tuple[int, list[dict]]:
    """Send a message; the reply's id and its frames up to `until(frames)` (default: `done`)."""
    await ws.send(json.dumps({"type": "send", "conversation_id": None, "content": content}))
    accepted = await receive(ws)
    assert accepted["type"] == "accepted", accepted
    reply_id = accepted["assistant_message"]["id"]
    frames: list[dict] = []
    until = until or (lambda fs: fs and fs[-1]["type"] == "done")
    while not until(frames):
        frames.append(await receive(ws))
    return reply_id, frames


def delta_text(frames: list[dict]) -> str:
    text = ""
    for frame in frames:
        if frame["type"] == "delta":
            assert frame["offset"] == len(text)
            text += frame["text"]
    return text


class Page:
    """A reply as the chat page shows it: `text` from deltas joined at their offsets (by
    chat.events.Follower, as the server's followers join them), with a `resume` from what it
    shows when one skips ahead (a dropped frame); `done` as it came (the page then shows the
    saved text it carries)."""

    def __init__(self, reply_id: int) -> None:
        self.reply_id = reply_id
        self.text = ""
        self.follower = Follower()  # has len(self.text)
        self.done: dict | None = None
        self.errors: list[dict] = []

    async def follow(self, ws, until: Callable[[Page], bool] | None = None, timeout: float = TIMEOUT) -> None:
        """Read frames until `until(self)` (default: this reply's `done`). A dropped socket
        raises ConnectionClosed, as the page would see it."""
        until = until or (lambda page: page.done is not None)
        while not until(self):
            frame = await receive(ws, timeout)
            if frame["type"] == "error":  # this reply's, or the server's (`unavailable`)
                self.errors.append(frame)
            if frame.get("message_id") != self.reply_id:
                continue
            if frame["type"] == "delta":
                new = self.follower.new_text(frame["offset"], frame["text"])
                if new is None:
                    await self.resume(ws)
                else:
                    self.text += new
            elif frame["type"] == "done":
                self.done = frame

    async def resume(self, ws) -> None:
        await ws.send(json.dumps({"type": "resume", "message_id": self.reply_id, "offset": len(self.text)}))


async def send(ws, content: str) -> Page:
    """Send a message in a new conversation; the page of its reply."""
    await ws.send(json.dumps({"type": "send", "conversation_id": None, "content": content}))
    accepted = await receive(ws)
    assert accepted["type"] == "accepted", accepted
    return Page(accepted["assistant_message"]["id"])
