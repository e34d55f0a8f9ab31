"""The seeded demo checkpoint built by `make-tiny`."""

import hashlib
import json
import time

import sentencepiece as spm
import torch

from inference.checkpoint import load_model
from inference.model import GrokConfig
from inference.tiny import make_tiny


def test_config_marks_a_demo_with_a_real_context_window(tiny_checkpoint):
    raw = json.loads((tiny_checkpoint / "config.json").read_text())
    assert raw["demo"] is True and raw["model_name"] == "grok-1-tiny-demo"
    config = GrokConfig.from_checkpoint(tiny_checkpoint)
    assert config.context_len == 4096 and config.vocab_size == 2048
    assert (config.num_experts, config.num_selected_experts, config.num_q_heads, config.num_kv_heads) == (8, 2, 4, 2)
    assert config.num_q_heads * config.key_size == config.emb_size


def test_tokenizer_has_grok_special_ids_and_byte_fallback(tiny_checkpoint):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_checkpoint / "tokenizer.model"))
    assert sp.vocab_size() == 2048
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    text = "def f(x):\n    return x  # naïve 😀 日本"
    ids = sp.encode(text)
    assert sp.unk_id() not in ids  # unseen characters become bytes, not <unk>
    assert sp.decode(ids) == text


def test_weights_are_int8_with_release_group_scales(tiny_checkpoint):
    from safetensors import safe_open

    index = json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())
    shard = tiny_checkpoint / index["weight_map"]["layers.3.moe.experts.5.linear_1.weight"]
    with safe_open(shard, framework="pt") as f:
        assert f.get_tensor("layers.3.moe.experts.5.linear_1.weight").dtype == torch.int8
        assert f.get_tensor("layers.3.moe.experts.5.linear_1.scales").shape == (8, 128)
        assert f.get_tensor("layers.3.attn.query.scales").shape == (1, 128)


def test_build_is_deterministic_fast_and_seeded(tiny_checkpoint, tmp_path):
    def digest(folder):
        files = sorted(folder.glob("model-*.safetensors")) + [folder / "tokenizer.model"]
        return [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]

    start = time.perf_counter()
    make_tiny(tmp_path / "again", seed=0)
    assert time.perf_counter() - start < 20
    assert digest(tmp_path / "again") == digest(tiny_checkpoint)
    make_tiny(tmp_path / "other", seed=1)
    other = digest(tmp_path / "other")
    assert other[-1] == digest(tiny_checkpoint)[-1] and other[:-1] != digest(tiny_checkpoint)[:-1]


def test_generates_varied_tokens_quickly(tiny_checkpoint):
    model = load_model(tiny_checkpoint, quant="int8", dtype=torch.float32)
    model.setup_cache(1, 4096)
    generator = torch.Generator().manual_seed(0)
    token, sampled = torch.tensor([[100]]), []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this shared 2-core machine is busy: more threads only spin
    try:
        start = time.perf_counter()
        with torch.inference_mode():
            for position in range(64):
                logits = model(token, torch.tensor([[position]]), torch.tensor([0]))
                token = torch.multinomial(torch.softmax(logits[0, -1], -1), 1, generator=generator)[None]
                sampled.append(int(token))
        assert time.perf_counter() - start < 10  # measured ~50-100 tokens/s on one busy core
    finally:
        torch.set_num_threads(threads)
    assert len(set(sampled)) > 20  # noise, but not one token repeated
