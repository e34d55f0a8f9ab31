"""The web path's cost, measured side by side in one run: N logged-in websocket clients (N = 1,
10, 50) each send a message at the same moment to the real stack (Daphne, a worker process,
Redis, PostgreSQL; bench/harness.py), and we compare

- tokens/s reaching the clients (completion tokens of all replies / from the first send to the
  last `done` received) with tokens/s the worker's engine produced (the same tokens / from the
  first reply it took to the last it finished, from the `duration` it saved on each reply);
- time to first token at the client (send -> first delta) with the worker's own (taking the
  job -> first text, saved on the reply), p50 over the N replies.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.e2e_bench [--clients 1 10 50] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os

from bench.harness import Site, many_replies, percentile


def measure(site: Site, clients: int) -> dict:
    from chat.models import Message

    replies = asyncio.run(many_replies(site.stack, site.cookies[:clients]))
    errors = [r.error for r in replies if r.error]
    done = [r for r in replies if r.done and r.deltas]
    saved = Message.objects.filter(pk__in=[r.done["message_id"] for r in done])
    tokens = sum(m.completion_tokens for m in saved)
    # The worker's span: from taking the first of these jobs to finishing the last (its clock).
    finished = [m.updated_at.timestamp() for m in saved]
    taken = [m.updated_at.timestamp() - m.duration for m in saved]
    engine_span = max(finished) - min(taken)
    client_span = max(r.done_at for r in done) - min(r.sent_at for r in replies)
    client_ttft = [r.deltas[0] - r.sent_at for r in done]
    worker_ttft = [m.time_to_first_token for m in saved]
    return {
        "clients": clients,
        "errors": errors,
        "tokens": tokens,
        "client_tps": tokens / client_span,
        "engine_tps": tokens / engine_span,
        "client_ttft": percentile(client_ttft, 50),
        "worker_ttft": percentile(worker_ttft, 50),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    env = {"GROK_MAX_NEW_TOKENS": str(args.new_tokens), "GROK_MAX_BATCH": str(args.batch)}
    print(f"{args.new_tokens} new tokens a reply, {args.batch} slots, one worker process")
    print("| clients | tokens | tokens/s at the clients | tokens/s of the engine | ratio "
          "| TTFT p50 at the client | TTFT p50 in the worker | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    with Site(users=max(args.clients), **env) as site:
        for clients in args.clients:
            r = measure(site, clients)
            print(f"| {clients} | {r['tokens']} | {r['client_tps']:.1f} | {r['engine_tps']:.1f} | "
                  f"{r['client_tps'] / r['engine_tps']:.2f} | {r['client_ttft'] * 1000:.0f} ms | "
                  f"{r['worker_ttft'] * 1000:.0f} ms | {len(r['errors'])} |", flush=True)
            for error in r["errors"][:3]:
                print("  error:", error)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
