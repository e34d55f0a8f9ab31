"""Whole-layer placement over CPU and disk with accelerate (`offload="layers"`), and the `plan`
command for the full model (tests/inference/test_experts.py: placement per expert)."""

import pytest
import torch
from accelerate.utils import compute_module_sizes

from inference import cli, placement
from inference.checkpoint import load_model
from inference.model import GrokConfig
from inference.quantize import meta_model


@pytest.fixture(scope="module")
def budget(tiny_checkpoint) -> int:
    """A CPU budget that holds the embedding and two of the tiny model's four layers (accelerate keeps
    room for one more layer, to bring offloaded ones in)."""
    sizes = compute_module_sizes(meta_model(GrokConfig.from_checkpoint(tiny_checkpoint), "int8", torch.float32))
    return sizes["embed"] + sizes["norm"] + 3 * sizes["layers.0"] + 1000


def test_cpu_and_disk_placement_gives_the_same_logits(tiny_checkpoint, budget, tmp_path):
    model = load_model(
        tiny_checkpoint, quant="int8", dtype=torch.float32, max_cpu_memory=budget, offload_dir=tmp_path, offload="layers"
    )
    in_memory = load_model(tiny_checkpoint, quant="int8", dtype=torch.float32)
    devices = [str(next(layer.parameters()).device) for layer in model.layers]
    assert devices == ["cpu", "cpu", "meta", "meta"]  # layers 2 and 3 wait on disk
    assert (tmp_path / "layers.3.moe.experts.7.linear_1.weight.dat").exists()

    tokens = torch.randint(4, 2048, (2, 12), generator=torch.Generator().manual_seed(0))
    for m in (model, in_memory):
        m.setup_cache(2, 16)
    with torch.inference_mode():
        outputs = [
            (m(tokens, torch.arange(12).expand(2, 12), torch.tensor([0, 1])),
             m(tokens[:, :1], torch.tensor([[12], [12]]), torch.tensor([0, 1])))  # a decode step
            for m in (model, in_memory)
        ]
    for placed, reference in zip(*outputs):
        torch.testing.assert_close(placed, reference, rtol=0, atol=0)


def test_the_kv_cache_is_kept_out_of_the_budgets(tiny_checkpoint, budget, tmp_path):
    config = GrokConfig()
    kv = placement.kv_cache_bytes(config, 8, 8192, torch.bfloat16)
    assert kv == 8 * 8192 * 256 * 2**10  # 256 KiB a token of context: 16 GiB for 8 full slots
    gpus = placement.max_memory("80GiB", "100GiB", num_gpus=2, kv_bytes=kv)
    assert gpus[0] == gpus[1] == 80 * 2**30 - kv // 2 and gpus["cpu"] == 100 * 2**30
    assert placement.max_memory(None, "100GiB", kv_bytes=kv)["cpu"] == 100 * 2**30 - kv
    with pytest.raises(ValueError, match=r"KV cache \(16.0 GiB\) does not fit in max_gpu_memory"):
        placement.max_memory("10GiB", None, num_gpus=1, kv_bytes=kv)

    one, eight = (
        placement.make_plan(
            config, "int8", offload="layers", max_gpu_memory="80GiB", max_cpu_memory="400GiB", num_gpus=1, max_batch=b
        )
        for b in (1, 8)
    )
    assert (one.kv_bytes, eight.kv_bytes) == (kv // 8, kv) and eight.kv_shape == (8, 8192)
    assert len(eight.rows[0][1]) < len(one.rows[0][1])  # fewer layers on the GPU
    assert eight.rows[0][2] <= 80 * 2**30 - kv
    # prefix-cache rows count like slots: 8 of each is twice the cache, kept out of the budget too
    cached = placement.make_plan(config, "int8", max_gpu_memory="80GiB", max_cpu_memory="400GiB", num_gpus=1, prefix_cache=8)
    assert (cached.kv_bytes, cached.kv_shape, cached.prefix_rows) == (2 * kv, (8, 8192), 8)
    assert cached.rows[0][2] <= 80 * 2**30 - 2 * kv
    assert "KV cache 34.36 GB for 8 slots + 8 prefix-cache rows of 8192 tokens" in placement.format_plan(cached, "")

    # Loading keeps it out too: a layer's worth of cache sends one more tiny layer to disk.
    layer = compute_module_sizes(meta_model(GrokConfig.from_checkpoint(tiny_checkpoint), "int8", torch.float32))["layers.0"]
    model = load_model(
        tiny_checkpoint, quant="int8", dtype=torch.float32, max_cpu_memory=budget, offload_dir=tmp_path, kv_bytes=layer,
        offload="layers",
    )
    assert [str(next(layer.parameters()).device) for layer in model.layers] == ["cpu", "meta", "meta", "meta"]


def test_disk_needs_an_offload_dir_and_int8_or_float(tiny_checkpoint, budget, tmp_path):
    with pytest.raises(ValueError, match="offload_dir"):
        load_model(tiny_checkpoint, quant="int8", max_cpu_memory=budget, offload="layers")
    with pytest.raises(ValueError, match="nf4"):
        load_model(tiny_checkpoint, quant="nf4", max_cpu_memory=budget // 3, offload_dir=tmp_path, offload="layers")


def test_parse_bytes():
    assert placement.parse_bytes("80GiB") == 80 * 2**30
    assert placement.parse_bytes("5GB") == 5 * 10**9
    assert placement.parse_bytes(1234) == 1234


def units_in_order(plan: placement.Plan) -> list[str]:
    return [unit for _, names, _ in plan.rows for unit in names]


def test_plan_full_model_int8_over_gpus_cpu_and_disk():
    plan = placement.make_plan(
        GrokConfig(), "int8", offload="layers", max_gpu_memory="80GiB", max_cpu_memory="100GiB", num_gpus=2
    )
    assert [device for device, _, _ in plan.rows] == ["cuda:0", "cuda:1", "cpu", "disk"]
    assert units_in_order(plan) == ["embed", *(f"layers.{i}" for i in range(64)), "norm"]
    assert 314e9 * 0.99 < plan.parameters < 314e9 * 1.02
    assert abs(plan.total_bytes - 314e9) / 314e9 < 0.03  # int8: a byte per parameter
    assert sum(nbytes for _, _, nbytes in plan.rows) == plan.total_bytes
    for device, _, nbytes in plan.rows[:2]:
        assert nbytes <= 80 * 2**30
    # offloaded layers cross PCIe / NVMe every token: far below one token per second
    assert 0 < plan.tokens_per_second[1] < plan.tokens_per_second[8] < 8


def test_plan_full_model_fits_eight_gpus_and_is_bandwidth_bound():
    int8, nf4 = (
        placement.make_plan(GrokConfig(), q, offload="layers", max_gpu_memory="80GiB", max_cpu_memory="100GiB", num_gpus=8)
        for q in ("int8", "nf4")
    )
    assert all(device.startswith("cuda:") for device, _, _ in int8.rows + nf4.rows)
    assert 0.45 < nf4.total_bytes / int8.total_bytes < 0.55
    # per token: attention + 2 of 8 experts + the tied output, ~85 GB at 3.35 TB/s -> ~40 tokens/s
    assert 30 < int8.tokens_per_second[1] < 50
    assert 1.7 < nf4.tokens_per_second[1] / int8.tokens_per_second[1] < 2.1
    with pytest.raises(ValueError, match="one GPU; to spread over 8 GPUs use --offload layers"):
        placement.make_plan(GrokConfig(), "int8", offload="experts", max_gpu_memory="80GiB", num_gpus=8)


def test_plan_cli_prints_devices_bytes_and_speed(capsys):
    cli.main(["plan", "--quant", "int8", "--max-gpu-memory", "80GiB", "--num-gpus", "2", "--max-cpu-memory", "100GiB",
              "--prefix-cache", "0"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    # both modes are planned; placement per expert is for one GPU
    assert lines[0] == "--offload experts: not planned: --offload experts places on one GPU; to spread over 2 GPUs use --offload layers"
    lines = lines[2:]
    assert lines[0].startswith("Grok-1 (full preset): 64 layers, quant int8") and lines[0].endswith("--offload layers")
    assert lines[2].split()[:1] == ["cuda:0"] and "embed, layers 0-" in lines[2]
    # 16 GiB of KV cache (8 slots of 8192 tokens) kept out of the GPUs' budgets
    assert any(line.startswith("disk") and line.endswith("layers 49-63, norm") for line in lines)
    assert "KV cache 17.18 GB for 8 slots of 8192 tokens" in out
    total = next(line for line in lines if line.startswith("total"))
    assert 310 < float(total.split()[1]) < 325  # GB
    assert "tokens/s" in out and "--offload-dir" in out
