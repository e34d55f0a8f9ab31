"""The placement check for a GPU host, in one command: no Django, no downloads, a few minutes.

It writes a seeded random int8 checkpoint with Grok-1's full width (emb 6144, 48 query and 8
key/value heads of 128, 8 experts of 32768, top 2) and a few layers (default 4: ~20 GB) to
local disk, then prints one table:

- all on the GPU, int8: decode tokens/s at batch 1 and 8, against the HBM bandwidth bound
  (the weight bytes a step reads, inference/bench.py `weight_bytes_per_step`, over --hbm-gbs);
- the hybrid (`--offload experts`) with half the experts in CPU RAM, against `--offload layers`
  under the same GPU budget (about half the layers off the GPU);
- the logits of every placement against all-on-GPU (relative error, argmax agreement);
- golden-tiny (../shared/grok1, or shared/grok1 in the tree) on the GPU in bfloat16 against
  xAI's reference logits, skipped with a message when the files are not there;
- nf4 all on the GPU, skipped when bitsandbytes is missing.

    .venv/bin/python -m bench.gpu_check [--dir /local/nvme/folder] [--layers 4] [--hbm-gbs 4800]

`--device cpu` runs the same code on a CPU (the main device is then the CPU: the hybrid keeps
half the experts in RAM and memory-maps the rest, `--offload layers` offloads to disk), which is
how tests/inference/test_gpu_check.py checks it with a tiny width.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from inference import placement
from inference.bench import weight_bytes_per_step
from inference.checkpoint import load_model
from inference.experts import Costs
from inference.model import GrokConfig
from inference.quantize import meta_model
from inference.tiny import make_random_int8

ROOT = Path(__file__).parents[1]
GOLDEN_DIRS = (ROOT.parent / "shared" / "grok1" / "golden-tiny", ROOT / "shared" / "grok1" / "golden-tiny")
PROMPT_LEN = 16
MAX_BATCH = 8
GOLDEN_TOLERANCE = 3e-2  # bfloat16 against the reference's bfloat16 logits (tests/inference/test_model_golden.py)


def check_config(args: argparse.Namespace) -> GrokConfig:
    key_size = 128
    return GrokConfig(
        vocab_size=args.vocab_size, context_len=PROMPT_LEN + args.steps + 4, emb_size=args.emb_size, key_size=key_size,
        num_q_heads=max(1, args.emb_size // key_size), num_kv_heads=max(1, args.emb_size // (6 * key_size)),
        num_layers=args.layers, ffn_size=args.ffn_size,
        embedding_multiplier_scale=math.sqrt(args.emb_size), attn_output_multiplier=1 / math.sqrt(key_size),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_rate(model, batch: int, steps: int, device: torch.device) -> float:
    """Decode tokens/s of the whole batch after a prompt of PROMPT_LEN, greedy, two warm-up steps first."""
    vocab = model.config.vocab_size
    tokens = torch.randint(4, vocab, (batch, PROMPT_LEN), generator=torch.Generator().manual_seed(batch)).to(device)
    slots = torch.arange(batch, device=device)
    with torch.inference_mode():
        logits = model(tokens, torch.arange(PROMPT_LEN, device=device).expand(batch, -1), slots)
        token = logits[:, -1:].argmax(-1)  # [B, 1]
        for step in range(steps + 2):
            if step == 2:
                sync(device)
                start = time.perf_counter()
            position = torch.full((batch, 1), PROMPT_LEN + step, device=device)
            token = model(token, position, slots)[:, -1:].argmax(-1)
        sync(device)
    return batch * steps / (time.perf_counter() - start)


def prefill_logits(model, device: torch.device) -> torch.Tensor:
    """Float32 logits [2, PROMPT_LEN, V] of two fixed prompts, on the CPU."""
    tokens = torch.randint(4, model.config.vocab_size, (2, PROMPT_LEN), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        return model(tokens, torch.arange(PROMPT_LEN, device=device).expand(2, -1), torch.arange(2, device=device)).cpu()


def compare(ours: torch.Tensor, reference: torch.Tensor) -> str:
    error = float((ours - reference).norm() / reference.norm())
    agree = float((ours.argmax(-1) == reference.argmax(-1)).float().mean())
    return f"rel. error {error:.1e}, argmax agrees {agree:.0%}"


def budgets(device: torch.device, resident_bytes: int, offload_dir: Path) -> dict:
    """Budgets that hold `resident_bytes` of weights plus the KV cache on the main device: on a GPU
    the rest in CPU RAM, on a CPU the rest memory-mapped (experts) or on disk (layers)."""
    if device.type == "cuda":
        return dict(max_gpu_memory=resident_bytes, max_cpu_memory=None, offload_dir=offload_dir)
    return dict(max_cpu_memory=resident_bytes, offload_dir=offload_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--dir", help="folder on local disk for the checkpoint (default: a temporary folder)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (default 4, ~20 GB at full width)")
    parser.add_argument("--emb-size", type=int, default=6144)
    parser.add_argument("--ffn-size", type=int, default=32768)
    parser.add_argument("--vocab-size", type=int, default=8192, help="(Grok-1: 131072; the experts are the point here)")
    parser.add_argument("--steps", type=int, default=16, help="decode steps timed per figure")
    parser.add_argument("--hbm-gbs", type=float, default=4800, help="GPU memory bandwidth for the bound (default: H200's)")
    args = parser.parse_args(argv)
    for name in ("layers", "emb_size", "ffn_size", "vocab_size", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.emb_size % 768:
        parser.error("--emb-size must be a multiple of 768 (6 query heads of 128 per key/value head)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: pass --device cpu to check the CPU-only parts")
    with tempfile.TemporaryDirectory(prefix="grokweb-gpu-check-", dir=args.dir) as folder:
        run(args, device, Path(folder))


def run(args: argparse.Namespace, device: torch.device, folder: Path) -> None:
    config = check_config(args)
    dtype = torch.bfloat16
    checkpoint, offload_dir = folder / "checkpoint", folder / "offload"
    start = time.perf_counter()
    make_random_int8(checkpoint, config, seed=0, model_name="gpu-check-random", device=str(device))
    meta = meta_model(config, "int8", dtype)
    shared, (expert, _) = placement.shared_bytes(meta), placement.expert_sizes(meta, config)
    experts = config.num_layers * config.num_experts
    kv = placement.kv_cache_bytes(config, MAX_BATCH, config.context_len, dtype)
    print(f"{config.num_layers} layers at emb {config.emb_size}, {config.num_experts} experts of {config.ffn_size}:"
          f" {(shared + experts * expert) / 1e9:.1f} GB int8, written in {time.perf_counter() - start:.0f}s;"
          f" {device}, {torch.get_num_threads()} CPU threads")
    rows = []  # (what, placement, batch, result, against)
    resident = "all on GPU" if device.type == "cuda" else f"all on {device}"

    def measure(name: str, model, reference: torch.Tensor | None) -> torch.Tensor:
        model.setup_cache(MAX_BATCH, config.context_len)
        for batch in (1, MAX_BATCH):
            rate = decode_rate(model, batch, args.steps, device)
            bound = batch * args.hbm_gbs * 1e9 / weight_bytes_per_step(model, batch)
            against = f"HBM bound {bound:.1f} tok/s ({rate / bound:.0%})" if name == resident and device.type == "cuda" else ""
            rows.append(("decode", name, str(batch), f"{rate:.2f} tok/s", against))
        logits = prefill_logits(model, device)
        if reference is not None:
            rows.append(("logits", name, "2", compare(logits, reference), resident))
        return logits

    reference = measure(resident, load_model(checkpoint, quant="int8", dtype=dtype, device=device), None)
    _release(device)
    half = shared + kv + experts // 2 * expert
    for offload in ("experts", "layers"):
        model = load_model(checkpoint, quant="int8", dtype=dtype, kv_bytes=kv, offload=offload, costs=Costs(hbm=args.hbm_gbs * 1e9),
                           **budgets(device, half, offload_dir))
        measure(f"--offload {offload}: {model.placement.split(': ', 1)[1]}", model, reference)
        del model
        _release(device)
    rows.append(nf4_row(checkpoint, device, dtype, args.steps))
    rows.append(golden_row(device))
    print("| check | placement | batch | result | against |")
    print("|---|---|---:|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"total {time.perf_counter() - start:.0f}s")


def nf4_row(checkpoint: Path, device: torch.device, dtype: torch.dtype, steps: int) -> tuple[str, ...]:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return ("decode", "nf4, all on GPU", "1", "skipped: bitsandbytes is not installed", "")
    if device.type != "cuda":
        return ("decode", "nf4, all on GPU", "1", "skipped: nf4 needs a GPU", "")
    model = load_model(checkpoint, quant="nf4", dtype=dtype, device=device)
    model.setup_cache(1, PROMPT_LEN + steps + 4)
    row = ("decode", "nf4, all on GPU", "1", f"{decode_rate(model, 1, steps, device):.2f} tok/s", "")
    del model
    _release(device)
    return row


def golden_row(device: torch.device) -> tuple[str, ...]:
    folder = next((d for d in GOLDEN_DIRS if (d / "golden.npz").is_file()), None)
    if folder is None:
        return ("golden-tiny", "bfloat16", "2", f"skipped: golden.npz is in none of {', '.join(map(str, GOLDEN_DIRS))}", "")
    with np.load(folder / "golden.npz") as data:
        tokens, ref = data["tokens"].astype(np.int64), data["logits_bf16"]
    model = load_model(folder, quant="none", dtype=torch.bfloat16, device=device)
    b, t = tokens.shape
    model.setup_cache(b, t)
    with torch.inference_mode():
        ours = model(torch.from_numpy(tokens).to(device), torch.arange(t, device=device).expand(b, t), torch.arange(b, device=device))
    ours = ours.cpu().numpy()
    errors = [
        float(np.linalg.norm(ours[i][row != 0] - ref[i][row != 0]) / np.linalg.norm(ref[i][row != 0]))
        for i, row in enumerate(tokens)
    ]
    verdict = "pass" if max(errors) < GOLDEN_TOLERANCE else "FAIL"
    return ("golden-tiny", f"bfloat16 on {device}", str(b), f"{verdict}: rel. error per row {', '.join(f'{e:.1e}' for e in errors)}",
            f"xAI's reference, tolerance {GOLDEN_TOLERANCE}")


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
