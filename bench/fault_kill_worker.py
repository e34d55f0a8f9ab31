"""Kill a worker (SIGKILL) in the middle of a reply: another worker takes the reply over once
GROK_JOB_CLAIM_SECONDS have passed without a heartbeat, and finishes it after the saved text.

    .venv/bin/python bench/fault_kill_worker.py

Also run by tests/test_recovery.py, which checks what `kill_worker_mid_reply` reports.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the repository root
from bench.harness import Site  # noqa: E402
from tests.stack import Stack, send  # noqa: E402

CLAIM_SECONDS = "2"  # the stacks these scenarios run on use a short claim time


async def kill_worker_mid_reply(stack: Stack, cookie: str) -> dict:
    """With two workers up, kill the one writing a reply once its first text has come."""
    await asyncio.to_thread(stack.add_worker, "worker2")
    jobs = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    async with stack.socket(cookie) as ws:
        page = await send(ws, "Tell me a long story")
        await page.follow(ws, until=lambda p: p.text)
        # The consumer named "<host>-<pid>" holds the job.
        (pending,) = jobs.xpending_range("grokweb:jobs", "workers", min="-", max="+", count=1)
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
        "pending_after": jobs.xpending("grokweb:jobs", "workers")["pending"],
    }
    jobs.close()
    return result


def main() -> None:
    # Greedy: the demo model's greedy replies run to their length (random ones may end early).
    with Site(GROK_MAX_NEW_TOKENS="200", GROK_JOB_CLAIM_SECONDS=CLAIM_SECONDS, GROK_TEMPERATURE="0") as site:
        result = asyncio.run(kill_worker_mid_reply(site.stack, site.cookies[0]))
    done = result["done"]
    print(f"killed {result['killed']} (SIGKILL) after {len(result['text_before_kill'])} characters")
    print(f"more text after {result['seconds_to_more_text']:.1f} s (claim time {CLAIM_SECONDS} s),"
          f" from {result['finished_by']} (took it over: {result['taken_over']})")
    print(f"done: status {done['status']}, {len(done['content'])} characters, "
          f"{done['usage']['completion_tokens']} tokens; page shows the saved text: "
          f"{result['page_text'] == done['content']}; starts with what was shown before the kill: "
          f"{done['content'].startswith(result['text_before_kill'])}; jobs pending: {result['pending_after']}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
