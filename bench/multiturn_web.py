"""bench/multiturn.py's chat through the whole web stack, with and without prefix reuse.

One logged-in client holds a conversation of 10 turns over the websocket with the real stack
(Daphne, a worker process, Redis, PostgreSQL: bench/harness.py), the persona's system prompt set
to multiturn's ~300 tokens and its user messages: time to first token of turns 1, 5 and 10 at the
client (send -> first delta) beside the worker's own (taking the job -> first text, saved on the
reply), and the prompt tokens that came from the prefix cache (`Message.cached_tokens`).

Runs alternate A (GROK_PREFIX_CACHE=0) and B (GROK_PREFIX_CACHE=8), A B A B, each on a fresh
stack. Greedy sampling (GROK_TEMPERATURE=0), so A and B write the same replies.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.multiturn_web [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import Site, converse
from bench.multiturn import REPLY_TOKENS, SHOWN_TURNS, texts
from inference.engine import Engine
from inference.tiny import make_tiny


def run(prefix_cache: int, persona: str, messages: list[str]) -> list[dict]:
    env = {"GROK_PREFIX_CACHE": str(prefix_cache), "GROK_TEMPERATURE": "0", "GROK_MAX_NEW_TOKENS": str(REPLY_TOKENS)}
    with Site(users=1, **env) as site:
        from chat.models import Persona

        for each in Persona.objects.all():  # whichever the user's first persona is
            each.set_system_prompt(persona)
        return asyncio.run(converse(site.stack, site.cookies[0], messages))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="A B pairs (default 2: A B A B)")
    parser.add_argument("--one", type=int, metavar="ROWS", help=argparse.SUPPRESS)  # one run, in a process of its own
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        make_tiny(Path(tmp) / "tiny", seed=0)
        persona, conversations = texts(Engine(Path(tmp) / "tiny", quant="none", max_batch=1, prefix_cache=0))
    if args.one is not None:
        print(json.dumps(run(args.one, persona, conversations[0])))
        return
    # Each run in a fresh process: Django's settings (the secret key that signs the sessions,
    # the Redis URL) are read once a process, and every stack has its own.
    results: dict[str, list[list[dict]]] = {"A": [], "B": []}
    for i in range(args.repeats):
        for mode, rows in (("A", 0), ("B", 8)):
            out = subprocess.run(
                [sys.executable, "-m", "bench.multiturn_web", "--one", str(rows)],
                capture_output=True, text=True, check=True,
            ).stdout
            results[mode].append(json.loads(out.strip().splitlines()[-1]))
            print(f"run {i + 1} {mode} done", flush=True)
    assert all(
        [t["text"] for t in run_] == [t["text"] for t in results["A"][0]] for runs in results.values() for run_ in runs
    ), "greedy replies differ between runs"
    names = {"A": "A, no reuse (GROK_PREFIX_CACHE=0)", "B": "B, reuse (GROK_PREFIX_CACHE=8)"}
    print(f"\nturns {' / '.join(map(str, SHOWN_TURNS))}, each run:")
    print(f"{'mode':<36} {'TTFT at the client ms':<24} {'TTFT in the worker ms':<24} cached / prompt tokens")
    for mode, runs in results.items():
        for turns in runs:
            shown = [turns[t - 1] for t in SHOWN_TURNS]
            client = " / ".join(f"{t['client_ttft'] * 1000:.0f}" for t in shown)
            worker = " / ".join(f"{t['worker_ttft'] * 1000:.0f}" for t in shown)
            tokens = " / ".join(f"{t['cached']}/{t['prompt']}" for t in shown)
            print(f"{names[mode]:<36} {client:<24} {worker:<24} {tokens}")


if __name__ == "__main__":
    main()
