"""Where the web path's time goes: one logged-in client sends messages one after the other to
the real stack (bench/harness.py), and every stage a reply passes through writes the time it got
there (bench/trace_probe/sitecustomize.py, on the stack processes' PYTHONPATH only). Prints the
median of each stage over the warm replies, in ms from the client's send, and the time to first
token at the client against the worker's own (from `add` to the engine to the first text, saved
on the reply): what the web stack adds.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.web_trace [--messages 14] [--same-conversation]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.harness import Site
from tests.stack import ROOT, receive

PROBE = ROOT / "bench" / "trace_probe"
COLD = 2  # the first replies load code and warm the caches: left out of the medians


async def client(site: Site, messages: int, same_conversation: bool) -> list[dict]:
    """Send `messages` messages one after the other; per reply its send, first delta (wall
    clock) and id."""
    replies, conversation_id = [], None
    async with site.stack.socket(site.cookies[0]) as ws:
        for i in range(messages):
            await asyncio.sleep(0.3)  # the previous reply's tail (ack, last events) is over
            sent = time.time()
            # As the page sends it: with the persona picked in its menu.
            await ws.send(json.dumps({"type": "send", "conversation_id": conversation_id, "persona": "grok",
                                      "content": f"Hello number {i}, tell me a story"}))
            first, reply_id = None, None
            while reply_id is None:
                frame = await receive(ws, 60)
                if frame["type"] == "accepted" and same_conversation:
                    conversation_id = frame["conversation_id"]
                elif frame["type"] == "delta" and first is None:
                    first = time.time()
                elif frame["type"] == "done":
                    reply_id = frame["message_id"]
                elif frame["type"] == "error":
                    raise RuntimeError(frame)
            replies.append({"sent": sent, "first delta at the client": first, "id": reply_id})
    return replies


def stages(trace_dir: Path, replies: list[dict]) -> list[dict[str, float]]:
    """Per reply, each stage's first time in the reply's window (its send to the next send), in
    ms from the send."""
    marks = []
    for log in trace_dir.glob("*.log"):
        for line in log.read_text().splitlines():
            stage, at = line.rsplit(" ", 1)
            marks.append((float(at), stage))
    marks.sort()
    ends = [r["sent"] for r in replies[1:]] + [float("inf")]
    result = []
    for reply, end in zip(replies, ends):
        seen = {}
        for at, stage in marks:
            if reply["sent"] <= at < end and stage not in seen:
                seen[stage] = (at - reply["sent"]) * 1000
        seen["first delta at the client"] = (reply["first delta at the client"] - reply["sent"]) * 1000
        result.append(seen)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=14)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--same-conversation", action="store_true", help="one chat of N turns, not N chats")
    parser.add_argument("--detail", action="store_true", help="mark the quota check and the enqueue too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="grokweb-trace-") as trace_dir:
        env = {"GROK_MAX_NEW_TOKENS": str(args.new_tokens), "GROKWEB_TRACE_DIR": trace_dir,
               "PYTHONPATH": os.pathsep.join([str(PROBE), str(ROOT)])}
        if args.detail:
            env["GROKWEB_TRACE_DETAIL"] = "1"
        with Site(**env) as site:
            from chat.models import Message

            replies = asyncio.run(client(site, args.messages, args.same_conversation))
            worker = {m.pk: m.time_to_first_token * 1000 for m in Message.objects.filter(pk__in=[r["id"] for r in replies])}
            traced = stages(Path(trace_dir), replies)
    warm = [(t, worker[r["id"]]) for t, r in zip(traced, replies)][COLD:]
    order = sorted({s for t, _ in warm for s in t}, key=lambda s: statistics.median(t[s] for t, _ in warm if s in t))
    print(f"{len(warm)} warm replies ({COLD} cold left out), {args.new_tokens} new tokens each, "
          f"{'one conversation' if args.same_conversation else 'a new conversation each'}; medians, ms from the send:")
    print("| stage | ms |\n|---|---:|")
    for stage in order:
        print(f"| {stage} | {statistics.median(t[stage] for t, _ in warm if stage in t):.1f} |")
    client_ttft = [t["first delta at the client"] for t, _ in warm]
    added = [t["first delta at the client"] - w for t, w in warm]
    print(f"TTFT at the client {statistics.median(client_ttft):.1f} ms, in the worker "
          f"{statistics.median(w for _, w in warm):.1f} ms: the web stack adds {statistics.median(added):.1f} ms "
          f"(median of the differences; min {min(added):.1f}, max {max(added):.1f})")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
