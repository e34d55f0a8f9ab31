"""A checkpoint (released or converted) -> one GGUF file of llama.cpp's `grok` architecture,
tokenizer included: `python -m inference export-gguf SRC DST`.

So llama.cpp (its `llama-server` is an engine the worker can drive, inference/remote.py) runs our
checkpoints. The layout follows llama.cpp's own Grok conversion (convert_hf_to_gguf.py,
conversion/grok.py): per layer `attn_norm`, `attn_{q,k,v,output}`, `attn_output_norm`,
`ffn_norm`, the router `ffn_gate_inp` and the experts stacked as `ffn_{gate,up,down}_exps`
(Grok's `linear`, `linear_v`, `linear_1`: `linear_1(gelu(x @ linear) * (x @ linear_v))`), then
`layer_output_norm`; the tied output reuses `token_embd`. No Q/K permutation: llama.cpp's grok
uses the half-split ("NEOX") rotary embedding, as Grok does.

What llama.cpp computes differently from the reference: it renormalises the top-2 gates (the
post-MoE RMSNorm cancels a per-token scale, so only its epsilon notices), and its CPU GELU reads
an fp16 table (~5e-5 on the logits). It reads `router_logit_softcapping` but does not apply it.

Weights are dequantised exactly (int8 * scales in float32, as the float32 reference) and written
as `out_type`: f32, f16, bf16 or q8_0 (llama.cpp's 8-bit blocks of 32; the release's int8 is
per-column, so q8_0 re-rounds it slightly). Norms and the router stay float32. Tensors go
through a temporary file (GGUFWriter's `use_temp_file`), so memory holds one layer's experts at
a time; the temporary space is about the output's size.
"""

import re
from pathlib import Path

import gguf
import numpy as np
import torch
from sentencepiece import SentencePieceProcessor

from inference.checkpoint import checkpoint_tensors
from inference.config import read_checkpoint_info
from inference.model import NORM_EPS, GrokConfig
from inference.quantize import dequantize

ROPE_BASE = 10000.0
OUT_TYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
DEFAULT_OUT_TYPE = "q8_0"  # about the release's size: a byte per parameter and a bit
# Converted names -> GGUF names; `{i}` is the layer.
NAMES = {
    "embed.weight": "token_embd.weight",
    "norm.scale": "output_norm.weight",
    "layers.{i}.rms_norm.scale": "blk.{i}.attn_norm.weight",
    "layers.{i}.rms_norm_1.scale": "blk.{i}.attn_output_norm.weight",
    "layers.{i}.rms_norm_2.scale": "blk.{i}.ffn_norm.weight",
    "layers.{i}.rms_norm_3.scale": "blk.{i}.layer_output_norm.weight",
    "layers.{i}.attn.query": "blk.{i}.attn_q.weight",
    "layers.{i}.attn.key": "blk.{i}.attn_k.weight",
    "layers.{i}.attn.value": "blk.{i}.attn_v.weight",
    "layers.{i}.attn.linear": "blk.{i}.attn_output.weight",
    "layers.{i}.moe.router": "blk.{i}.ffn_gate_inp.weight",
}
EXPERT_NAMES = {"linear": "ffn_gate_exps", "linear_v": "ffn_up_exps", "linear_1": "ffn_down_exps"}


def export_gguf(src: str | Path, dst: str | Path, *, out_type: str = DEFAULT_OUT_TYPE, tokenizer: str | Path | None = None) -> None:
    """Write the checkpoint folder `src` as the GGUF file `dst`. The tokenizer is
    `tokenizer` or SRC/tokenizer.model; its pieces fill the model's vocabulary."""
    if out_type not in OUT_TYPES:
        raise ValueError(f"unknown GGUF type {out_type!r}; choose one of {', '.join(OUT_TYPES)}")
    src = Path(src)
    tokenizer = Path(tokenizer) if tokenizer else src / "tokenizer.model"
    if not tokenizer.is_file():
        raise FileNotFoundError(f"{tokenizer} is missing: give --tokenizer (Grok-1's tokenizer.model)")
    info = read_checkpoint_info(src)
    config = GrokConfig.from_dict(info.raw)
    qtype, file_type = OUT_TYPES[out_type]

    writer = gguf.GGUFWriter(str(dst), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GROK], use_temp_file=True)
    _add_hyperparameters(writer, config, info.model_name, file_type)
    _add_vocabulary(writer, SentencePieceProcessor(model_file=str(tokenizer)), config)
    experts: dict[tuple[int, str], dict[int, np.ndarray]] = {}  # (layer, projection) -> expert -> weight
    for name, array in _float_tensors(src):
        parts = name.split(".")
        if parts[2:4] == ["moe", "experts"]:  # layers.{i}.moe.experts.{x}.{projection}
            layer, expert, projection = int(parts[1]), int(parts[4]), parts[5]
            stack = experts.setdefault((layer, projection), {})
            stack[expert] = array
            if len(stack) == config.num_experts:
                del experts[(layer, projection)]
                weight = np.stack([stack[x] for x in range(config.num_experts)])  # [X, out, in]
                _add(writer, f"blk.{layer}.{EXPERT_NAMES[projection]}.weight", weight, qtype)
            continue
        key = re.sub(r"^layers\.\d+\.", "layers.{i}.", name)
        gguf_name = NAMES[key].format(i=parts[1])
        _add(writer, gguf_name, array, qtype if array.ndim == 2 and "ffn_gate_inp" not in gguf_name else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()


def _float_tensors(src: Path):
    """(converted name, float32 array) per tensor, each projection's weight and scales joined."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor, _ in checkpoint_tensors(src):
        module, _, leaf = key.rpartition(".")
        if leaf not in ("weight", "scales") or key == "embed.weight":
            yield key, tensor.float().numpy()
            continue
        parts = pending.setdefault(module, {})
        parts[leaf] = tensor
        if len(parts) == 2:
            del pending[module]
            yield module, dequantize(parts["weight"], parts["scales"], torch.float32).numpy()


def _add(writer: gguf.GGUFWriter, name: str, array: np.ndarray, qtype: gguf.GGMLQuantizationType | None) -> None:
    """Add a tensor in `qtype` (None or f32: float32); q8_0 needs rows of whole 32-blocks."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if qtype is None or qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, array)
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, array.astype(np.float16))
    elif qtype == gguf.GGMLQuantizationType.Q8_0 and array.shape[-1] % 32:
        writer.add_tensor(name, array.astype(np.float16))  # llama.cpp's converter falls back likewise
    else:
        writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)


def _add_hyperparameters(writer: gguf.GGUFWriter, config: GrokConfig, model_name: str, file_type: gguf.LlamaFileType) -> None:
    writer.add_name(model_name)
    writer.add_context_length(config.context_len)
    writer.add_embedding_length(config.emb_size)
    writer.add_block_count(config.num_layers)
    writer.add_feed_forward_length(config.ffn_size)
    writer.add_expert_feed_forward_length(config.ffn_size)
    writer.add_head_count(config.num_q_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_key_length(config.key_size)
    writer.add_value_length(config.key_size)
    writer.add_rope_dimension_count(config.key_size)
    writer.add_rope_freq_base(ROPE_BASE)
    writer.add_layer_norm_rms_eps(NORM_EPS)
    writer.add_expert_count(config.num_experts)
    writer.add_expert_used_count(config.num_selected_experts)
    writer.add_attn_logit_softcapping(30.0)
    writer.add_attn_output_scale(config.attn_output_multiplier)
    writer.add_embedding_scale(config.embedding_multiplier_scale)
    writer.add_logit_scale(config.output_multiplier_scale)
    writer.add_file_type(file_type)


def _add_vocabulary(writer: gguf.GGUFWriter, sp: SentencePieceProcessor, config: GrokConfig) -> None:
    """SentencePiece pieces as llama.cpp's "llama" (SPM) tokenizer, as its converter does
    (`_create_vocab_sentencepiece`); ids past the tokenizer's pieces are unused padding."""
    if sp.vocab_size() > config.vocab_size:
        raise ValueError(f"the tokenizer has {sp.vocab_size()} pieces but the model only {config.vocab_size} embeddings")
    tokens = [f"[PAD{i}]".encode() for i in range(config.vocab_size)]
    scores = [-10000.0] * config.vocab_size
    types = [gguf.TokenType.UNUSED] * config.vocab_size
    for i in range(sp.vocab_size()):
        tokens[i] = sp.id_to_piece(i).encode()
        scores[i] = sp.get_score(i)
        types[i] = (
            gguf.TokenType.UNKNOWN if sp.is_unknown(i)
            else gguf.TokenType.CONTROL if sp.is_control(i)
            else gguf.TokenType.UNUSED if sp.is_unused(i)
            else gguf.TokenType.BYTE if sp.is_byte(i)
            else gguf.TokenType.NORMAL
        )
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(config.bos_token)
    writer.add_eos_token_id(config.eos_token)
    writer.add_pad_token_id(config.pad_token)
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(False)  # the reference encodes prompts without BOS
    # SentencePiece's add_dummy_prefix, seen from its output (reading it needs protobuf)
    writer.add_add_space_prefix(sp.encode("a", out_type=str)[0].startswith("\u2581"))
