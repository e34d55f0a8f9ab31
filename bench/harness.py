"""What the serving benches run against: a PostgreSQL database of their own (dropped and made
afresh), a private Redis, the tiny model, users on Premium+ with logged-in sessions, and the
processes of tests/stack.py (Daphne plus worker processes, production settings).

    with Site(users=10, GROK_MAX_NEW_TOKENS="64") as site:  # env: the stack's settings
        async with site.stack.socket(site.cookies[0]) as ws: ...

GROKWEB_BENCH_DATABASE_URL picks the server and database name
(default postgres://postgres@127.0.0.1:5432/grokweb_bench).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis
import websockets

from tests.stack import RedisServer, Stack, receive, send

DATABASE_URL = os.environ.get("GROKWEB_BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/grokweb_bench")


class Site:
    def __init__(self, *, users: int = 1, **env: str) -> None:
        self.users = users
        self.env = env

    def __enter__(self) -> Site:
        self._tmp = tempfile.TemporaryDirectory(prefix="grokweb-bench-")
        tmp = Path(self._tmp.name)
        self.redis = RedisServer(tmp)
        _recreate_database(DATABASE_URL)
        # This process talks to the same database and Redis as the stack, with its settings.
        os.environ.update(
            DJANGO_SETTINGS_MODULE="grokweb.settings.production",
            GROKWEB_SECRET_KEY=secrets.token_urlsafe(32),
            DATABASE_URL=DATABASE_URL,
            REDIS_URL=self.redis.url,
        )
        import django

        django.setup()
        from django.core.management import call_command

        from chat.jobs import STREAM
        from inference.tiny import make_tiny

        call_command("migrate", verbosity=0)
        self.cookies = _logged_in_users(self.users)
        make_tiny(tmp / "tiny", seed=0)
        self.stack = Stack(tmp, tmp / "tiny", **self.env)
        client = redis.Redis.from_url(self.redis.url)
        # Ready once the worker has made the consumer group (its first look at the queue).
        self.stack.wait_ready(lambda: bool(client.exists(STREAM)))
        client.close()
        return self

    def __exit__(self, *exc) -> None:
        from django.db import connections

        self.stack.stop()
        self.redis.stop()
        connections.close_all()
        self._tmp.cleanup()


def _recreate_database(url: str) -> None:
    server, name = url.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        db.execute(f'CREATE DATABASE "{name}"')


def _logged_in_users(count: int) -> list[str]:
    """`count` users on Premium+ (4 replies at once, the longest replies); their cookie headers."""
    from django.test import Client

    from chat.billing import do_grant_plan
    from chat.models import Plan, User

    plan = Plan.objects.get(slug="premium-plus")
    cookies = []
    for i in range(count):
        user = User.objects.create(username=f"bench{i}")  # no password: hashing 200 is slow
        do_grant_plan(user, plan)
        client = Client()
        client.force_login(user)
        cookies.append(f"sessionid={client.cookies['sessionid'].value}")
    return cookies


@dataclass
class Reply:
    """One client's reply as it arrived: times are time.monotonic() in the bench process."""

    sent_at: float
    deltas: list[float] = field(default_factory=list)  # arrival time of each delta frame
    positions: list[int] = field(default_factory=list)  # its place in line, as `queued` frames told it
    done: dict | None = None
    done_at: float | None = None
    error: str = ""


async def one_reply(stack: Stack, cookie: str, content: str, start: asyncio.Barrier, timeout: float) -> Reply:
    """Connect, wait at `start` (so that all clients send together), send, follow to `done`."""
    async with stack.socket(cookie) as ws:
        await start.wait()
        reply = Reply(time.monotonic())
        try:
            page = await send(ws, content)
            while page.done is None:
                frame = await receive(ws, timeout)
                if frame["type"] == "delta":
                    reply.deltas.append(time.monotonic())
                elif frame["type"] == "queued":
                    reply.positions.append(frame["position"])
                elif frame["type"] == "error":
                    reply.error = f"{frame['code']}: {frame['message']}"
                elif frame["type"] == "done":
                    page.done = frame
            reply.done, reply.done_at = page.done, time.monotonic()
            if page.done["status"] != "done":
                reply.error = reply.error or page.done["status"]
        except (AssertionError, TimeoutError, websockets.ConnectionClosed) as exc:
            reply.error = reply.error or f"{type(exc).__name__}: {exc}"
        return reply


async def many_replies(stack: Stack, cookies: list[str], timeout: float = 120.0) -> list[Reply]:
    """Each cookie's client sends one message at the same moment; their replies."""
    start = asyncio.Barrier(len(cookies) + 1)  # every socket open first
    clients = [
        asyncio.create_task(one_reply(stack, cookie, f"Hello number {i}, tell me a story", start, timeout))
        for i, cookie in enumerate(cookies)
    ]
    await asyncio.wait_for(start.wait(), 60)
    return await asyncio.gather(*clients)


async def converse(stack: Stack, cookie: str, messages: list[str], before_turn=None) -> list[dict]:
    """One client's conversation, a turn after the other (each sent when the last reply is
    done); per turn: TTFT at the client (send -> first delta) and in the worker (saved on the
    reply), prompt and cached tokens, the reply's text. `before_turn(conversation_id)` runs
    before each turn after the first."""
    from chat.models import Message

    turns, conversation_id = [], None
    async with stack.socket(cookie) as ws:
        for content in messages:
            if conversation_id is not None and before_turn is not None:
                before_turn(conversation_id)
            sent_at = time.monotonic()
            await ws.send(json.dumps({"type": "send", "conversation_id": conversation_id, "content": content}))
            first, done = None, None
            while done is None:
                frame = await receive(ws, 120)
                if frame["type"] == "accepted":
                    conversation_id = frame["conversation_id"]
                elif frame["type"] == "delta" and first is None:
                    first = time.monotonic()
                elif frame["type"] == "done":
                    done = frame
                elif frame["type"] == "error":
                    raise RuntimeError(frame)
            reply = await asyncio.to_thread(Message.objects.get, pk=done["message_id"])
            turns.append({
                "client_ttft": first - sent_at, "worker_ttft": reply.time_to_first_token,
                "prompt": reply.prompt_tokens, "cached": reply.cached_tokens, "text": reply.content,
            })
    return turns


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")
