"""The production path for real: PostgreSQL, Redis, Daphne and a separate worker process.

Daphne and `manage.py run_inference_worker` run as subprocesses with the production settings,
on the pytest-django test database (committed data: both see it) and a Redis database of their
own (GROKWEB_TEST_REDIS_URL, flushed before and after). A real websocket client talks to Daphne.
The queue alone is tests/test_jobs.py's.
"""

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest
import websockets  # a test dependency: a real client, unlike Channels' in-process communicator
from channels.db import database_sync_to_async

from chat import jobs
from chat.models import Message, UsageEntry
from tests.stack import ROOT, Stack, delta_text, receive, send_and_collect, ws_connect


def get_reply(reply_id: int) -> Message:
    return Message.objects.get(pk=reply_id)


@pytest.mark.production
async def test_a_reply_goes_through_redis_and_a_worker_process_into_postgres(production_stack, cookie, redis_db):
    s = await asyncio.to_thread(production_stack, GROK_MAX_NEW_TOKENS="32")
    # The doors: no session -> 4401; a foreign origin -> the handshake is refused.
    async with s.socket(None) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await receive(ws)
        assert closed.value.rcvd.code == 4401
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with s.socket(cookie, origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403

    async with s.socket(cookie) as ws:
        reply_id, frames = await send_and_collect(ws, "Hello from production")
    done = frames[-1]
    reply = await database_sync_to_async(get_reply)(reply_id)
    assert done["status"] == reply.status == "done", (done, s.log("worker"))
    assert reply.content and reply.content == done["content"] == delta_text(frames)
    assert 0 < reply.completion_tokens <= 32 and reply.model_name == "grok-1-tiny-demo"
    assert await database_sync_to_async(UsageEntry.objects.filter(message_id=reply_id).exists)()
    # Acknowledged once saved: nothing left in the stream, nothing pending.
    assert redis_db.xlen(jobs.STREAM) == 0
    assert redis_db.xpending(jobs.STREAM, jobs.GROUP)["pending"] == 0


@pytest.mark.production
async def test_stop_reaches_the_worker_process_through_redis(production_stack, cookie):
    s = await asyncio.to_thread(production_stack, GROK_MAX_NEW_TOKENS="400")
    async with s.socket(cookie) as ws:
        reply_id, frames = await send_and_collect(ws, "Go on", until=lambda fs: any(f["type"] == "delta" for f in fs))
        await ws.send(json.dumps({"type": "stop", "message_id": reply_id}))
        while frames[-1]["type"] != "done":
            frames.append(await receive(ws))
    reply = await database_sync_to_async(get_reply)(reply_id)
    assert frames[-1]["status"] == reply.status == "stopped"
    assert reply.content == frames[-1]["content"] == delta_text(frames) and reply.completion_tokens < 400


@pytest.mark.production
async def test_sigterm_lets_the_reply_in_hand_finish(production_stack, cookie, redis_db):
    s = await asyncio.to_thread(production_stack, GROK_MAX_NEW_TOKENS="60", GROK_WORKER_DRAIN_SECONDS="30")
    async with s.socket(cookie) as ws:
        reply_id, frames = await send_and_collect(ws, "Hi", until=lambda fs: any(f["type"] == "delta" for f in fs))
        s.processes["worker"].send_signal(signal.SIGTERM)
        while frames[-1]["type"] != "done":
            frames.append(await receive(ws))
    assert frames[-1]["status"] == "done" and frames[-1]["content"] == delta_text(frames)
    assert await asyncio.to_thread(s.processes["worker"].wait, 20) == 0
    assert redis_db.xlen(jobs.STREAM) == 0


def test_embedded_mode_end_to_end(tmp_path, tiny_checkpoint):
    """`make run`'s mode: no Redis, SQLite, the worker in a thread that the first socket starts."""
    env = {
        "DJANGO_SETTINGS_MODULE": "grokweb.settings.base",
        "GROKWEB_VAR_DIR": str(tmp_path),
        "GROK_MAX_NEW_TOKENS": "24",
    }
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "GROK_EMBEDDED_WORKER")}
    run = {"cwd": ROOT, "env": {**base, **env}, "check": True, "capture_output": True, "text": True, "timeout": 120}
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], **run)
    session_key = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", MAKE_SESSION], **run
    ).stdout.strip().splitlines()[-1]
    s = Stack(tmp_path, tiny_checkpoint, worker=False, base_env=base, **env)
    try:
        s.wait_ready()
        reply_id, frames = asyncio.run(_one_reply(s, f"sessionid={session_key}"))
    finally:
        s.stop()
    done = frames[-1]
    assert done["status"] == "done", (done, s.log("daphne"))
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        saved = db.execute("SELECT status, content FROM chat_message WHERE id = ?", (reply_id,)).fetchone()
    assert saved == ("done", done["content"]) and done["content"] == delta_text(frames)


MAKE_SESSION = """
from django.contrib.auth import get_user_model
from django.test import Client
client = Client()
client.force_login(get_user_model().objects.create_user("ann", password="a-Strong-pass-42"))
print(client.cookies["sessionid"].value)
"""


async def _one_reply(s: Stack, cookie: str) -> tuple[int, list[dict]]:
    async with s.socket(cookie) as ws:
        return await send_and_collect(ws, "Hello embedded")


NEW_SESSION = """
import json, os
data = json.loads(os.environ["GW_DATA"])
from django.contrib.auth import get_user_model
from django.test import Client
client = Client()
client.force_login(get_user_model().objects.create_user(data["username"], password="a-Strong-pass-42"))
print(client.cookies["sessionid"].value)
"""


def test_daphne_answers_huge_and_non_utf8_frames_and_keeps_the_socket(embedded_server):
    """Past Daphne's own limit (1 MiB), and for text that is not UTF-8, Daphne would drop the
    connection: the page gets the protocol's `error` frame instead (grokweb/websocket_protocol.py)."""
    session = embedded_server.shell(NEW_SESSION, username="frames").splitlines()[-1]
    port = embedded_server.url.rsplit(":", 1)[1]

    async def talk() -> list[dict]:
        async with ws_connect(
            f"ws://127.0.0.1:{port}/ws/chat/", origin=embedded_server.url,
            additional_headers={"Cookie": f"sessionid={session}"}, max_size=None,
        ) as ws:
            frames = []
            for frame in [
                "x" * (100 * 1024),  # over our 64 KiB: the consumer refuses it
                json.dumps({"type": "ping", "pad": "x" * (2 * 1024 * 1024)}),  # over Daphne's 1 MiB
                b'{"type": "ping", "pad": "\xff\xfe"}',  # a text frame that is not UTF-8
            ]:
                await ws.send(frame, text=True)
                frames.append(await receive(ws))
            await ws.send(json.dumps({"type": "ping"}))
            frames.append(await receive(ws))
            return frames

    frames = asyncio.run(talk())
    assert [(f["type"], f.get("code")) for f in frames] == [
        ("error", "too_large"), ("error", "too_large"), ("error", "bad_json"), ("pong", None),
    ]
