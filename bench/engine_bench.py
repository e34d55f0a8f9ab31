"""Engine throughput on the tiny demo model, in one run:

1. prefill and aggregate decode tokens/s per quant mode (none / int8 / nf4) at batch 1, 4, 8, 16, 32,
   with the weight bandwidth the decode rate implies;
2. continuous batching against serving the same requests one after another.

    .venv/bin/python -m bench.engine_bench [--checkpoint DIR]

Without --checkpoint it builds the tiny checkpoint into a temporary folder first. Results and the
full-model arithmetic are in docs/BENCHMARKS.md.
"""

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from inference.bench import bench
from inference.engine import Engine, Request, SamplingParams
from inference.quantize import QUANT_MODES

ROOT = Path(__file__).resolve().parents[1]

BATCHES = [1, 4, 8, 16, 32]


def best_of(serve: Callable[[], int], repeats: int = 3) -> tuple[int, float]:
    """(tokens made, fastest seconds) of `repeats` runs of serve()."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = serve()
        runs.append((tokens, time.perf_counter() - start))
    return min(runs, key=lambda run: run[1])


def batching_speedup(checkpoint: Path, n: int, max_batch: int, prompt_len: int) -> None:
    """Print tokens/s for n greedy requests of mixed lengths: one after another, then through max_batch slots.

    Greedy tokens are the same either way, so both make the same tokens.
    """
    engine = Engine(checkpoint, quant="none", max_batch=max_batch, context_len=256)
    generator = torch.Generator().manual_seed(0)
    requests = [
        Request(
            f"r{i}",
            torch.randint(4, engine.config.vocab_size, (prompt_len,), generator=generator).tolist(),
            SamplingParams(temperature=0, max_new_tokens=16 + 16 * (i % 4)),  # 16..64: requests leave at different steps
        )
        for i in range(n)
    ]

    def one_by_one() -> int:
        return sum(list(engine.generate(r.prompt_ids, r.params))[-1].completion_tokens for r in requests)

    def together() -> int:
        for r in requests:
            engine.add(r)
        made = 0
        while engine.has_work():
            made += sum(d.completion_tokens for d in engine.step() if d.finish_reason)
        return made

    list(engine.generate(requests[0].prompt_ids, SamplingParams(max_new_tokens=4)))  # warm-up
    print(f"\n{n} requests ({prompt_len}-token prompts, 16-64 new tokens), {max_batch} slots, best of 3:")
    seconds = {}
    for name, serve in (("one after another", one_by_one), ("continuous batching", together)):
        tokens, seconds[name] = best_of(serve)
        print(f"  {name + ':':<21} {tokens} tokens in {seconds[name]:6.2f}s = {tokens / seconds[name]:7.1f} tokens/s")
    print(f"  speed-up: {seconds['one after another'] / seconds['continuous batching']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="tiny checkpoint folder (default: build one in a temp dir)")
    parser.add_argument("--quant", nargs="+", choices=QUANT_MODES, default=list(QUANT_MODES))
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = Path(folder) / "tiny"
            subprocess.run([sys.executable, "-m", "inference", "make-tiny", str(checkpoint)], cwd=ROOT, check=True)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
        print(f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens per request\n")
        bench(checkpoint, args.quant, BATCHES, args.prompt_len, args.new_tokens)
        batching_speedup(checkpoint, n=16, max_batch=8, prompt_len=32)


if __name__ == "__main__":
    main()
