"""grokweb against llama.cpp on this CPU, same weights, at Grok-1's width: decode at batch 1,
prefill of 128 tokens, batched decode at 4, 8 and 16, interleaved runs (ours, llama.cpp, ours, ...).

The weights: a seeded random converted checkpoint with Grok-1's layer shapes (emb 6144, 48 query
and 8 key/value heads of 128, 8 experts, top 2) but few layers and narrower experts (default: 2
layers of 8 experts of 8192, 2.6 GB int8: far more than the L3 cache, so decode reads memory),
and the same weights as a GGUF of llama.cpp's `grok` architecture whose Q8_0 blocks carry our
int8 values and our scales unchanged (a Q8_0 block is 32 int8 values and one fp16 scale; every
32 inputs of a row share one of our scales). Both are cached under var/llama_peer/.

llama.cpp (tests/llama_cpp.py builds it once under var/) runs its own llama-bench (prefill,
decode at batch 1) and llama-batched-bench (batched decode), one thread, weight repacking off:
its default AMX repacking crashes on this CPU with SIGILL on multi-token batches. Ours runs the
engine (inference/bench.py `measure`) in bfloat16 with int8 weights, one thread. Each figure is
the median of the rounds; the bound is the best of its measurements (noise only slows a read down). Decode's weight
bandwidth (bytes one step reads x steps/s) is set against a measured bound: one thread summing a
4 GiB float32 tensor.

    flock /tmp/bench.lock .venv/bin/python -m bench.llama_peer [--layers 2] [--experts 8] [--ffn 8192] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import time
from pathlib import Path

import gguf
import numpy as np
import torch
from sentencepiece import SentencePieceProcessor

from inference.bench import measure, weight_bytes_per_step
from inference.checkpoint import checkpoint_tensors
from inference.engine import Engine
from inference.gguf_export import EXPERT_NAMES, NAMES, _add_hyperparameters, _add_vocabulary
from inference.model import GrokConfig
from inference.tiny import make_random
from tests import llama_cpp

WORK = Path(__file__).resolve().parents[1] / "var" / "llama_peer"
PREFILL = 128  # tokens
DECODE = 16  # new tokens a decode run makes
BATCHES = (4, 8, 16)
CONTEXT = 1024  # llama-batched-bench keeps every sequence of the batch in one context
Q8_0 = gguf.GGMLQuantizationType.Q8_0


def wide_config(layers: int, experts: int, ffn: int) -> GrokConfig:
    emb, key_size = 6144, 128
    return GrokConfig(
        vocab_size=2048, context_len=CONTEXT, emb_size=emb, key_size=key_size, num_q_heads=48, num_kv_heads=8,
        num_layers=layers, num_experts=experts, num_selected_experts=2, ffn_size=ffn,
        embedding_multiplier_scale=math.sqrt(emb), attn_output_multiplier=1 / math.sqrt(key_size),
    )


def memory_bound(data: torch.Tensor) -> float:
    """GB/s of one thread summing `data` (4 GiB of float32: far past the caches)."""
    start = time.perf_counter()
    data.sum()
    return data.nbytes / (time.perf_counter() - start) / 1e9


def q8_0_blocks(weight: torch.Tensor, scales: torch.Tensor) -> np.ndarray:
    """Released int8 [..., out, in] and bf16 scales [..., G, out] -> Q8_0 bytes [..., out, in / 32 * 34].

    Each block is our scale as fp16 (checked to be exact) and our 32 int8 values, so llama.cpp
    multiplies by exactly the weights we do."""
    *lead, out_features, in_features = weight.shape
    groups = scales.shape[-2]
    blocks = in_features // 32
    if in_features % 32 or (in_features // groups) % 32:
        raise ValueError(f"Q8_0 needs 32-wide blocks inside each scale group: {tuple(weight.shape)}, {groups} groups")
    half = scales.float().to(torch.float16)
    if not torch.equal(half.float(), scales.float()):
        raise ValueError("a scale does not survive fp16: these weights cannot be carried as Q8_0")
    block_scales = half.transpose(-1, -2).repeat_interleave(blocks // groups, dim=-1)  # [..., out, blocks]
    data = np.empty((*lead, out_features, blocks, 34), dtype=np.uint8)
    data[..., :2] = block_scales.contiguous().numpy().view(np.uint8).reshape(*lead, out_features, blocks, 2)
    data[..., 2:] = weight.contiguous().numpy().view(np.uint8).reshape(*lead, out_features, blocks, 32)
    return data.reshape(*lead, out_features, blocks * 34)


def write_gguf(src: Path, dst: Path, config: GrokConfig) -> None:
    """Our checkpoint `src` as a grok GGUF: projections as exact Q8_0, the embedding in bfloat16
    (as we hold it), norms and router in float32. Names, hyperparameters and vocabulary as
    inference/gguf_export.py writes them."""
    writer = gguf.GGUFWriter(str(dst), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GROK], use_temp_file=True)
    _add_hyperparameters(writer, config, "grok-1-wide-random", gguf.LlamaFileType.MOSTLY_Q8_0)
    _add_vocabulary(writer, SentencePieceProcessor(model_file=str(src / "tokenizer.model")), config)
    tensors = {key: tensor for key, tensor, _ in checkpoint_tensors(src)}
    for key in sorted(k for k in tensors if k.endswith(".weight") and k.removesuffix(".weight") + ".scales" in tensors):
        module = key.removesuffix(".weight")
        parts = module.split(".")
        if parts[2:4] == ["moe", "experts"]:  # layers.{i}.moe.experts.{x}.{projection}: stacked at expert 0
            if parts[4] != "0":
                continue
            stack = [f"layers.{parts[1]}.moe.experts.{x}.{parts[5]}" for x in range(config.num_experts)]
            weight = torch.stack([tensors[f"{m}.weight"] for m in stack])  # [X, out, in]
            scales = torch.stack([tensors[f"{m}.scales"] for m in stack])  # [X, G, out]
            name = f"blk.{parts[1]}.{EXPERT_NAMES[parts[5]]}.weight"
        else:
            weight, scales = tensors[key], tensors[f"{module}.scales"]
            name = NAMES[re.sub(r"^layers\.\d+\.", "layers.{i}.", module)].format(i=parts[1])
        writer.add_tensor(name, q8_0_blocks(weight, scales), raw_dtype=Q8_0)
    for key, tensor in tensors.items():
        if key == "embed.weight":
            raw = tensor.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8)  # [V, 2E] bytes
            writer.add_tensor("token_embd.weight", raw, raw_dtype=gguf.GGMLQuantizationType.BF16)
        elif not key.endswith((".weight", ".scales")):  # norms, the router
            name = NAMES[re.sub(r"^layers\.\d+\.", "layers.{i}.", key)].format(i=key.split(".")[1])
            writer.add_tensor(name, tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def prepare(config: GrokConfig) -> tuple[Path, Path]:
    """The cached checkpoint folder and GGUF file of `config`, made unless there."""
    name = f"wide-{config.num_layers}x{config.num_experts}x{config.ffn_size}"
    folder, model = WORK / name, WORK / f"{name}.gguf"
    if not (folder / "config.json").exists():
        print(f"writing {folder} ...", flush=True)
        make_random(folder, config, seed=0, model_name="grok-1-wide-random")
    if not model.exists():
        print(f"writing {model} ...", flush=True)
        partial = model.with_suffix(".partial")
        write_gguf(folder, partial, config)
        partial.replace(model)
    return folder, model


def llama_bytes_per_token(model: Path, config: GrokConfig) -> float:
    """Bytes a llama.cpp decode step at batch 1 reads: every tensor, the experts' k/X share."""
    share = config.num_selected_experts / config.num_experts
    return sum(t.n_bytes * (share if "_exps" in t.name else 1) for t in gguf.GGUFReader(model).tensors)


def run_llama(model: Path) -> dict[str, float]:
    """llama.cpp's tokens/s: prefill, decode at batch 1, batched decode (`b4`, ...)."""
    common = ["-m", str(model), "-t", "1"]
    bench = subprocess.run(
        [str(llama_cpp.program("llama-bench")), *common, "-p", str(PREFILL), "-n", str(DECODE), "-r", "2",
         *llama_cpp.NO_REPACK, "-o", "json"],
        check=True, capture_output=True, text=True,
    )
    rates = {}
    for test in json.loads(bench.stdout):
        rates["prefill" if test["n_prompt"] else "decode"] = test["avg_ts"]
    batched = subprocess.run(
        [str(llama_cpp.program("llama-batched-bench")), *common, "-c", str(CONTEXT), "-npp", "16",
         "-ntg", str(DECODE), "-npl", ",".join(map(str, BATCHES)), "--no-repack", "--output-format", "jsonl"],
        check=True, capture_output=True, text=True,
    )
    for line in batched.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rates[f"b{row['pl']}"] = row["speed_tg"]
    return rates


def run_ours(engine: Engine) -> dict[str, float]:
    rates = {"prefill": measure(engine, 1, PREFILL, 2)[0], "decode": measure(engine, 1, 16, DECODE)[1]}
    for batch in BATCHES:
        rates[f"b{batch}"] = measure(engine, batch, 16, DECODE)[1]
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=8192, help="expert hidden size (Grok-1: 32768)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both engines")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = wide_config(args.layers, args.experts, args.ffn)
    folder, model = prepare(config)
    data = torch.ones(2**30, dtype=torch.float32)
    bound = 0.0
    engine = Engine(folder, quant="int8", device="cpu", dtype=torch.bfloat16, max_batch=max(BATCHES), context_len=256)
    measure(engine, 1, 8, 2)  # warm-up
    rounds: dict[str, dict[str, list[float]]] = {"ours": {}, "theirs": {}}
    for _ in range(args.rounds):
        bound = max(bound, memory_bound(data), memory_bound(data))  # every round too: the best is the bound
        for side, rates in (("ours", run_ours(engine)), ("theirs", run_llama(model))):
            for key, rate in rates.items():
                rounds[side].setdefault(key, []).append(rate)
    # Medians of the interleaved rounds: each side's figure, and the ratio of the two.
    ours = {key: statistics.median(rates) for key, rates in rounds["ours"].items()}
    theirs = {key: statistics.median(rates) for key, rates in rounds["theirs"].items()}
    our_bytes = weight_bytes_per_step(engine.model, 1)
    their_bytes = llama_bytes_per_token(model, config)
    print(f"\n{config.num_layers} layers at Grok-1's width (emb 6144, 48/8 heads of 128), {config.num_experts} experts "
          f"of {config.ffn_size}, top 2; one thread; torch {torch.__version__}; llama.cpp from llama-cpp-python "
          f"{llama_cpp.VERSION} with --repack 0 (its AMX repacking crashes on this CPU); medians of {args.rounds} "
          f"interleaved rounds; memory bound {bound:.1f} GB/s (one thread, 4 GiB float32 sum, best of the rounds)\n")
    print("| tok/s | grokweb (bf16, int8 weights) | llama.cpp (Q8_0, same values) | grokweb / llama.cpp |")
    print("|---|---:|---:|---:|")
    names = {"decode": "decode, batch 1", "prefill": f"prefill, {PREFILL} tokens"} | {f"b{b}": f"batched decode, {b}" for b in BATCHES}
    for key, label in names.items():
        extra_ours = extra_theirs = ""
        if key == "decode":
            ours_gbs, theirs_gbs = ours[key] * our_bytes / 1e9, theirs[key] * their_bytes / 1e9
            extra_ours = f" ({ours_gbs:.1f} GB/s, {ours_gbs / bound:.0%} of bound)"
            extra_theirs = f" ({theirs_gbs:.1f} GB/s, {theirs_gbs / bound:.0%})"
        print(f"| {label} | {ours[key]:.1f}{extra_ours} | {theirs[key]:.1f}{extra_theirs} | {ours[key] / theirs[key]:.2f} |")


if __name__ == "__main__":
    main()
