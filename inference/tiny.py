"""`make_tiny` (`python -m inference make-tiny DST`): a small seeded checkpoint with Grok-1's architecture.

The weights are random noise (the demo mode of the web app): the point is to run the whole
stack (tokenizer, engine, batching, streaming) on a laptop CPU. The tokenizer is a 2048-piece
SentencePiece BPE trained at build time on `tiny_corpus.txt`, with Grok-1's special ids
(pad 0, BOS 1, EOS 2, UNK 3), byte fallback and whitespace kept as is. The weights are quantized
to int8 with bf16 group scales exactly as the release stores them and written with the project's
converted-format writer (`convert.write_converted`).
"""

import io
import json
import math
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np
import sentencepiece as spm

from inference.convert import write_converted
from inference.model import GrokConfig, ffn_size
from inference.released import QuantizedWeight8bit, released_names

CORPUS = Path(__file__).with_name("tiny_corpus.txt")
EMBEDDING_STD = 0.3  # with the tied output this gives logits of std ~2: varied but not uniform samples
# Scale of the norms after attention and MoE. With 1, the input embedding dominates the residual
# stream and the tied output just repeats the last token; with 8 the samples vary.
BRANCH_SCALE = 8.0


def tiny_config() -> GrokConfig:
    emb, key_size = 128, 32
    return GrokConfig(
        vocab_size=2048,
        context_len=4096,
        emb_size=emb,
        widening_factor=8.0,
        key_size=key_size,
        num_q_heads=4,
        num_kv_heads=2,
        num_layers=4,
        num_experts=8,
        num_selected_experts=2,
        ffn_size=ffn_size(emb, 8.0),
        embedding_multiplier_scale=math.sqrt(emb),
        attn_output_multiplier=1 / math.sqrt(key_size),
    )


def train_tokenizer(vocab_size: int) -> bytes:
    """A SentencePiece BPE model (serialized) trained on the corpus; deterministic."""
    paragraphs = [p for p in CORPUS.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(paragraphs),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        pad_piece="[PAD]", bos_piece="[BOS]", eos_piece="[EOS]", unk_piece="[UNK]",
        # like Grok-1's tokenizer: no normalisation, runs of spaces and newlines are pieces
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=1 << 16,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def quantize_released(w: np.ndarray, groups: int) -> QuantizedWeight8bit:
    """float [..., in, out] -> int8 weight + bf16 scales [..., G, out]: symmetric, absmax per group and column."""
    *lead, n_in, n_out = w.shape
    grouped = w.reshape(*lead, groups, n_in // groups, n_out)  # [..., G, in/G, out]
    scales = (np.abs(grouped).max(axis=-2) / 127).astype(ml_dtypes.bfloat16)  # [..., G, out]
    q = np.clip(np.round(grouped / scales.astype(np.float32)[..., None, :]), -127, 127).astype(np.int8)
    return QuantizedWeight8bit(q.reshape(w.shape), scales)


def random_parameters(config: GrokConfig, seed: int) -> dict[str, np.ndarray | QuantizedWeight8bit]:
    """Released-format parameters (names as in ckpt-0), seeded."""
    rng = np.random.default_rng(seed)
    e, f, x, d = config.emb_size, config.ffn_size, config.num_experts, config.key_size
    q_out, kv_out = config.num_q_heads * d, config.num_kv_heads * d

    def linear(shape: tuple[int, ...], groups: int) -> QuantizedWeight8bit:
        return quantize_released(rng.standard_normal(shape, dtype=np.float32) / math.sqrt(shape[-2]), groups)

    # (shape, scale groups) of each projection, groups as in the release
    projections = {
        "moe/linear/w": ((x, e, f), 1),
        "moe/linear_1/w": ((x, f, e), 8),
        "moe/linear_v/w": ((x, e, f), 1),
        "multi_head_attention/key/w": ((e, kv_out), 1),
        "multi_head_attention/linear/w": ((q_out, e), 8),
        "multi_head_attention/query/w": ((e, q_out), 1),
        "multi_head_attention/value/w": ((e, kv_out), 1),
    }
    params = {}
    for name in released_names(config):
        part = name.split("/", 2)[-1]
        if name == "language_model/in_out_embed/embeddings":
            params[name] = rng.standard_normal((config.vocab_size, e), dtype=np.float32) * EMBEDDING_STD
        elif name.endswith(("rms_norm_1/scale", "rms_norm_3/scale")):
            params[name] = np.full(e, BRANCH_SCALE, dtype=np.float32)
        elif name.endswith("/scale"):
            params[name] = np.ones(e, dtype=np.float32)
        elif part == "router/w":
            params[name] = rng.standard_normal((e, x), dtype=np.float32) / math.sqrt(e)
        else:
            params[name] = linear(*projections[part])
    return params


def make_tiny(dst: str | Path, seed: int = 0) -> None:
    """Write the tiny demo checkpoint (converted format, with its tokenizer) to dst."""
    make_random(dst, tiny_config(), seed, model_name="grok-1-tiny-demo")


def make_random(dst: str | Path, config: GrokConfig, seed: int, model_name: str) -> None:
    """Write a seeded random checkpoint of `config`'s shape (converted format, with the tiny
    tokenizer, which sets the vocabulary: 2048) to dst."""
    params = random_parameters(config, seed)
    sources = [(name, value.nbytes) for name, value in params.items()]
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = Path(folder) / "tokenizer.model"
        tokenizer.write_bytes(train_tokenizer(config.vocab_size))
        write_converted(
            dst,
            config.to_dict() | {"model_name": model_name, "demo": True},
            sources,
            params.__getitem__,
            tokenizer=tokenizer,
        )


def make_random_int8(dst: str | Path, config: GrokConfig, seed: int, model_name: str, device: str = "cpu") -> None:
    """Write a seeded random checkpoint of `config`'s shape straight in the converted format, one
    shard per layer, with no tokenizer: int8 weights drawn with torch on `device` (a GPU draws
    Grok-1's full width in seconds, where `make_random`'s float weights and numpy take minutes).
    For benchmarks and placement tests, which feed token ids and read logits."""
    import torch  # here: the rest of this module, and make_tiny, need numpy only
    from safetensors.torch import save_file

    from inference.checkpoint import INDEX_FILE, _schema
    from inference.config import CONFIG_FILE

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device).manual_seed(seed)
    schema = _schema(config)
    shards: dict[str, list[str]] = {}
    for key in schema:
        shards.setdefault(f"layer-{key.split('.')[1]}.safetensors" if key.startswith("layers.") else "shared.safetensors", []).append(key)
    total = 0
    for shard, keys in shards.items():  # one shard in memory at a time
        tensors = {}
        for key in keys:
            shape, dtype = schema[key]
            if dtype == torch.int8:
                value = torch.randint(-127, 128, shape, dtype=torch.int8, generator=generator, device=device)
            elif key.endswith(".scales"):  # uniform int8 has std ~73: weights of std 1/sqrt(in), as make_random's
                in_features = schema[key.removesuffix(".scales") + ".weight"][0][1]
                value = torch.full(shape, 1 / (73 * math.sqrt(in_features)), dtype=dtype, device=device)
            elif key == "embed.weight":
                value = torch.randn(shape, generator=generator, device=device) * EMBEDDING_STD
            elif key.endswith(("rms_norm_1.scale", "rms_norm_3.scale")):
                value = torch.full(shape, BRANCH_SCALE, device=device)
            elif key.endswith(".scale"):
                value = torch.ones(shape, device=device)
            else:  # the router [X, E]
                value = torch.randn(shape, generator=generator, device=device) / math.sqrt(shape[1])
            tensors[key] = value.cpu()
        save_file(tensors, dst / shard, metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    weight_map = {key: shard for shard, keys in shards.items() for key in keys}
    (dst / CONFIG_FILE).write_text(json.dumps(config.to_dict() | {"model_name": model_name, "demo": True}, indent=1))
    (dst / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
