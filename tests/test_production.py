"""The production path for real: PostgreSQL, Redis, Daphne and a separate worker process.

Daphne and `manage.py run_inference_worker` run as subprocesses with the production settings,
on the pytest-django test database (committed data: both see it) and a Redis database of their
own (GROKWEB_TEST_REDIS_URL, flushed before and after). A real websocket client talks to Daphne.
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
from tests.stack import ROOT, TEST_REDIS_URL, Stack, delta_text, receive, send_and_collect


@pytest.fixture
def redis_settings(settings, redis_db):
    settings.REDIS_URL = TEST_REDIS_URL
    jobs._queue_for.cache_clear()
    yield
    jobs._queue_for.cache_clear()


# -- the queue alone --------------------------------------------------------------------------


@pytest.mark.production
def test_redis_queue_takes_acks_and_cancels(redis_db):
    queue = jobs.RedisQueue(TEST_REDIS_URL, max_length=2)
    assert queue.take(4, 0) == []  # creates the group; nothing yet
    queue.put(11)
    queue.put(12)
    with pytest.raises(jobs.QueueFull):
        queue.put(13)
    first, second = queue.take(4, 0.05)
    assert (first.message_id, second.message_id) == (11, 12)
    # Taken but not acknowledged: pending, and still counted against the bound.
    assert redis_db.xpending(jobs.STREAM, jobs.GROUP)["pending"] == 2
    with pytest.raises(jobs.QueueFull):
        queue.put(13)
    queue.cancel(12)
    assert queue.cancelled([11, 12]) == {12}
    queue.ack(first)
    queue.ack(second)
    assert redis_db.xlen(jobs.STREAM) == 0
    assert redis_db.xpending(jobs.STREAM, jobs.GROUP)["pending"] == 0
    assert queue.cancelled([12]) == set()  # acknowledging clears the cancel
    # Another worker sees only what nobody took; a deleted stream is recreated on the fly.
    redis_db.delete(jobs.STREAM)
    queue.put(14)
    other = jobs.RedisQueue(TEST_REDIS_URL, max_length=2)
    other.consumer = "other"
    assert [j.message_id for j in queue.take(1, 0.05)] == [14]
    assert other.take(1, 0.05) == []


@pytest.mark.production
def test_the_backlog_is_what_no_worker_took_oldest_first(redis_db):
    for queue in (jobs.LocalQueue(8), jobs.RedisQueue(TEST_REDIS_URL, max_length=8)):
        assert queue.waiting(10, 0) == (0, [])  # for Redis: no stream yet
        for message_id in (1, 2, 3, 4):
            queue.put(message_id)
        assert [j.message_id for j in queue.take(1, 0.05)] == [1]
        assert queue.waiting(10, 0) == (0, [2, 3, 4]) and queue.waiting(2, 0) == (0, [2, 3])


@pytest.mark.production
def test_workers_learn_how_many_replies_the_others_hold_and_one_tells_the_backlog(redis_db):
    ann, bob = jobs.RedisQueue(TEST_REDIS_URL, 8), jobs.RedisQueue(TEST_REDIS_URL, 8)
    ann.consumer, bob.consumer = "ann", "bob"
    redis_db.hset(jobs.WAITING, "aaron", "7 1000.0")  # a worker silent since 1970: gone
    ann.put(5)
    ann.put(6)
    assert ann.take(1, 0.05)[0].message_id == 5
    assert ann.waiting(10, 3) == (0, [6])
    assert bob.waiting(10, 2) == (3, [])  # ann, the least name alive, tells the backlog
    assert ann.waiting(10, 1) == (2, [6])
    assert set(redis_db.hkeys(jobs.WAITING)) == {"ann", "bob"}


@pytest.mark.production
def test_enqueue_with_a_full_redis_queue_is_busy_and_marks_the_reply_failed(
    committed_db, redis_settings, settings, user_factory, conversation_factory
):
    settings.GROK_MAX_QUEUE = 0
    conversation = conversation_factory(user_factory("ann"), [("user", "hi")])
    reply = conversation.messages.create(role="assistant", status="queued")
    with pytest.raises(jobs.ChatError) as refused:
        jobs.enqueue(reply.id)
    assert refused.value.code == "busy"
    assert refused.value.extra == {"message_id": reply.id, "conversation_id": conversation.id}
    reply.refresh_from_db()
    assert reply.status == "failed" and reply.error


# -- the whole stack --------------------------------------------------------------------------


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
