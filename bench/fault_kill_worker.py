"""Kill a worker (SIGKILL) in the middle of a reply: another worker takes the reply over once
GROK_JOB_CLAIM_SECONDS have passed without a heartbeat, and finishes it after the saved text.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.fault_kill_worker

The scenario is tests/faults.py's `kill_worker_mid_reply`; tests/test_recovery.py checks what it
reports.
"""

from __future__ import annotations

import asyncio
import os

from bench.harness import Site
from tests.faults import CLAIM_SECONDS, kill_worker_mid_reply


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
