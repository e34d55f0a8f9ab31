"""`python -m inference SUBCOMMAND`: the whole command line, over the library's functions.

    convert SRC DST       released ckpt-0/ folder -> safetensors shards (inference/convert.py)
    make-tiny DST         the small seeded demo checkpoint (inference/tiny.py)
    export-gguf SRC DST   a checkpoint as one GGUF file for llama.cpp (inference/gguf_export.py)
    plan                  placement, bytes per device and a tokens/s estimate (inference/placement.py)
    generate --prompt P   stream a reply (inference/engine.py)
    bench                 prefill and decode tokens/s (inference/bench.py)
    logits                float32 logits of a tokens .npz, to compare with the reference

`generate`, `bench` and `logits` take the worker's placement flags (`--max-gpu-memory`,
`--max-cpu-memory`, `--offload-dir`, `--offload`, the `Costs` bandwidths), `plan` all but `--offload`:
it prints both modes.
"""

import argparse
import sys
import time

import numpy as np
import torch
from torch import Tensor

from inference.bench import bench, weight_bytes_per_step
from inference.checkpoint import load_model
from inference.convert import DEFAULT_SHARD_BYTES, convert
from inference.engine import Engine, Request, SamplingParams
from inference.gguf_export import DEFAULT_OUT_TYPE, OUT_TYPES, export_gguf
from inference.model import DTYPES, Grok, GrokConfig
from inference.experts import Costs
from inference.placement import DEFAULT_OFFLOAD, OFFLOAD_MODES, format_plan, kv_cache_bytes, make_plan
from inference.quantize import DEFAULT_QUANT, QUANT_MODES
from inference.tiny import make_tiny


def logits(model: Grok, tokens: Tensor) -> Tensor:
    """Logits [B, T, V] float32 of right-padded token rows [B, T], each row in its own cache slot."""
    b, t = tokens.shape
    model.setup_cache(b, t)
    input_pos = torch.arange(t, device=tokens.device).expand(b, t)  # padding continues the count, as forward asks
    with torch.inference_mode():
        return model(tokens, input_pos, torch.arange(b, device=tokens.device))


def run_convert(args: argparse.Namespace) -> None:
    convert(args.src, args.dst, shard_bytes=int(args.shard_gib * 2**30), tokenizer=args.tokenizer)


def run_make_tiny(args: argparse.Namespace) -> None:
    make_tiny(args.dst, args.seed)


def run_export_gguf(args: argparse.Namespace) -> None:
    export_gguf(args.src, args.dst, out_type=args.type, tokenizer=args.tokenizer)


def run_plan(args: argparse.Namespace) -> None:
    config = GrokConfig.from_checkpoint(args.checkpoint) if args.checkpoint else GrokConfig()
    num_gpus = args.num_gpus
    if num_gpus is None and args.max_gpu_memory is not None:
        num_gpus = torch.cuda.device_count() or 1
    name = args.checkpoint or "Grok-1 (full preset)"
    for offload in OFFLOAD_MODES:  # both, side by side
        try:
            plan = make_plan(
                config,
                args.quant,
                DTYPES[args.dtype],
                offload=offload,
                max_gpu_memory=args.max_gpu_memory,
                max_cpu_memory=args.max_cpu_memory,
                num_gpus=num_gpus,
                max_batch=args.max_batch,
                prefix_cache=args.prefix_cache,
                context_len=args.context_len,
                costs=_costs(args),
            )
        except ValueError as err:  # e.g. --offload experts on several GPUs
            print(f"--offload {offload}: not planned: {err}\n")
            continue
        print(format_plan(plan, f"{name}: {config.num_layers} layers, quant {args.quant}, activations {args.dtype}"))
        if any(device == "disk" for device, _, _ in plan.rows) and not args.offload_dir:
            print("this placement offloads layers to disk: loading it needs --offload-dir")
        print()


def run_generate(args: argparse.Namespace) -> None:
    """Stream the reply to stdout; the demo warning and the timings go to stderr."""
    engine = Engine(
        args.checkpoint, quant=args.quant, device=args.device, dtype=DTYPES.get(args.dtype), max_batch=1,
        compile=args.compile, **_placement(args),
    )
    print(f"[{engine.model.placement}]", file=sys.stderr)
    if engine.is_demo:
        print(f"[{engine.model_name} is the demo model: random weights, its text is noise]", file=sys.stderr)
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed, max_new_tokens=args.max_new_tokens
    )
    prompt = engine.tokenizer.encode(args.prompt)
    engine.add(Request("cli", prompt, params))
    start = time.perf_counter()
    first_token_at = None
    while engine.has_work():
        for delta in engine.step():
            print(delta.text, end="", flush=True)
        running = engine.slots[0]
        if first_token_at is None and (running is None or running.completion_tokens):  # the prefill is over
            first_token_at = time.perf_counter()
    end = time.perf_counter()
    decoded = delta.completion_tokens - 1  # the first token came with the prefill
    rate = decoded / (end - first_token_at) if decoded else 0.0
    print(
        f"\n[{len(prompt)} prompt tokens in {first_token_at - start:.2f}s; {delta.completion_tokens} tokens,"
        f" {delta.finish_reason}; decode {rate:.1f} tokens/s,"
        f" {rate * weight_bytes_per_step(engine.model, 1) / 1e9:.2f} GB/s of weights]",
        file=sys.stderr,
    )


def run_bench(args: argparse.Namespace) -> None:
    bench(
        args.checkpoint, args.quant, args.batch, args.prompt_len, args.new_tokens, args.device, DTYPES.get(args.dtype),
        placement=_placement(args),
    )


def run_logits(args: argparse.Namespace) -> None:
    tokens = torch.from_numpy(np.load(args.tokens)["tokens"].astype(np.int64))
    dtype = DTYPES[args.dtype]
    kv_bytes = kv_cache_bytes(GrokConfig.from_checkpoint(args.checkpoint), *tokens.shape, dtype)
    model = load_model(args.checkpoint, quant=args.quant, dtype=dtype, device=args.device, kv_bytes=kv_bytes, **_placement(args))
    print(model.placement, file=sys.stderr)
    np.save(args.out, logits(model, tokens.to(args.device)).cpu().numpy())


def _placement_arguments(parser: argparse.ArgumentParser, *, offload: bool = True) -> None:
    """The placement flags every command that loads or plans a model takes (the worker's GROK_* settings)."""
    parser.add_argument("--max-gpu-memory", help="GPU budget, e.g. 76GiB (default: no GPU budget, all on --device)")
    parser.add_argument("--max-cpu-memory", help="CPU RAM budget, e.g. 200GiB (default: RAM available now)")
    parser.add_argument("--offload-dir", help="--offload layers: folder for layers that fit neither budget")
    if offload:
        parser.add_argument(
            "--offload", choices=OFFLOAD_MODES, default=DEFAULT_OFFLOAD,
            help="experts: each expert placed on its own and computed where it lies (default);"
            " layers: accelerate's whole-layer offload",
        )
    parser.add_argument("--cpu-threads", type=int, help="torch threads for the CPU's share (default: torch's)")
    defaults = Costs()
    for flag, field, unit, scale in COST_FLAGS:
        parser.add_argument(
            flag, type=float, default=getattr(defaults, field) / scale,
            help=f"{unit}, for the copy decision and the estimate (default {getattr(defaults, field) / scale:g})",
        )


# flag, Costs field, unit, scale
COST_FLAGS = (
    ("--hbm-gbs", "hbm", "GPU memory GB/s", 1e9),
    ("--pcie-gbs", "pcie", "host -> GPU GB/s", 1e9),
    ("--cpu-gbs", "cpu", "CPU RAM GB/s", 1e9),
    ("--disk-gbs", "disk", "disk GB/s", 1e9),
    ("--cpu-tflops", "cpu_flops", "CPU int8 TFLOP/s", 1e12),
)


def _costs(args: argparse.Namespace) -> Costs:
    return Costs(**{field: getattr(args, flag[2:].replace("-", "_")) * scale for flag, field, _, scale in COST_FLAGS})


def _placement(args: argparse.Namespace) -> dict:
    """The load_model / Engine keywords of the placement flags; sets the CPU threads."""
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    return dict(
        max_gpu_memory=args.max_gpu_memory, max_cpu_memory=args.max_cpu_memory, offload_dir=args.offload_dir,
        offload=args.offload, costs=_costs(args),
    )


def _engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags `generate` and `bench` share: which checkpoint, on what, in what dtype."""
    parser.add_argument("--checkpoint", default="var/tiny", help="checkpoint folder (default: var/tiny)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="activations (default: bfloat16; float32 on cpu for a model as small as the tiny demo)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference")
    commands = parser.add_subparsers(dest="command", required=True)

    sub = commands.add_parser("convert", help="released ckpt-0/ folder -> safetensors shards")
    sub.add_argument("src", help="released checkpoint folder (holding ckpt-0/)")
    sub.add_argument("dst", help="output folder")
    sub.add_argument("--tokenizer", help="tokenizer.model to copy (default: SRC/tokenizer.model if present)")
    sub.add_argument("--shard-gib", type=float, default=DEFAULT_SHARD_BYTES / 2**30, help="shard size in GiB")
    sub.set_defaults(run=run_convert)

    sub = commands.add_parser("make-tiny", help="build the small seeded demo checkpoint")
    sub.add_argument("dst", help="output folder")
    sub.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    sub.set_defaults(run=run_make_tiny)

    sub = commands.add_parser("export-gguf", help="a checkpoint as one GGUF file of llama.cpp's grok architecture")
    sub.add_argument("src", help="released or converted checkpoint folder")
    sub.add_argument("dst", help="output .gguf file")
    sub.add_argument("--type", choices=OUT_TYPES, default=DEFAULT_OUT_TYPE, help=f"weight type (default {DEFAULT_OUT_TYPE})")
    sub.add_argument("--tokenizer", help="tokenizer.model (default: SRC/tokenizer.model)")
    sub.set_defaults(run=run_export_gguf)

    sub = commands.add_parser("plan", help="print placement, bytes per device and tokens/s estimate")
    sub.add_argument("--checkpoint", help="checkpoint folder whose config.json to plan (default: the full Grok-1 preset)")
    sub.add_argument("--quant", choices=QUANT_MODES, default=DEFAULT_QUANT)
    sub.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="activation dtype")
    _placement_arguments(sub, offload=False)
    sub.add_argument("--num-gpus", type=int, help="GPUs to plan for (default: those present, or 1 without CUDA)")
    sub.add_argument("--max-batch", type=int, default=8, help="replies decoded at once: KV cache slots (default 8)")
    sub.add_argument(
        "--prefix-cache", type=int, default=8, help="more KV cache rows kept for prefix reuse, as GROK_PREFIX_CACHE (default 8)"
    )
    sub.add_argument("--context-len", type=int, help="tokens per slot (default: the model's context length)")
    sub.set_defaults(run=run_plan)

    sub = commands.add_parser("generate", help="stream a reply to --prompt")
    _engine_arguments(sub)
    sub.add_argument("--prompt", required=True)
    sub.add_argument("--quant", choices=QUANT_MODES, default=DEFAULT_QUANT)
    sub.add_argument("--max-new-tokens", type=int, default=128)
    sub.add_argument("--temperature", type=float, default=0.8)
    sub.add_argument("--top-p", type=float, default=0.95)
    sub.add_argument("--top-k", type=int, default=0)
    sub.add_argument("--seed", type=int)
    _placement_arguments(sub)
    sub.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    sub.set_defaults(run=run_generate)

    sub = commands.add_parser("bench", help="measure prefill and decode tokens/s")
    _engine_arguments(sub)
    sub.add_argument("--quant", nargs="+", choices=QUANT_MODES, default=list(QUANT_MODES))
    sub.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    sub.add_argument("--prompt-len", type=int, default=128)
    sub.add_argument("--new-tokens", type=int, default=32)
    _placement_arguments(sub)
    sub.set_defaults(run=run_bench)

    sub = commands.add_parser("logits", help="write float32 logits for a tokens .npz")
    sub.add_argument("--checkpoint", required=True, help="released or converted checkpoint folder")
    sub.add_argument("--tokens", required=True, help=".npz with an int array `tokens` [B, T], 0 = right padding")
    sub.add_argument("--out", required=True, help="output .npy, float32 [B, T, V]")
    sub.add_argument("--dtype", choices=DTYPES, default="float32", help="activation dtype")
    sub.add_argument("--quant", choices=QUANT_MODES, default="none", help="none = dequantised float weights, like the reference")
    sub.add_argument("--device", default="cpu")
    _placement_arguments(sub)
    sub.set_defaults(run=run_logits)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)
