"""Restart Redis (a private redis-server, no persistence: it comes back empty) in the middle of a
reply, and show what the page sees: an `unavailable` error and a closed socket, the same on a
socket opened during the outage; once Redis is back, a reconnect and `resume` bring the whole
reply, nothing saved is lost, and sending again works.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.fault_restart_redis

The scenario is tests/faults.py's `restart_redis_mid_reply`; tests/test_recovery.py checks what
it reports.
"""

from __future__ import annotations

import asyncio
import os

from bench.harness import Site
from tests.faults import DOWN_SECONDS, restart_redis_mid_reply


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
