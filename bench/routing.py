"""Routing a conversation's turns to the worker that caches it (chat/jobs.py), on the whole stack
with two worker processes.

Four users each hold a conversation of bench/multiturn.py's 10 turns at once, over the websocket
(bench/harness.py: Daphne, two workers of GROK_MAX_BATCH=2 and GROK_PREFIX_CACHE=8, Redis,
PostgreSQL), each sending its next turn as soon as the last reply is done. For turns 2 to 10:
how many reused their conversation's previous prompt and reply (`Message.cached_tokens` at least
the previous prompt's length, but for the two tokens where a reply meets the next turn), the
prompt tokens prefilled, and the time to first token at the client.

Runs alternate A (no routing: the client deletes the conversation's affinity key before each
turn, so the job goes to the shared stream, as before routing) and B (routing), A B A B, each on
a fresh stack. Greedy sampling, so A and B write the same replies.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.routing [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import redis

from bench.harness import Site, converse
from bench.multiturn import REPLY_TOKENS, texts
from inference.engine import Engine
from inference.tiny import make_tiny

USERS = 4


def run(routing: bool, persona: str, conversations: list[list[str]]) -> list[list[dict]]:
    env = {"GROK_PREFIX_CACHE": "8", "GROK_TEMPERATURE": "0", "GROK_MAX_NEW_TOKENS": str(REPLY_TOKENS)}
    with Site(users=USERS, **env) as site:
        from chat.models import Persona

        for each in Persona.objects.all():  # whichever the users' first persona is
            each.set_system_prompt(persona)
        site.stack.add_worker("worker2")

        from chat.jobs import AFFINITY_PREFIX

        client = redis.Redis.from_url(site.redis.url)

        def no_routing(conversation_id: int) -> None:  # the job goes to the shared stream, as before routing
            client.delete(f"{AFFINITY_PREFIX}{conversation_id}")

        async def everyone():
            return await asyncio.gather(*(
                converse(site.stack, cookie, messages, None if routing else no_routing)
                for cookie, messages in zip(site.cookies, conversations)
            ))

        try:
            return asyncio.run(everyone())
        finally:
            client.close()


def summary(runs: list[list[dict]]) -> dict:
    """Over turns 2 to 10 of every conversation: reused / all, prefilled tokens, client TTFT."""
    later = [(prev, turn) for turns in runs for prev, turn in zip(turns, turns[1:])]
    reused = sum(turn["cached"] >= prev["prompt"] - 2 for prev, turn in later)
    ttft = [turn["client_ttft"] * 1000 for _, turn in later]
    return {
        "reused": f"{reused}/{len(later)}",
        "prefilled": sum(turn["prompt"] - turn["cached"] for _, turn in later),
        "prompt": sum(turn["prompt"] for _, turn in later),
        "ttft_median": statistics.median(ttft),
        "ttft_p90": statistics.quantiles(ttft, n=10)[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="A B pairs (default 2: A B A B)")
    parser.add_argument("--one", choices=("A", "B"), help=argparse.SUPPRESS)  # one run, in a process of its own
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        make_tiny(Path(tmp) / "tiny", seed=0)
        persona, conversations = texts(Engine(Path(tmp) / "tiny", quant="none", max_batch=1, prefix_cache=0))
    conversations = (conversations * USERS)[:USERS]
    if args.one is not None:
        print(json.dumps(run(args.one == "B", persona, conversations)))
        return
    # Each run in a fresh process: Django's settings are read once a process (bench/multiturn_web.py).
    results: dict[str, list[dict]] = {"A": [], "B": []}
    texts_of = {}
    for i in range(args.repeats):
        for mode in ("A", "B"):
            out = subprocess.run(
                [sys.executable, "-m", "bench.routing", "--one", mode], capture_output=True, text=True, check=True,
            ).stdout
            runs = json.loads(out.strip().splitlines()[-1])
            texts_of.setdefault("first", [[t["text"] for t in turns] for turns in runs])
            assert [[t["text"] for t in turns] for turns in runs] == texts_of["first"], "greedy replies differ"
            results[mode].append(summary(runs))
            print(f"run {i + 1} {mode} done", flush=True)
    names = {"A": "A, no routing", "B": "B, routing"}
    print(f"\n{USERS} conversations at once over 2 workers, turns 2-10, each run:")
    print(f"{'mode':<16} {'reused the conversation':<24} {'prefilled / prompt tokens':<26} TTFT at the client ms (median, p90)")
    for mode, rows in results.items():
        for row in rows:
            print(f"{names[mode]:<16} {row['reused']:<24} {str(row['prefilled']) + ' / ' + str(row['prompt']):<26} "
                  f"{row['ttft_median']:.0f}, {row['ttft_p90']:.0f}")


if __name__ == "__main__":
    main()
