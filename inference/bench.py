"""Throughput of the engine: prefill and decode tokens/s, and the weight bandwidth they imply.

Decode is bound by reading the weights, so tokens/s times the bytes a step reads is the figure
to hold against the memory's bandwidth. Used by `python -m inference bench` and `generate`, and
by bench/engine_bench.py and bench/wide_int8.py.
"""

import sys
import time
from pathlib import Path

import torch

from inference.engine import Engine, Request, SamplingParams
from inference.model import Grok
from inference.placement import expert_share

BENCH_REPEATS = 3


def weight_bytes_per_step(model: Grok, batch: int) -> float:
    """Weight bytes one decode step reads: all but the experts, plus the experts the batch routes to.

    Each token picks k of X experts per layer; with uniform routing a batch of B touches a
    1 - (1 - k/X)^B share of them (k/X at batch 1). The tied embedding is read whole by the output.
    Parameters only: nf4's block scales (about 3% more) live outside them and are not counted.
    """
    share = expert_share(model.config, batch)
    total = 0.0
    for name, p in model.named_parameters():
        size = p.numel() * p.element_size()
        total += size * share if ".experts." in name else size
    return total


def measure(engine: Engine, batch: int, prompt_len: int, new_tokens: int) -> tuple[float, float]:
    """(prefill tokens/s, aggregate decode tokens/s) of `batch` random prompts run together (batch <= max_batch).

    Greedy, no stop strings; a request that samples EOS ends early and counts what it made.
    """
    generator = torch.Generator().manual_seed(batch)
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens)
    for i in range(batch):
        prompt = torch.randint(4, engine.config.vocab_size, (prompt_len,), generator=generator).tolist()
        engine.add(Request(f"bench-{i}", prompt, params))
    start = time.perf_counter()
    deltas = engine.step()
    while any(s is not None and s.completion_tokens == 0 for s in engine.slots):
        deltas += engine.step()
    prefilled = time.perf_counter()  # every request has its first token; step() ends in a device sync
    while engine.has_work():
        deltas += engine.step()
    end = time.perf_counter()
    completion = sum(d.completion_tokens for d in deltas if d.finish_reason)
    return batch * prompt_len / (prefilled - start), (completion - batch) / (end - prefilled)


def bench(
    checkpoint: str | Path,
    quants: list[str],
    batches: list[int],
    prompt_len: int,
    new_tokens: int,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    placement: dict | None = None,
) -> None:
    """Print prefill and decode tokens/s, and the weight bandwidth decode implies, per quant mode and batch size;
    `placement`: the Engine's placement keywords (budgets, offload).

    Each figure is the best of BENCH_REPEATS runs: on a shared machine noise only ever slows a run down.
    """
    print(f"{'quant':<6} {'batch':>5} {'prefill tok/s':>14} {'decode tok/s':>13} {'decode GB/s':>12}")
    for quant in quants:
        engine = Engine(
            checkpoint, quant=quant, device=device, dtype=dtype, max_batch=max(batches), context_len=prompt_len + new_tokens,
            **(placement or {}),
        )
        print(f"{quant}: {engine.model.placement}", file=sys.stderr)
        measure(engine, 1, 8, 2)  # warm-up
        for batch in batches:
            runs = [measure(engine, batch, prompt_len, new_tokens) for _ in range(BENCH_REPEATS)]
            prefill, decode = map(max, zip(*runs))
            gbs = decode / batch * weight_bytes_per_step(engine.model, batch) / 1e9
            print(f"{quant:<6} {batch:>5} {prefill:>14.0f} {decode:>13.1f} {gbs:>12.3f}", flush=True)
