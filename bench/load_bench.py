"""200 logged-in websocket clients on loopback each send one message at the same moment to the
real stack (Daphne, worker processes, Redis, PostgreSQL; bench/harness.py). Reports p50/p99
time to first token and the gap between text frames at the clients, errors (the target is none),
the places in line the pages were told, and the peak RSS of each process. Bounded: every reply
must be done within --timeout seconds of being sent, and the run stops by itself.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.load_bench [--clients 200] [--new-tokens 16] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from bench.harness import Site, many_replies, percentile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=150.0)
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the queue")
    args = parser.parse_args()
    env = {
        "GROK_MAX_NEW_TOKENS": str(args.new_tokens),
        "GROK_MAX_BATCH": str(args.batch),
        "GROK_MAX_QUEUE": str(2 * args.clients),  # the default 64 would refuse most as `busy`
    }
    with Site(users=args.clients, **env) as site:
        for i in range(2, args.workers + 1):
            site.stack.add_worker(f"worker{i}")
        started = time.monotonic()
        replies = asyncio.run(many_replies(site.stack, site.cookies, timeout=args.timeout))
        wall = time.monotonic() - started
        rss = {name: site.stack.peak_rss(name) / 2**20 for name in site.stack.processes}
    ttft = [r.deltas[0] - r.sent_at for r in replies if r.deltas]
    gaps = [b - a for r in replies for a, b in zip(r.deltas, r.deltas[1:])]
    errors = [r.error for r in replies if r.error]
    tokens = sum(r.done["usage"]["completion_tokens"] for r in replies if r.done)
    print(f"{args.clients} clients, {args.new_tokens} new tokens a reply, {args.batch} slots, {args.workers} worker(s): "
          f"{len(replies) - len(errors)} replies done, {tokens} tokens in {wall:.1f} s")
    print(f"time to first token: p50 {percentile(ttft, 50):.2f} s, p99 {percentile(ttft, 99):.2f} s")
    print(f"gap between text frames: p50 {percentile(gaps, 50) * 1000:.0f} ms, "
          f"p99 {percentile(gaps, 99) * 1000:.0f} ms ({len(gaps)} gaps)")
    told = [r.positions for r in replies if r.positions]
    rises = [b - a for p in told for a, b in zip(p, p[1:]) if b >= a]
    print(f"place in line: {len(told)} replies were told it ({sum(map(len, told))} `queued` frames); first told "
          f"p50 {percentile([p[0] for p in told], 50):.0f}, max {max((p[0] for p in told), default=0)}; "
          f"frames not moving up: {len(rises)}" + (f" (by at most {max(rises)})" if rises else ""))
    print(f"errors: {len(errors)}" + "".join(f"\n  {e}" for e in sorted(set(errors))[:5]))
    print("peak RSS: " + ", ".join(f"{name} {mib:.0f} MiB" for name, mib in rss.items()))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
