"""Grok-1 in PyTorch, for inference.

A port of xAI's reference implementation (github.com/xai-org/grok-1, `model.py`), laid out after
gpt-fast / nanoGPT: one small file, a static KV cache, no training code. The numerics follow the
reference (see ../shared/grok1/README.md): RMSNorm, router and attention softmax in float32,
everything else in the activation dtype, which is the dtype of the embedding (bfloat16 on GPU,
float32 selectable).

Every projection is a plain `nn.Linear(bias=False)`; `inference/quantize.py` swaps those modules
for int8 / nf4 / float ones before the weights are loaded, so nothing here knows about
quantization. The router and the embedding stay as plain tensors.

Shapes: B batch, T time, S cache length, H query heads, K kv heads, G = H // K query heads per kv
head, D key size, E emb size, F expert hidden size, V vocab, X experts, N = B * T tokens.
"""

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference.config import read_checkpoint_info

MAX_ATTN_LOGIT = 30.0  # the reference soft-caps attention logits at +-30
MASKED = -1e30  # the reference's value for masked attention logits
NORM_EPS = 1e-5
ROPE_BASE = 10000.0
# The activation dtypes, by the names the CLI and the settings use.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# xAI's config key for the context length. Converted checkpoints keep writing it, so config.json
# files written by this version stay readable by earlier ones, and by tools that read xAI's files.
CONTEXT_LEN_KEY = "sequence_len"


def ffn_size(emb_size: int, widening_factor: float) -> int:
    """Expert hidden size as the reference derives it: 2/3 of emb * widening, rounded up to 8."""
    size = int(widening_factor * emb_size) * 2 // 3
    return size + (-size) % 8


@dataclass
class GrokConfig:
    """Hyperparameters; the defaults are the full Grok-1 (314B) preset."""

    vocab_size: int = 131072
    pad_token: int = 0
    bos_token: int = 1
    eos_token: int = 2
    context_len: int = 8192  # tokens a sequence may hold, prompt and reply: the KV cache length
    emb_size: int = 6144
    widening_factor: float = 8.0
    key_size: int = 128
    num_q_heads: int = 48
    num_kv_heads: int = 8
    num_layers: int = 64
    num_experts: int = 8
    num_selected_experts: int = 2
    ffn_size: int = 32768
    embedding_multiplier_scale: float = 78.38367176906169
    output_multiplier_scale: float = 0.5773502691896257
    attn_output_multiplier: float = 0.08838834764831845

    @classmethod
    def from_dict(cls, data: dict) -> "GrokConfig":
        """A parsed config.json: its known keys override the defaults, others are ignored."""
        data = dict(data)
        if CONTEXT_LEN_KEY in data:
            data.setdefault("context_len", data.pop(CONTEXT_LEN_KEY))
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        if "ffn_size" not in values and "widening_factor" in values:
            values["ffn_size"] = ffn_size(values.get("emb_size", cls.emb_size), values["widening_factor"])
        return cls(**values)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "GrokConfig":
        """The config of a checkpoint folder; the full Grok-1 preset when a released folder has no config.json."""
        return cls.from_dict(read_checkpoint_info(path).raw)

    def to_dict(self) -> dict:
        """The fields as config.json keys (the context length under CONTEXT_LEN_KEY)."""
        return {CONTEXT_LEN_KEY if key == "context_len" else key: value for key, value in asdict(self).items()}


class RMSNorm(nn.Module):
    """`scale * x / sqrt(mean(x^2) + eps)` in float32 (the reference has no `1 + scale`)."""

    def __init__(self, size: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(size, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + NORM_EPS)
        return (self.scale * normed).to(x.dtype)


def rotate(x: Tensor, input_pos: Tensor) -> Tensor:
    """Rotary embedding on all D dims, half-split convention, in float32 like the reference."""
    d = x.shape[-1]
    inv_freq = 1.0 / ROPE_BASE ** (torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d)  # [D/2]
    phase = input_pos.float()[..., None] * inv_freq  # [B, T, D/2]
    phase = torch.cat([phase, phase], dim=-1)[:, :, None, :]  # [B, T, 1, D]
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x32 * phase.cos() + rotated * phase.sin()).to(x.dtype)


def execution_device(module: nn.Module) -> torch.device:
    """Where `module` computes: accelerate keeps offloaded weights on meta and records the device in its hook."""
    hook = getattr(module, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    return next(module.parameters()).device


class Attention(nn.Module):
    def __init__(self, config: GrokConfig):
        super().__init__()
        self.config = config
        e, d = config.emb_size, config.key_size
        self.query = nn.Linear(e, config.num_q_heads * d, bias=False)
        self.key = nn.Linear(e, config.num_kv_heads * d, bias=False)
        self.value = nn.Linear(e, config.num_kv_heads * d, bias=False)
        self.linear = nn.Linear(config.num_q_heads * d, e, bias=False)
        # Plain attributes, not buffers: accelerate's offloading hooks must leave the cache alone.
        self.k_cache: Tensor | None = None  # [max_batch, K, S, D]
        self.v_cache: Tensor | None = None  # [max_batch, K, S, D]

    def forward(self, x: Tensor, input_pos: Tensor, slots: Tensor, kv_len: int) -> Tensor:
        c = self.config
        b, t, _ = x.shape
        h, k, d = c.num_q_heads, c.num_kv_heads, c.key_size
        q = rotate(self.query(x).view(b, t, h, d), input_pos)  # [B, T, H, D]
        key = rotate(self.key(x).view(b, t, k, d), input_pos)  # [B, T, K, D]
        value = self.value(x).view(b, t, k, d)  # [B, T, K, D]

        # Write this call's keys into each row's cache slot, then attend over the slot's first kv_len.
        self.k_cache[slots[:, None], :, input_pos] = key
        self.v_cache[slots[:, None], :, input_pos] = value
        keys = self.k_cache[slots, :, :kv_len]  # [B, K, L, D]
        values = self.v_cache[slots, :, :kv_len]  # [B, K, L, D]

        # Query head h uses kv head h // G.
        q = q.view(b, t, k, h // k, d).permute(0, 2, 3, 1, 4)  # [B, K, G, T, D]
        logits = torch.einsum("bkgtd,bkld->bkgtl", q, keys).float() * c.attn_output_multiplier  # [B, K, G, T, L]
        logits = MAX_ATTN_LOGIT * torch.tanh(logits / MAX_ATTN_LOGIT)
        future = torch.arange(kv_len, device=x.device) > input_pos[:, :, None]  # [B, T, L]
        logits = logits.masked_fill(future[:, None, None], MASKED)
        weights = torch.softmax(logits, dim=-1).to(x.dtype)
        out = torch.einsum("bkgtl,bkld->btkgd", weights, values)  # [B, T, K, G, D]
        return self.linear(out.reshape(b, t, h * d))  # [B, T, E]


class Expert(nn.Module):
    """Gated GELU unit: `linear_1(gelu_tanh(x @ linear) * (x @ linear_v))`."""

    def __init__(self, config: GrokConfig):
        super().__init__()
        self.linear = nn.Linear(config.emb_size, config.ffn_size, bias=False)
        self.linear_v = nn.Linear(config.emb_size, config.ffn_size, bias=False)
        self.linear_1 = nn.Linear(config.ffn_size, config.emb_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_1(F.gelu(self.linear(x), approximate="tanh") * self.linear_v(x))


class Experts(nn.ModuleList):
    """The X experts of a layer, all where the layer runs. inference/experts.py `PlacedExperts`
    replaces it when the experts are placed one by one (GPU, CPU RAM, memory-mapped file)."""

    def forward(self, x: Tensor, chosen: Tensor, gates: Tensor) -> Tensor:
        """x [N, E], chosen [N, k] expert indices, gates [N, k] -> sum of the chosen experts' outputs, gated [N, E]."""
        out = torch.zeros_like(x)  # [N, E]
        for index, expert in enumerate(self):
            token, rank = torch.where(chosen == index)
            if token.numel():  # run only the experts some token chose
                out.index_add_(0, token, expert(x[token]) * gates[token, rank, None])
        return out


class MoE(nn.Module):
    def __init__(self, config: GrokConfig):
        super().__init__()
        self.top_k = config.num_selected_experts
        self.router = nn.Parameter(torch.empty(config.num_experts, config.emb_size, dtype=torch.float32))  # [X, E]
        self.experts = Experts(Expert(config) for _ in range(config.num_experts))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, E]
        probs = torch.softmax(x.float() @ self.router.T, dim=-1)  # [N, X]
        # The reference keeps the top-k probabilities as they are: no renormalisation.
        gates, chosen = probs.topk(self.top_k, dim=-1)  # [N, k]
        return self.experts(x, chosen, gates.to(x.dtype)).view(shape)


class DecoderLayer(nn.Module):
    """Norm sandwich: x += norm_1(attn(norm(x))); x += norm_3(moe(norm_2(x)))."""

    def __init__(self, config: GrokConfig):
        super().__init__()
        self.rms_norm = RMSNorm(config.emb_size)
        self.attn = Attention(config)
        self.rms_norm_1 = RMSNorm(config.emb_size)
        self.rms_norm_2 = RMSNorm(config.emb_size)
        self.moe = MoE(config)
        self.rms_norm_3 = RMSNorm(config.emb_size)

    def forward(self, x: Tensor, input_pos: Tensor, slots: Tensor, kv_len: int) -> Tensor:
        x = x + self.rms_norm_1(self.attn(self.rms_norm(x), input_pos, slots, kv_len))
        return x + self.rms_norm_3(self.moe(self.rms_norm_2(x)))


class InOutEmbed(nn.Module):
    """Tied embedding. Decoding goes through forward too, so accelerate's hooks load the weight for it."""

    def __init__(self, config: GrokConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.vocab_size, config.emb_size))  # [V, E]

    def forward(self, x: Tensor, decode: bool = False) -> Tensor:
        if decode:
            return x @ self.weight.T.to(x.dtype)  # [B, T, V]
        return self.weight[x]  # [B, T, E]


def times(x: Tensor, constant: float) -> Tensor:
    # The reference multiplies by Python floats, which JAX first rounds to the array's dtype.
    return x * torch.tensor(constant, dtype=x.dtype, device=x.device)


class Grok(nn.Module):
    def __init__(self, config: GrokConfig):
        super().__init__()
        self.config = config
        self.embed = InOutEmbed(config)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.emb_size)

    def setup_cache(self, max_batch: int, context_len: int) -> None:
        """Allocate a zeroed KV cache [max_batch, K, S, D] per layer, on the device each layer runs on."""
        c = self.config
        dtype = self.embed.weight.dtype  # the activation dtype
        for layer in self.layers:
            shape = (max_batch, c.num_kv_heads, context_len, c.key_size)
            device = execution_device(layer)
            layer.attn.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            layer.attn.v_cache = torch.zeros(shape, dtype=dtype, device=device)

    def copy_cache(self, source: int, target: int, length: int) -> None:
        """Copy the keys and values of cache row `source`'s first `length` positions into row `target` (prefix reuse)."""
        for layer in self.layers:
            for cache in (layer.attn.k_cache, layer.attn.v_cache):
                cache[target, :, :length] = cache[source, :, :length]

    def forward(self, tokens: Tensor, input_pos: Tensor, slots: Tensor, at: Tensor | None = None) -> Tensor:
        """tokens [B, T], input_pos [B, T], slots [B] (all long) -> logits [B, T, V] float32.

        `at` [B] (long) picks one position per row whose logits are wanted -> logits [B, 1, V]:
        a prefill needs only its last token's, and [B, T, V] of a 131072-word vocabulary is large.

        Each token's key and value are stored at cache[slots[b], :, input_pos[b, t]], and a query
        at position p attends to the keys of its own slot at positions <= p. Prefill and decode are
        the same call. Right-padding entries should continue their row's position count (they then
        only write cache cells that the row's next real tokens overwrite before anyone reads them).
        """
        if self.layers[0].attn.k_cache is None:
            raise RuntimeError("call setup_cache(max_batch, context_len) before forward")
        kv_len = int(input_pos.max()) + 1  # attend over no more of the cache than any query can see
        x = times(self.embed(tokens), self.config.embedding_multiplier_scale)  # [B, T, E]
        for layer in self.layers:
            x = layer(x, input_pos, slots, kv_len)
        if at is not None:
            x = x[torch.arange(x.shape[0], device=x.device), at][:, None]  # [B, 1, E]
        logits = self.embed(self.norm(x), decode=True)  # [B, T, V]
        return times(logits, self.config.output_multiplier_scale).float()
