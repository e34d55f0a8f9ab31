"""int8 decode on CPU at Grok-1's width, side by side in one run: the kernels Int8Linear picks
(inference/quantize.py) against casting the weight, in float32 and in bfloat16.

The tiny demo model is far too small for this (its projections fit the caches), so this builds a
seeded random checkpoint with Grok-1's layer shapes (emb 6144, 48 query and 8 key/value heads
of 128) but one layer and two experts of 8192 (~0.4 G parameters, ~0.4 GB int8) into a temporary
folder, and measures decode tokens/s with `measure` (inference/bench.py).

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.wide_int8 [--batch 1 8]
"""

from __future__ import annotations

import argparse
import math
import tempfile

import torch

from inference import quantize
from inference.bench import measure, weight_bytes_per_step
from inference.engine import Engine
from inference.model import GrokConfig
from inference.tiny import make_random


def wide_config() -> GrokConfig:
    emb, key_size = 6144, 128
    return GrokConfig(
        vocab_size=2048, context_len=256, emb_size=emb, widening_factor=8.0, key_size=key_size,
        num_q_heads=48, num_kv_heads=8, num_layers=1, num_experts=2, num_selected_experts=2,
        ffn_size=8192, embedding_multiplier_scale=math.sqrt(emb), attn_output_multiplier=1 / math.sqrt(key_size),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="grokweb-wide-") as folder:
        make_random(folder, wide_config(), seed=0, model_name="grok-1-wide-random")
        print(f"1 layer at Grok-1's width, 2 experts of 8192; {torch.get_num_threads()} thread(s)")
        print("| activations | batch | cast weight: decode tok/s | int8 kernel: decode tok/s | speed-up | GB/s of weights, kernel |")
        print("|---|---:|---:|---:|---:|---:|")
        for dtype in (torch.float32, torch.bfloat16):
            engine = Engine(folder, quant="int8", device="cpu", dtype=dtype, max_batch=max(args.batch), context_len=64)
            for batch in args.batch:
                rates = {}
                for way, path in (("cast", "cast"), ("kernel", None)):
                    for module in engine.model.modules():
                        if isinstance(module, quantize.Int8Linear):
                            module.path = path
                    measure(engine, 1, 4, 2)  # warm-up
                    rates[way] = max(measure(engine, batch, 16, args.new_tokens)[1] for _ in range(2))
                gbs = rates["kernel"] / batch * weight_bytes_per_step(engine.model, batch) / 1e9
                print(f"| {str(dtype).removeprefix('torch.')} | {batch} | {rates['cast']:.1f} | {rates['kernel']:.1f} | "
                      f"{rates['kernel'] / rates['cast']:.2f}x | {gbs:.2f} |", flush=True)


if __name__ == "__main__":
    main()
