"""Quantization modes: int8 (released weights, our matmul), nf4 (bitsandbytes), none (dequantised)."""

import numpy as np
import pytest
import torch
from torch import nn

from inference.checkpoint import load_model
from inference.cli import logits
from inference.model import GrokConfig
from inference import cpu_kernels, quantize
from inference.quantize import Int8Linear, build_linear, dequantize, meta_model


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).norm() / ref.norm())


@pytest.mark.parametrize("groups", [1, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("in_features", [64, 128])
@pytest.mark.parametrize("rows", [1, 15])
def test_int8_linear_equals_dequantised_linear(groups, dtype, in_features, rows, monkeypatch):
    """Every CPU way Int8Linear picks (inference/quantize.py): the same product."""
    torch.manual_seed(0)
    weight = torch.randint(-127, 128, (48, in_features), dtype=torch.int8)
    scales = (torch.rand(groups, 48) / 100).to(torch.bfloat16)
    x = torch.randn(rows, 1, in_features).to(dtype)
    int8 = build_linear(weight, scales, "int8", dtype, "cpu")
    plain = build_linear(weight, scales, "none", dtype, "cpu")
    assert isinstance(int8, Int8Linear) and int8.weight.dtype == torch.int8 and int8.scales.shape == (groups, 48)
    assert type(plain) is nn.Linear and plain.weight.dtype == dtype
    if dtype == torch.float32:
        path = "int8pack" if rows <= 2 else "blocked"
    else:
        path = "vnni" if cpu_kernels.available() else "int8pack" if in_features // groups >= 16 else "cast"
    monkeypatch.setattr(quantize, "INT8_KERNEL_MIN_BLOCK", 1)  # the real threshold is for big weights
    assert int8.cpu_path(x.view(rows, -1)) == path
    exact = x.double() @ (weight.double().view(48, groups, -1) * scales.double().T[:, :, None]).view(48, -1).T
    assert relative_error(int8(x).double(), exact) < (1e-6 if dtype == torch.float32 else 1e-2)
    assert relative_error(plain(x).double(), exact) < (1e-6 if dtype == torch.float32 else 1e-2)


def test_dequantize_uses_each_groups_scale():
    weight = torch.ones(2, 8, dtype=torch.int8)
    scales = torch.tensor([[1.0, 10.0], [2.0, 20.0]], dtype=torch.bfloat16)  # [G=2, out=2]
    expected = torch.tensor([[1.0] * 4 + [2.0] * 4, [10.0] * 4 + [20.0] * 4])
    assert torch.equal(dequantize(weight, scales, torch.float32), expected)


def test_swap_replaces_every_projection_and_nothing_else():
    config = GrokConfig(vocab_size=64, emb_size=32, key_size=8, num_q_heads=4, num_kv_heads=2, num_layers=2, ffn_size=48)
    model = meta_model(config, "int8", torch.bfloat16)
    projections = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(projections) == config.num_layers * (4 + 3 * config.num_experts)
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert model.layers[0].attn.linear.scales.shape == (8, 32) and model.layers[0].attn.query.scales.shape == (1, 32)
    assert model.layers[0].moe.experts[0].linear_1.scales.shape[0] == 8
    assert model.layers[0].moe.router.dtype == torch.float32 and model.embed.weight.dtype == torch.bfloat16
    assert all(p.is_meta for p in model.parameters())


@pytest.fixture(scope="module")
def tokens(golden) -> torch.Tensor:
    return torch.from_numpy(golden["tokens"].astype(np.int64))


@pytest.fixture(scope="module")
def float_logits(golden_dir, tokens) -> dict:
    return {dtype: logits(load_model(golden_dir, quant="none", dtype=dtype), tokens) for dtype in (torch.float32, torch.bfloat16)}


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("kernel", [False, True], ids=["cast", "kernel"])
def test_int8_model_matches_dequantised_model(golden_dir, tokens, float_logits, dtype, tolerance, kernel, monkeypatch):
    if kernel:  # PyTorch's int8 kernel wherever it may run, though these weights are small
        monkeypatch.setattr(quantize, "INT8_KERNEL_MIN_BLOCK", 1)
    model = load_model(golden_dir, quant="int8", dtype=dtype)
    assert isinstance(model.layers[0].moe.experts[3].linear_v, Int8Linear)
    assert relative_error(logits(model, tokens), float_logits[dtype]) < tolerance


def test_nf4_runs_and_stays_close(golden_dir, tokens, float_logits):
    import bitsandbytes as bnb

    model = load_model(golden_dir, quant="nf4", dtype=torch.float32)
    projection = model.layers[1].moe.experts[0].linear_1
    assert isinstance(projection, bnb.nn.Linear4bit)
    # really quantized on the CPU: 4-bit codes packed two per byte
    assert projection.weight.dtype == torch.uint8 and projection.weight.numel() == 88 * 64 // 2
    ours = logits(model, tokens)
    # measured: 0.07 relative error against the float model (random weights are nf4's worst case)
    assert relative_error(ours, float_logits[torch.float32]) < 0.15
    agree = (ours.argmax(-1) == float_logits[torch.float32].argmax(-1))[tokens != 0].float().mean()
    assert agree > 0.8
