"""Every CPU way of Int8Linear (quantize.CPU_PATHS) gives the logits of the reference way (the
weight cast whole, `cast`), on golden-tiny and on one random layer at Grok-1's width, for 1, 2,
7, 16 and 128 rows (tokens in a forward call), in float32 and bfloat16."""

import math

import numpy as np
import pytest
import torch

from inference import cpu_kernels
from inference.checkpoint import load_model
from inference.cli import logits
from inference.model import GrokConfig
from inference.quantize import Int8Linear
from inference.tiny import make_random

SHAPES = {1: (1, 1), 2: (1, 2), 7: (1, 7), 16: (2, 8), 128: (2, 64)}  # rows -> tokens [B, T]
# Relative error of the logits against the cast way's: float32 as tight as summation order
# allows; bfloat16 within the bfloat16 tolerance of tests/inference/test_quantize.py.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
PATHS = {torch.float32: ["int8pack", "blocked"], torch.bfloat16: ["vnni", "int8pack", "blocked"]}


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).norm() / ref.norm())


def with_path(model, path: str):
    for module in model.modules():
        if isinstance(module, Int8Linear):
            module.path = path
    return model


@pytest.fixture(scope="module")
def wide_dir(tmp_path_factory):
    """One layer at Grok-1's width (emb 6144, 48/8 heads of 128), two small experts."""
    folder = tmp_path_factory.mktemp("wide")
    config = GrokConfig(
        vocab_size=2048, context_len=128, emb_size=6144, key_size=128, num_q_heads=48, num_kv_heads=8,
        num_layers=1, num_experts=2, num_selected_experts=2, ffn_size=1024,
        embedding_multiplier_scale=math.sqrt(6144), attn_output_multiplier=1 / math.sqrt(128),
    )
    make_random(folder, config, seed=0, model_name="wide-test")
    return folder


@pytest.fixture(scope="module")
def models(golden_dir, wide_dir):
    """(checkpoint, dtype) -> the int8 model, loaded once."""
    cache = {}

    def get(name: str, dtype: torch.dtype):
        if (name, dtype) not in cache:
            cache[name, dtype] = load_model(golden_dir if name == "golden" else wide_dir, quant="int8", dtype=dtype)
        return cache[name, dtype]

    return get


@pytest.mark.parametrize("rows", sorted(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["golden", "wide"])
def test_every_path_gives_the_reference_logits(models, name, dtype, rows):
    model = models(name, dtype)
    tokens = torch.randint(4, model.config.vocab_size, SHAPES[rows], generator=torch.Generator().manual_seed(rows))
    reference = logits(with_path(model, "cast"), tokens)
    paths = PATHS[dtype]
    if name == "golden" and dtype == torch.bfloat16:
        paths = [p for p in paths if p != "int8pack"]  # PyTorch's kernel crashes on golden-tiny's 11-wide groups
    if not cpu_kernels.available():
        paths = [p for p in paths if p != "vnni"]
    for path in paths:
        ours = logits(with_path(model, path), tokens)
        assert relative_error(ours, reference) < TOLERANCE[dtype], path
    with_path(model, None)


@pytest.mark.parametrize("dtype, reference, tolerance", [(torch.float32, "logits_f32", 1e-6), (torch.bfloat16, "logits_bf16", 3e-2)])
def test_automatic_paths_match_the_golden_logits(golden_dir, golden, dtype, reference, tolerance):
    """The ways Int8Linear picks by itself against xAI's logits (float32: ~3e-7 today)."""
    tokens = torch.from_numpy(golden["tokens"].astype(np.int64))
    ours = logits(load_model(golden_dir, quant="int8", dtype=dtype), tokens).numpy()
    valid = golden["tokens"] != 0
    ref = golden[reference]
    assert np.linalg.norm(ours[valid] - ref[valid]) / np.linalg.norm(ref[valid]) < tolerance


@pytest.mark.skipif(not cpu_kernels.available(), reason="no AVX-512 VNNI, or no C compiler")
@pytest.mark.parametrize("rows", [1, 2, 7, 16, 33])
def test_vnni_kernel_equals_the_exact_product(rows):
    """Odd sizes (remainders of the 4x4 tiles and of the 32-wide steps), several scale groups."""
    torch.manual_seed(rows)
    weight = torch.randint(-128, 128, (3, 37, 100), dtype=torch.int8)  # [G, out, in/G]
    scales = (torch.rand(3, 37) / 100).to(torch.bfloat16)
    x = torch.randn(rows, 300).to(torch.bfloat16)
    exact = sum(x[:, g * 100:(g + 1) * 100].double() @ weight[g].double().T * scales[g].double() for g in range(3))
    ours = cpu_kernels.int8_linear(x, weight, scales)
    assert ours.dtype == torch.bfloat16 and ours.shape == (rows, 37)
    assert relative_error(ours.double(), exact) < 4e-3  # bfloat16's output rounding


def test_vnni_kernel_rejects_bad_input():
    weight = torch.zeros(1, 4, 8, dtype=torch.int8)
    scales = torch.ones(1, 4, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="bfloat16 rows"):
        cpu_kernels.int8_linear(torch.zeros(1, 8), weight, scales)
    with pytest.raises(ValueError, match="rows of 9"):
        cpu_kernels.int8_linear(torch.zeros(1, 9, dtype=torch.bfloat16), weight, scales)


def test_peer_bench_q8_0_blocks_carry_our_exact_weights():
    """bench/llama_peer.py gives llama.cpp our int8 values and scales, not a re-rounding of them."""
    import gguf

    from bench.llama_peer import q8_0_blocks
    from inference.quantize import dequantize

    torch.manual_seed(0)
    weight = torch.randint(-128, 128, (2, 16, 256), dtype=torch.int8)  # [X, out, in]
    scales = (torch.rand(2, 8, 16) / 100).to(torch.bfloat16)  # [X, G, out]
    blocks = q8_0_blocks(weight, scales)
    assert blocks.shape == (2, 16, 256 // 32 * 34) and blocks.dtype == np.uint8
    theirs = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0)  # [X, out, in] float32
    for x in range(2):
        assert np.array_equal(theirs[x], dequantize(weight[x], scales[x], torch.float32).numpy())
    with pytest.raises(ValueError, match="fp16"):
        q8_0_blocks(weight[0], torch.full((8, 16), 1e-30).to(torch.bfloat16))


def test_cast_is_exact_for_every_int8():
    weight = torch.arange(-128, 128, dtype=torch.int8).repeat(3)[:-5]  # not a whole number of 16-wide steps
    out = torch.empty(weight.shape, dtype=torch.bfloat16)
    cpu_kernels.cast(weight, out)
    assert torch.equal(out, weight.to(torch.bfloat16))


def test_default_dtype_is_bfloat16_but_float32_for_a_tiny_model_on_cpu():
    from inference.quantize import default_dtype
    from inference.tiny import tiny_config

    assert default_dtype(GrokConfig(), "cpu") == torch.bfloat16  # Grok-1
    assert default_dtype(tiny_config(), "cpu") == torch.float32
    assert default_dtype(tiny_config(), "cuda") == torch.bfloat16
