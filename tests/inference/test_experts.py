"""Placement per expert (`offload="experts"`, inference/experts.py): on a CPU-only machine the main
device is the CPU, so the split between RAM and the memory-mapped checkpoint is made by
`max_cpu_memory`. The logits of every placement are the same; memory-mapped experts stay out of
the resident set; the bytes a decode step reads are the ones `plan` counts."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inference import cli, placement
from inference.checkpoint import INDEX_FILE, load_model
from inference.experts import Costs, bytes_read, copy_pays, reset_bytes_read
from inference.model import GrokConfig
from inference.quantize import meta_model
from inference.tiny import make_random_int8

ROOT = Path(__file__).parents[2]


def wide_config(emb: int = 2048, ffn: int = 8192) -> GrokConfig:
    """Wide enough for the CPU's int8 kernels; by default big enough (0.8 GB) to stand out of the
    process's own memory."""
    key_size = 128
    return GrokConfig(
        vocab_size=2048, context_len=64, emb_size=emb, key_size=key_size, num_q_heads=emb // 128, num_kv_heads=4,
        num_layers=2, ffn_size=ffn, embedding_multiplier_scale=math.sqrt(emb), attn_output_multiplier=1 / math.sqrt(key_size),
    )


@pytest.fixture(scope="session")
def wide_checkpoint(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("wide") / "grok-1-wide-random"
    make_random_int8(dst, wide_config(), seed=0, model_name="grok-1-wide-random")
    return dst


@pytest.fixture(scope="session")
def wide_small_checkpoint(tmp_path_factory) -> Path:
    """4M weights a projection, each past the int8 kernel's threshold (inference/quantize.py)."""
    dst = tmp_path_factory.mktemp("wide-small") / "grok-1-wide-random"
    make_random_int8(dst, wide_config(1024, 4096), seed=0, model_name="grok-1-wide-random")
    return dst


def split_budget(config: GrokConfig, quant: str, dtype: torch.dtype, resident_experts: int, kv_bytes: int = 0) -> int:
    """A CPU budget holding everything but the experts, the KV cache, and `resident_experts` experts."""
    model = meta_model(config, quant, dtype)
    return int(placement.shared_bytes(model) + kv_bytes + resident_experts * placement.expert_sizes(model, config)[0])


def run(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a prefill of `tokens` [B, T] and of one decode step after it."""
    b, t = tokens.shape
    model.setup_cache(b, t + 1)
    with torch.inference_mode():
        prefill = model(tokens, torch.arange(t).expand(b, t), torch.arange(b))
        decode = model(tokens[:, :1], torch.full((b, 1), t), torch.arange(b))
    return prefill, decode


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("which", ["golden-tiny", "wide"])
def test_every_placement_gives_the_same_logits(which, dtype, request, tmp_path):
    path = request.getfixturevalue("converted_golden" if which == "golden-tiny" else "wide_small_checkpoint")
    quant = "none" if which == "golden-tiny" else "int8"  # golden-tiny as the reference computes it
    config = GrokConfig.from_checkpoint(path)
    experts = config.num_layers * config.num_experts
    tokens = torch.randint(4, config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    reference = run(load_model(path, quant=quant, dtype=dtype), tokens)

    split = load_model(path, quant=quant, dtype=dtype, max_cpu_memory=split_budget(config, quant, dtype, experts // 2))
    assert split.placement.endswith(f"experts {experts // 2} cpu, {experts - experts // 2} mmap (of {experts})")
    layers = load_model(
        path, quant=quant, dtype=dtype, offload="layers", offload_dir=tmp_path,
        max_cpu_memory=split_budget(config, quant, dtype, config.num_experts // 2),
    )
    assert "disk: " in layers.placement  # whole layers read from the offload folder every forward
    for model in (split, layers):
        for ours, theirs in zip(run(model, tokens), reference):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert bytes_read(split)["mmap"] > 0  # the memory-mapped experts did compute


def test_golden_logits_with_experts_memory_mapped(converted_golden, golden):
    """Against xAI's reference itself, every expert read from the memory map."""
    config = GrokConfig.from_checkpoint(converted_golden)
    model = load_model(converted_golden, quant="none", dtype=torch.float32, max_cpu_memory=split_budget(config, "none", torch.float32, 0))
    assert "experts 16 mmap" in model.placement
    tokens = torch.from_numpy(golden["tokens"].astype(np.int64))
    ours = cli.logits(model, tokens).numpy()
    valid = golden["tokens"] != 0
    ref = golden["logits_f32"]
    assert np.linalg.norm(ours[valid] - ref[valid]) / np.linalg.norm(ref[valid]) < 5e-3
    assert (ours.argmax(-1) == ref.argmax(-1))[valid].all()


RSS_SCRIPT = """
import sys, psutil, torch
from inference.checkpoint import load_model
torch.set_num_threads(1)
model = load_model(sys.argv[1], quant="int8", dtype=torch.float32, max_cpu_memory=int(sys.argv[2]))
model.setup_cache(1, 32)
tokens = torch.arange(4, 12)[None]
peak = 0
with torch.inference_mode():
    model(tokens, torch.arange(8)[None], torch.tensor([0]))
    for i in range(8):
        model(tokens[:, :1], torch.tensor([[8 + i]]), torch.tensor([0]))
        peak = max(peak, psutil.Process().memory_info().rss)
print(model.placement)
print(peak)
"""


def test_memory_mapped_experts_stay_out_of_the_resident_set(wide_checkpoint):
    """Decoding with every expert memory-mapped, the process holds less than the model: the
    experts' pages are read from the page cache and given back after each use."""
    config = wide_config()
    model_bytes = json.loads((wide_checkpoint / INDEX_FILE).read_text())["metadata"]["total_size"]
    budget = split_budget(config, "int8", torch.float32, 0, placement.kv_cache_bytes(config, 1, 32, torch.float32))
    out = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(wide_checkpoint), str(budget)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert out[0].endswith("experts 16 mmap (of 16)")
    assert model_bytes > 800e6 and int(out[1]) < 0.7 * model_bytes, (int(out[1]), model_bytes)


def test_bytes_read_per_decode_step_match_the_plan(wide_checkpoint):
    config, dtype = wide_config(), torch.float32
    kv = placement.kv_cache_bytes(config, 1, 16, dtype)
    budget = split_budget(config, "int8", dtype, 5, kv)
    plan = placement.make_plan(config, "int8", dtype, max_cpu_memory=budget, max_batch=1, context_len=16)
    on_disk = placement.expert_sizes(meta_model(config, "int8", dtype), config)[1]
    assert plan.rows[0][0] == "cpu" and plan.rows[0][1][1] == "experts: 5 of 16"
    assert plan.rows[1:] == [("mmap", ["experts: 11 of 16"], 11 * on_disk)]

    model = load_model(wide_checkpoint, quant="int8", dtype=dtype, max_cpu_memory=budget, kv_bytes=kv)
    assert model.placement.endswith("experts 5 cpu, 11 mmap (of 16)")  # where the plan put them
    model.setup_cache(1, 16)
    shared = placement.shared_bytes(meta_model(config, "int8", dtype))
    with torch.inference_mode():
        model(torch.arange(4, 12)[None], torch.arange(8)[None], torch.tensor([0]))
        for i in range(4):
            reset_bytes_read(model)
            model(torch.tensor([[5 + i]]), torch.tensor([[8 + i]]), torch.tensor([0]))
            counted = bytes_read(model)
            # int8: an expert takes as many bytes in RAM as in the file, so batch 1 always reads
            # the plan's total (2 experts a layer), however the router splits it between RAM and file
            assert shared + counted["cpu"] + counted["mmap"] == sum(plan.step_bytes[1].values())
            assert counted["mmap"] % on_disk == 0


def test_copying_an_expert_to_the_gpu_pays_only_for_many_tokens():
    costs = Costs()
    grok_expert = 3 * 6144 * 32768  # weights; int8 bytes as many, plus scales
    assert not copy_pays(1, grok_expert, grok_expert, costs)  # decode: 6 ms on the CPU against 24 ms over PCIe
    assert not copy_pays(8, grok_expert, grok_expert, costs)
    assert copy_pays(64, grok_expert, grok_expert, costs)  # prefill
    # the break-even moves with the constants: a slower CPU copies sooner
    assert copy_pays(8, grok_expert, grok_expert, Costs(cpu_flops=1e11))


def test_plan_on_one_h200_is_an_order_of_magnitude_above_whole_layer_offload():
    """Whole layers cross PCIe with all 8 experts; per expert, 2 of 8 are read where they lie."""
    budgets = dict(max_gpu_memory="141GB", max_cpu_memory="400GB", num_gpus=1, costs=Costs(hbm=4.8e12))
    layers, experts = (placement.make_plan(GrokConfig(), "int8", offload=o, **budgets) for o in ("layers", "experts"))
    assert layers.tokens_per_second[1] < 0.2
    assert experts.tokens_per_second[1] > 10 * layers.tokens_per_second[1]
    # at batch 8 the CPU reads 90% of its experts a step (1 - (3/4)^8), layers offload no more than at batch 1
    assert experts.tokens_per_second[8] > 5 * layers.tokens_per_second[8]
    # the CPU's share at batch 1: a quarter of the experts it holds, not every byte of its layers
    cpu = next(nbytes for device, _, nbytes in experts.rows if device == "cpu")
    assert experts.step_bytes[1]["cpu"] == pytest.approx(cpu / 4)
    assert layers.step_bytes[1]["cpu"] == next(nbytes for device, _, nbytes in layers.rows if device == "cpu")
    assert experts.total_bytes == layers.total_bytes


def test_plan_cli_prints_both_modes_for_one_gpu(capsys):
    cli.main(["plan", "--max-gpu-memory", "141GB", "--max-cpu-memory", "400GB", "--num-gpus", "1", "--hbm-gbs", "4800",
              "--prefix-cache", "0"])
    out = capsys.readouterr().out
    assert "--offload experts\n" in out and "--offload layers\n" in out
    assert "cuda:0     123.28  embed, attention + norms + router of 64 layers, experts: 192 of 512" in out
    assert "cpu        193.35  experts: 320 of 512" in out
    assert out.count("decode estimate, batch 8:") == 2
    assert "bandwidths assumed: HBM 4800 GB/s, PCIe 25 GB/s, CPU RAM 240 GB/s" in out


def test_logits_cli_takes_the_placement_flags(converted_golden, golden, tmp_path, capsys):
    np.savez(tmp_path / "tokens.npz", tokens=golden["tokens"])
    config = GrokConfig.from_checkpoint(converted_golden)
    kv = placement.kv_cache_bytes(config, *golden["tokens"].shape, torch.float32)  # logits' cache: a row a prompt
    budget = split_budget(config, "none", torch.float32, 3, kv)
    common = ["logits", "--checkpoint", str(converted_golden), "--tokens", str(tmp_path / "tokens.npz")]
    cli.main([*common, "--out", str(tmp_path / "resident.npy")])
    cli.main([*common, "--out", str(tmp_path / "placed.npy"), "--max-cpu-memory", str(budget), "--offload", "experts",
              "--cpu-threads", "1"])
    assert "experts 3 cpu, 13 mmap" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(tmp_path / "placed.npy"), np.load(tmp_path / "resident.npy"))


def test_placement_errors_are_clear(golden_dir, converted_golden, tiny_checkpoint):
    config = GrokConfig.from_checkpoint(golden_dir)
    with pytest.raises(ValueError, match="not a converted checkpoint: memory-mapped experts"):
        load_model(golden_dir, quant="none", max_cpu_memory=split_budget(config, "none", torch.bfloat16, 0))
    with pytest.raises(ValueError, match="nf4 experts cannot stay memory-mapped"):
        load_model(converted_golden, quant="nf4", max_cpu_memory=split_budget(config, "nf4", torch.bfloat16, 0))
    with pytest.raises(ValueError, match=r"embedding, attention, norms and routers \(.* GB\) do not fit the cpu budget"):
        load_model(tiny_checkpoint, max_cpu_memory="1000")
    with pytest.raises(ValueError, match="unknown offload mode 'disk'; choose one of experts, layers"):
        load_model(tiny_checkpoint, max_cpu_memory="1GB", offload="disk")
    with pytest.raises(ValueError, match="max_gpu_memory was given but there is no CUDA device"):
        placement.make_plan(config, "int8", max_gpu_memory="1GB", num_gpus=0)


def test_generate_and_bench_take_the_placement_flags(tiny_checkpoint, capsys):
    flags = ["--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--cpu-threads", "1"]
    # generate's KV cache: 1 slot of the tiny model's 4096 tokens, 8.4 MB; the rest of it 1.3 MB; experts 0.27 MB
    cli.main(["generate", *flags, "--max-cpu-memory", "12MB", "--prompt", "Hello", "--max-new-tokens", "3", "--temperature", "0"])
    generated = capsys.readouterr()
    assert "[--offload experts: embedding, attention, norms, routers, KV cache on cpu; experts " in generated.err
    assert "experts 8 cpu, 24 mmap (of 32)]" in generated.err and generated.out
    cli.main(["bench", *flags, "--max-cpu-memory", "8MB", "--quant", "int8", "--batch", "1", "--prompt-len", "8", "--new-tokens", "2", "--offload", "layers",
              "--offload-dir", str(tiny_checkpoint.parent / "offload")])
    benched = capsys.readouterr()
    assert "int8: --offload layers: cpu: embed, layers 0-1; disk: layers 2-3, norm" in benched.err
    assert benched.out.splitlines()[1].split()[:2] == ["int8", "1"]
