"""Restart Redis (a private redis-server, no persistence: it comes back empty) in the middle of a
reply, and show what the page sees: an `unavailable` error and a closed socket, the same on a
socket opened during the outage; once Redis is back, a reconnect and `resume` bring the whole
reply, nothing saved is lost, and sending again works.

    .venv/bin/python bench/fault_restart_redis.py

Also run by tests/test_recovery.py, which checks what `restart_redis_mid_reply` reports.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the repository root
from bench.harness import Site  # noqa: E402
from tests.stack import RedisServer, Stack, receive, send  # noqa: E402

DOWN_SECONDS = 2.0


async def restart_redis_mid_reply(stack: Stack, redis_server: RedisServer, cookie: str) -> dict:
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


def main() -> None:
    # Greedy: the demo model's greedy replies run to their length (random ones may end early).
    with Site(GROK_MAX_NEW_TOKENS="300", GROK_TEMPERATURE="0") as site:
        result = asyncio.run(restart_redis_mid_reply(site.stack, site.redis, site.cookies[0]))
    done = result["done"]
    codes = [e["code"] for e in result["errors"]]
    print(f"Redis stopped mid-reply for {DOWN_SECONDS} s: the page got errors {codes} and its socket "
          f"closed with code {result['close_code']}")
    print(f"a socket opened during the outage got: {result['outage_frame']}")
    print(f"after {result['reconnects']} reconnect(s) and a resume: status {done['status']}, "
          f"{len(done['content'])} characters; the saved text starts with all the page had shown: "
          f"{done['content'].startswith(result['page_text'])}")
    print(f"a new message afterwards: status {result['retry_done']['status']}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
