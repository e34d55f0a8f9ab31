"""Fault scenarios on the whole stack (tests/stack.py): a worker killed mid-reply, Redis
restarted mid-reply. Each runs the fault and reports what the page saw; tests/test_recovery.py
checks the reports, and bench/fault_kill_worker.py and bench/fault_restart_redis.py print them.
Django must be set up before they run (pytest-django, or bench/harness.py's Site).
"""

from __future__ import annotations

import asyncio
import time

import redis
import websockets

from tests.stack import RedisServer, Stack, receive, send

CLAIM_SECONDS = "2"  # the stacks these scenarios run on use a short claim time
DOWN_SECONDS = 2.0  # how long Redis stays away


async def kill_worker_mid_reply(stack: Stack, cookie: str) -> dict:
    """With two workers up, kill (SIGKILL) the one writing a reply once its first text has come:
    the other takes the reply over once GROK_JOB_CLAIM_SECONDS pass without a heartbeat."""
    from chat.jobs import GROUP, STREAM  # needs Django's settings, set up by the caller

    await asyncio.to_thread(stack.add_worker, "worker2")
    jobs = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    async with stack.socket(cookie) as ws:
        page = await send(ws, "Tell me a long story")
        await page.follow(ws, until=lambda p: p.text)
        # The consumer named "<host>-<pid>" holds the job.
        (pending,) = jobs.xpending_range(STREAM, GROUP, min="-", max="+", count=1)
        pid = int(pending["consumer"].rsplit("-", 1)[1])
        killed = next(name for name, p in stack.processes.items() if p.pid == pid)
        before = page.text
        stack.processes[killed].kill()
        killed_at = time.monotonic()
        await page.follow(ws, until=lambda p: len(p.text) > len(before) or p.done)
        resumed_after = time.monotonic() - killed_at
        await page.follow(ws)
    survivor = "worker2" if killed == "worker" else "worker"
    result = {
        "killed": killed,
        "finished_by": survivor,
        "text_before_kill": before,
        "seconds_to_more_text": resumed_after,
        "page_text": page.text,
        "done": page.done,
        "taken_over": "took over reply" in stack.log(survivor),
        "pending_after": jobs.xpending(STREAM, GROUP)["pending"],
    }
    jobs.close()
    return result


async def restart_redis_mid_reply(stack: Stack, redis_server: RedisServer, cookie: str) -> dict:
    """Stop Redis (no persistence: it comes back empty) for DOWN_SECONDS mid-reply; the page
    reconnects and resumes once it is back, then sends again."""
    async with stack.socket(cookie) as ws:
        page = await send(ws, "Tell me a long story")
        await page.follow(ws, until=lambda p: p.text)
        redis_server.stop()
        stopped_at = time.monotonic()
        try:
            await page.follow(ws)
        except websockets.ConnectionClosed as closed:
            close_code = closed.rcvd.code if closed.rcvd else None
    # A page opened while Redis is away is told so at once.
    async with stack.socket(cookie) as ws:
        try:
            outage_frame = await receive(ws)
        except websockets.ConnectionClosed:
            outage_frame = None
    await asyncio.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - stopped_at)))
    redis_server.start()
    # The page reconnects (with its backoff) and resumes from what it shows.
    reconnects = 0
    while page.done is None:
        reconnects += 1
        try:
            async with stack.socket(cookie) as ws:
                await page.resume(ws)
                await page.follow(ws)
        except websockets.ConnectionClosed:
            await asyncio.sleep(0.5)
    async with stack.socket(cookie) as ws:
        retry = await send(ws, "Hello again")
        await retry.follow(ws)
    return {
        "close_code": close_code,
        "errors": page.errors,
        "outage_frame": outage_frame,
        "reconnects": reconnects,
        "page_text": page.text,
        "done": page.done,
        "retry_done": retry.done,
    }


async def check_taken_over(stack: Stack, result: dict, max_tokens: int) -> None:
    """What `kill_worker_mid_reply` must show, whichever engine the workers drive: the reply
    was taken over and finished, continued after what the page had been shown, and the page
    shows exactly what is saved."""
    from channels.db import database_sync_to_async

    from chat.models import Message

    done = result["done"]
    reply = await database_sync_to_async(Message.objects.get)(pk=done["message_id"])
    assert result["taken_over"] and done["status"] == reply.status == "done", (done, stack.log(result["finished_by"]))
    assert result["text_before_kill"] and reply.content.startswith(result["text_before_kill"])
    assert result["page_text"] == done["content"] == reply.content
    assert 0 < reply.completion_tokens <= max_tokens
