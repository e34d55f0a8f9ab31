"""Multi-turn chats with and without prefix reuse (inference/engine.py), side by side in one run.

Conversations of 10 turns with a shared persona of about 300 tokens, user messages of about 30
and replies of up to 64 tokens, prompts written by chat/prompts.py as the worker writes them:

1. one conversation alone: time to first token (TTFT) of turns 1, 5 and 10 at the engine (from
   `add` to the step that samples the first token) and the prompt tokens it prefilled;
2. 8 conversations at once through 8 slots, each sending its next turn when its reply is in:
   TTFT of turns 1, 5 and 10 (mean over the 8), prefill tokens computed, total tokens/s.

Runs alternate A (GROK_PREFIX_CACHE=0: no reuse) and B (8 spare rows) twice, A B A B, each on a
fresh engine warmed up by one short request of another tenant. Sampling is seeded, so A and B
write the same replies and do the same work but for what B reuses.

    .venv/bin/python -m bench.multiturn [--checkpoint DIR | --wide] [--repeats 2] [--conversations 8]

Without --checkpoint it builds the tiny checkpoint into a temporary folder; --wide runs a seeded
random int8 checkpoint at Grok-1's width (bench/llama_peer.py's shape: 2 layers, 8 experts of
8192, emb 6144, 48/8 heads of 128; cached under var/multiturn/) in bfloat16, as a worker runs
int8 weights on the CPU. Its prefill costs ~1,000x the tiny model's a token, hence
--conversations to run fewer at once. Results: docs/BENCHMARKS.md.
"""

import argparse
import dataclasses
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from chat.prompts import build_prompt, public_prefix
from inference.engine import Engine, Request, SamplingParams

TURNS = 10
REPLY_TOKENS = 64
CONVERSATIONS = 8
SHOWN_TURNS = (1, 5, 10)
CORPUS = Path(__file__).resolve().parents[1] / "inference" / "tiny_corpus.txt"


def texts(engine: Engine) -> tuple[str, list[list[str]]]:
    """(a persona of ~300 tokens, CONVERSATIONS lists of TURNS user messages of ~30 tokens), from the tiny corpus."""
    words = " ".join(line for line in CORPUS.read_text().splitlines() if line and not line.startswith("#")).split()
    persona, n = [], 0
    while len(engine.tokenizer.encode(" ".join(persona))) < 300:
        persona.append(words[n])
        n += 1
    messages = []
    for _ in range(CONVERSATIONS):
        chat = []
        for _ in range(TURNS):
            chat.append(" ".join(words[n : n + 18]))
            n += 18
        messages.append(chat)
    return " ".join(persona), messages


@dataclass
class Chat:
    """One conversation: its turns so far and what each of its replies measured."""

    user: str
    messages: list[str]
    turns: list[tuple[str, str]] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    prompt: list[int] = field(default_factory=list)  # prompt tokens per turn
    computed: list[int] = field(default_factory=list)  # of those, prefilled (not from the cache)

    def next_request(self, engine: Engine, persona: str) -> Request:
        turn = len(self.ttft)
        self.turns.append(("user", self.messages[turn]))
        prompt = build_prompt(persona, self.turns, engine.tokenizer, context_len=engine.context_len, max_new_tokens=REPLY_TOKENS)
        params = SamplingParams(temperature=0.8, top_p=0.95, seed=turn, max_new_tokens=REPLY_TOKENS)
        public = public_prefix(prompt.ids, persona, engine.tokenizer)
        return Request(f"{self.user}-{turn}", prompt.ids, params, cache_salt=self.user, public_prefix=public)


def wide_checkpoint() -> Path:
    """The Grok-1-width random checkpoint, written once under var/multiturn/: int8 weights drawn
    straight (a layer in memory at a time), with the tiny model's tokenizer, and room for the
    tenth turn's ~1,450 tokens."""
    from bench.llama_peer import wide_config
    from inference.tiny import make_random_int8, train_tokenizer

    config = dataclasses.replace(wide_config(layers=2, experts=8, ffn=8192), context_len=2048)
    folder = Path(__file__).resolve().parents[1] / "var" / "multiturn" / f"wide-{config.num_layers}x{config.num_experts}x{config.ffn_size}"
    if not (folder / "config.json").exists():
        print(f"writing {folder} ...", flush=True)
        make_random_int8(folder, config, seed=0, model_name="grok-1-wide-random")
        (folder / "tokenizer.model").write_bytes(train_tokenizer(config.vocab_size))
    return folder


def serve(engine: Engine, persona: str, chats: list[Chat]) -> tuple[int, float]:
    """Run every chat to its last turn, all at once -> (tokens generated, seconds)."""
    pending = {}  # request id -> (chat, request, added at, first token at, reply text)
    for chat in chats:
        request = chat.next_request(engine, persona)
        engine.add(request)
        pending[request.id] = [chat, request, time.perf_counter(), None, ""]
    generated, start = 0, time.perf_counter()
    while pending:
        deltas = engine.step()
        now = time.perf_counter()
        sampled = {s.request.id for s in engine.slots if s is not None and s.completion_tokens}
        for request_id, entry in pending.items():
            if entry[3] is None and (request_id in sampled or any(d.request_id == request_id for d in deltas)):
                entry[3] = now
        for delta in deltas:
            entry = pending[delta.request_id]
            entry[4] += delta.text
            if delta.finish_reason is None:
                continue
            chat, request, added, first, text = pending.pop(delta.request_id)
            generated += delta.completion_tokens
            chat.ttft.append(first - added)
            chat.prompt.append(delta.prompt_tokens)
            chat.computed.append(delta.prompt_tokens - delta.cached_tokens)
            chat.turns.append(("assistant", text.strip()))
            if len(chat.ttft) < TURNS:
                following = chat.next_request(engine, persona)
                engine.add(following)
                pending[following.id] = [chat, following, time.perf_counter(), None, ""]
    return generated, time.perf_counter() - start


def warm(engine: Engine) -> Engine:
    """One short request first, of another tenant (nothing of it is reused): a fresh engine's
    first forward pass costs more than the rest, and turn 1 would carry that."""
    ids = engine.tokenizer.encode("A few words to warm the engine up.")
    engine.add(Request("warm-up", ids, SamplingParams(max_new_tokens=2), cache_salt="warm-up"))
    while engine.has_work():
        engine.step()
    engine.stats = type(engine.stats)()  # the hit rate counts the chats only
    return engine


def run(checkpoint: Path, engine_args: dict, prefix_cache: int, persona: str, messages: list[list[str]]) -> dict:
    alone = warm(Engine(checkpoint, max_batch=len(messages), prefix_cache=prefix_cache, **engine_args))
    one = Chat("solo", messages[0])
    serve(alone, persona, [one])
    loaded = warm(Engine(checkpoint, max_batch=len(messages), prefix_cache=prefix_cache, **engine_args))
    chats = [Chat(f"user{i}", m) for i, m in enumerate(messages)]
    tokens, seconds = serve(loaded, persona, chats)
    return {
        "alone_ttft": [one.ttft[t - 1] for t in SHOWN_TURNS],
        "alone_computed": [one.computed[t - 1] for t in SHOWN_TURNS],
        "alone_prompt": [one.prompt[t - 1] for t in SHOWN_TURNS],
        "loaded_ttft": [statistics.mean(c.ttft[t - 1] for c in chats) for t in SHOWN_TURNS],
        "loaded_computed": sum(sum(c.computed) for c in chats),
        "loaded_prompt": sum(sum(c.prompt) for c in chats),
        "tokens_per_second": tokens / seconds,
        "hit_rate": loaded.stats.hit_rate,
        "replies": [c.turns[1::2] for c in chats],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: build the tiny one)")
    parser.add_argument("--wide", action="store_true", help="a random int8 checkpoint at Grok-1's width")
    parser.add_argument("--repeats", type=int, default=2, help="A B pairs (default 2: A B A B)")
    parser.add_argument("--conversations", type=int, default=CONVERSATIONS, help="at once, in the second part")
    args = parser.parse_args()
    engine_args = {"quant": "none"}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if args.wide:
            checkpoint = wide_checkpoint()
            engine_args = {"quant": "int8", "device": "cpu", "dtype": torch.bfloat16}
        if checkpoint is None:
            from inference.tiny import make_tiny

            checkpoint = Path(tmp) / "tiny"
            make_tiny(checkpoint, seed=0)
        probe = Engine(checkpoint, max_batch=1, prefix_cache=0, **engine_args)
        persona, messages = texts(probe)
        messages = messages[: args.conversations]
        print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"persona {len(probe.tokenizer.encode(persona))} tokens, {TURNS} turns, replies <= {REPLY_TOKENS} tokens")
        del probe  # its weights: the runs load their own
        results: dict[str, list[dict]] = {"A": [], "B": []}
        for i in range(args.repeats):
            for mode, rows in (("A", 0), ("B", len(messages))):
                results[mode].append(run(checkpoint, engine_args, rows, persona, messages))
                print(f"run {i + 1} {mode} done", flush=True)
        # Seeded sampling: reuse must not change a word.
        assert all(r["replies"] == results["A"][0]["replies"] for rs in results.values() for r in rs)
        report(results, len(messages))


def report(results: dict[str, list[dict]], conversations: int) -> None:
    names = {"A": "A, no reuse (GROK_PREFIX_CACHE=0)", "B": f"B, reuse (GROK_PREFIX_CACHE={conversations})"}

    def ms(values: list[float]) -> str:
        return " / ".join(f"{v * 1000:.0f}" for v in values)

    print("\none conversation alone, turns 1 / 5 / 10, each run:")
    print(f"{'mode':<36} {'TTFT ms':<22} {'prefilled / prompt tokens'}")
    for mode, runs in results.items():
        for r in runs:
            tokens = " / ".join(f"{c}/{p}" for c, p in zip(r["alone_computed"], r["alone_prompt"]))
            print(f"{names[mode]:<36} {ms(r['alone_ttft']):<22} {tokens}")
    print(f"\n{conversations} conversations at once, each run:")
    print(f"{'mode':<36} {'mean TTFT ms, turns 1/5/10':<28} {'prefilled / prompt tokens':<27} {'tokens/s':>8} {'hit rate':>9}")
    for mode, runs in results.items():
        for r in runs:
            tokens = f"{r['loaded_computed']}/{r['loaded_prompt']}"
            print(f"{names[mode]:<36} {ms(r['loaded_ttft']):<28} {tokens:<27} {r['tokens_per_second']:>8.1f} {r['hit_rate']:>9.2f}")


if __name__ == "__main__":
    main()
