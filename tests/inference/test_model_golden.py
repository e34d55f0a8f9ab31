"""Grok-1 forward pass against xAI's reference logits (../shared/grok1/golden-tiny)."""

import numpy as np
import pytest
import torch

from inference.checkpoint import load_model
from inference.cli import logits
from inference.model import GrokConfig


def row_errors(ours: np.ndarray, ref: np.ndarray, tokens: np.ndarray) -> list[float]:
    """||ours - ref|| / ||ref|| per row, over the non-padding positions."""
    return [
        float(np.linalg.norm(ours[b][row != 0] - ref[b][row != 0]) / np.linalg.norm(ref[b][row != 0]))
        for b, row in enumerate(tokens)
    ]


@pytest.fixture(scope="module")
def tokens(golden) -> torch.Tensor:
    return torch.from_numpy(golden["tokens"].astype(np.int64))


@pytest.mark.parametrize("source", ["released", "converted"])
@pytest.mark.parametrize(
    "dtype, reference, tolerance",
    [(torch.float32, "logits_f32", 5e-3), (torch.bfloat16, "logits_bf16", 3e-2)],
)
def test_golden_logits(source, dtype, reference, tolerance, golden, golden_dir, converted_golden, tokens):
    path = golden_dir if source == "released" else converted_golden
    model = load_model(path, quant="none", dtype=dtype)
    ours = logits(model, tokens).numpy()
    ref = golden[reference]
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    errors = row_errors(ours, ref, golden["tokens"])
    assert max(errors) < tolerance, errors
    if dtype == torch.float32:
        valid = golden["tokens"] != 0
        assert (ours.argmax(-1) == ref.argmax(-1))[valid].all()


def test_config_from_checkpoint_overrides_defaults_and_ignores_unknown_keys(golden_dir):
    config = GrokConfig.from_checkpoint(golden_dir)  # carries tensor_order, not a field
    assert (config.vocab_size, config.emb_size, config.num_layers, config.ffn_size) == (512, 64, 2, 88)
    assert config.bos_token == 1  # not in the file: default kept
    full = GrokConfig()
    assert (full.num_q_heads, full.num_kv_heads, full.ffn_size, full.context_len) == (48, 8, 32768, 8192)
    assert config.context_len == 64  # xAI's key, "sequence_len"
    assert GrokConfig.from_dict(config.to_dict()) == config and config.to_dict()["sequence_len"] == 64


@pytest.fixture(scope="module")
def model(golden_dir):
    return load_model(golden_dir, quant="none", dtype=torch.float32)


def test_decode_one_token_at_a_time_matches_prefill(model, golden, tokens):
    """The KV cache: feeding row 0 token by token gives the logits of one prefill."""
    row = tokens[:1]
    full = logits(model, row)
    model.setup_cache(1, row.shape[1])
    with torch.inference_mode():
        steps = [
            model(row[:, t : t + 1], torch.tensor([[t]]), torch.tensor([0])) for t in range(row.shape[1])
        ]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


def test_rows_do_not_depend_on_slot_or_batch_neighbours(model, tokens):
    """A ragged batch (a prefill next to a decode step), in arbitrary cache slots, matches each row alone."""
    alone = logits(model, tokens[1:, :19])  # row 1 without its padding
    prefix = logits(model, tokens[:1, :10])

    model.setup_cache(4, 32)
    with torch.inference_mode():
        model(tokens[:1, :9], torch.arange(9)[None], torch.tensor([1]))  # row 0 prefilled in slot 1
        # one call: row 0 decodes position 9 (padded to 19 columns), row 1 prefills 19 tokens in slot 3
        batch = torch.zeros(2, 19, dtype=torch.long)
        batch[0, 0] = tokens[0, 9]
        batch[1] = tokens[1, :19]
        positions = torch.stack([torch.arange(9, 28), torch.arange(19)])
        out = model(batch, positions, torch.tensor([1, 3]))
    torch.testing.assert_close(out[0, 0], prefix[0, 9], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1], alone[0], rtol=1e-4, atol=1e-4)
