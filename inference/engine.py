"""Continuous batching over Grok's static KV cache, with sampling on the device.

The engine owns `max_batch` cache slots. A request waits in a first-come-first-served queue until
a slot is free, then joins the running batch at the next `step()`: each step runs one forward
for the prompts being prefilled (right-padded, in chunks of at most `prefill_tokens` a step) and
one for every running request's last token, then samples one token per request whose prompt is
in. A request that finishes or is cancelled frees its slot at once; the next occupant overwrites
the slot's cache before reading it, so nothing is cleared.

Every request samples with its own `torch.Generator`, so its tokens depend only on its seed and
its logits: the same alone or in any batch.
"""

import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from inference.checkpoint import load_model
from inference.config import read_checkpoint_info
from inference.model import Grok, GrokConfig, execution_device
from inference.placement import kv_cache_bytes
from inference.quantize import DEFAULT_QUANT
from inference.tokenizer import StreamDecoder, Tokenizer


@dataclass
class SamplingParams:
    temperature: float = 0.8  # 0 = greedy
    top_p: float = 0.95  # 1 = off
    top_k: int = 0  # 0 = off
    seed: int | None = None  # None = a fresh random seed
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        # Checked here, so a bad request fails in add() rather than in the middle of a batch.
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, not {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {self.max_new_tokens}")
        if "" in self.stop:
            raise ValueError("stop strings must not be empty")


@dataclass
class Request:
    id: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class Delta:
    request_id: str
    text: str  # new text since the last Delta: UTF-8 safe, stop strings held back
    finish_reason: str | None  # None while running; "stop" (EOS / stop string), "length", "cancelled"
    prompt_tokens: int
    completion_tokens: int


def filter_logits(logits: Tensor, top_k: Tensor, top_p: Tensor) -> Tensor:
    """logits [B, V] float32, top_k [B] (0 = off), top_p [B] (1 = off) -> logits with -inf outside each row's keep set.

    Top-k first, then nucleus as in the reference: the smallest set of highest logits whose
    probability (renormalised over the top k) reaches top_p. Ties with the last kept logit are kept.
    """
    vocab = logits.shape[-1]
    ranked, _ = logits.sort(dim=-1, descending=True)  # [B, V]
    rank = torch.arange(vocab, device=logits.device)  # [V]
    keep = rank < torch.where(top_k > 0, top_k, vocab)[:, None]  # [B, V]
    probs = ranked.masked_fill(~keep, -float("inf")).softmax(dim=-1)  # [B, V]
    keep &= probs.cumsum(dim=-1) - probs < top_p[:, None]  # the higher-ranked ones have not reached p yet
    threshold = ranked.masked_fill(~keep, float("inf")).amin(dim=-1, keepdim=True)  # [B, 1]
    return logits.masked_fill(logits < threshold, -float("inf"))


def sample(logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor, generators: list[torch.Generator]) -> Tensor:
    """logits [B, V] float32, per-row settings [B] -> token ids [B]; row b draws only from generators[b]."""
    greedy = logits.argmax(dim=-1)  # [B]
    # The reference divides by the temperature first, then filters; 0 is greedy, taken below.
    scaled = logits / temperature.clamp_min(1e-5)[:, None]
    probs = filter_logits(scaled, top_k, top_p).softmax(dim=-1)  # [B, V]
    # argmax(p / q) with q ~ Exp(1) draws from p without a host sync (gpt-fast's trick).
    q = torch.stack([torch.empty_like(row).exponential_(generator=g) for row, g in zip(probs, generators)])
    return torch.where(temperature == 0, greedy, (probs / q).argmax(dim=-1))


@dataclass
class _Sequence:
    request: Request
    slot: int
    generator: torch.Generator
    decoder: StreamDecoder
    tokens: list[int]  # prompt, then the completion
    cached: int = 0  # tokens[:cached] are in the KV cache
    held: str = ""  # text that may be the start of a stop string

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens) - len(self.request.prompt_ids)

    def delta(self, text: str, finish_reason: str | None = None) -> Delta:
        return Delta(self.request.id, text, finish_reason, len(self.request.prompt_ids), self.completion_tokens)


def _split_stop(text: str, stop: tuple[str, ...]) -> tuple[str, str, bool]:
    """-> (text safe to emit, text to hold back, whether a stop string was found).

    At a stop string, the text before it is emitted and the rest dropped; otherwise the longest
    ending of `text` that could begin a stop string is held back.
    """
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    if found:
        return text[: min(found)], "", True
    hold = max((n for s in stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
    return text[: len(text) - hold], text[len(text) - hold :], False


class Engine:
    """A checkpoint loaded for serving: `max_batch` slots of `context_len` tokens (default and
    upper bound: the model's). `device` defaults to cuda when there is one, `dtype` (activations)
    to bfloat16 on cuda and float32 on CPU; with memory budgets the weights are spread over GPUs,
    CPU and disk (inference/placement.py)."""

    prefill_tokens = 1024  # tokens (padding included) of one prefill forward: bounds its activations

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        quant: str = DEFAULT_QUANT,
        dtype: torch.dtype | None = None,
        device: str | None = None,
        max_batch: int = 8,
        context_len: int | None = None,
        max_gpu_memory: str | int | None = None,
        max_cpu_memory: str | int | None = None,
        offload_dir: str | Path | None = None,
        compile: bool = False,
    ) -> None:
        path = Path(checkpoint)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
        tokenizer_file = path / "tokenizer.model"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{tokenizer_file} is missing: copy Grok-1's tokenizer.model into the checkpoint folder")
        info = read_checkpoint_info(path)

        self.config: GrokConfig = GrokConfig.from_dict(info.raw)
        self.context_len = min(context_len or self.config.context_len, self.config.context_len)
        self.model: Grok = load_model(
            path, quant=quant, dtype=dtype, device=device,
            max_gpu_memory=max_gpu_memory, max_cpu_memory=max_cpu_memory, offload_dir=offload_dir,
            kv_bytes=kv_cache_bytes(self.config, max_batch, self.context_len, dtype),
        )
        self.tokenizer = Tokenizer(tokenizer_file)
        self.model_name = info.model_name
        self.is_demo = info.is_demo
        self.device = execution_device(self.model.embed)  # inputs go in and logits come out here
        self.model.setup_cache(max_batch, self.context_len)
        # Decode is the hot path: many small steps. Prefill is a few big ones and stays eager.
        self.decode_model = torch.compile(self.model, dynamic=True) if compile else self.model

        self.slots: list[_Sequence | None] = [None] * max_batch
        self.waiting: deque[Request] = deque()
        self.cancelled: set[str] = set()

    def add(self, request: Request) -> None:
        """Queue a request; it joins the running batch at the next step with a free slot."""
        n = len(request.prompt_ids)
        if n == 0:
            raise ValueError("the prompt is empty")
        if n >= self.context_len:
            raise ValueError(
                f"the prompt has {n} tokens but the context holds {self.context_len}: "
                f"at most {self.context_len - 1} leave room for a reply"
            )
        if not all(0 <= t < self.config.vocab_size for t in request.prompt_ids):
            raise ValueError(f"prompt token ids must be in [0, {self.config.vocab_size})")
        self.waiting.append(request)

    def cancel(self, request_id: str) -> None:
        """The request leaves at the next step, with finish_reason "cancelled"."""
        self.cancelled.add(request_id)

    def has_work(self) -> bool:
        return bool(self.waiting or self.cancelled or any(self.slots))

    def queued(self) -> list[str]:
        return [r.id for r in self.waiting]

    @torch.inference_mode()
    def step(self) -> list[Delta]:
        """Admit waiting requests, run the forwards, sample: a Delta per request with new text or an end."""
        deltas = self._drop_cancelled()
        self._admit()
        running = [s for s in self.slots if s is not None]
        prefilling = [s for s in running if s.cached < len(s.tokens) - 1]  # more than one token to feed
        decoding = [s for s in running if s.cached == len(s.tokens) - 1]
        rows, logits = [], []
        if prefilling:
            chunk = max(1, self.prefill_tokens // len(prefilling))
            logits.append(self._forward(prefilling, min(chunk, max(len(s.tokens) - s.cached for s in prefilling))))
            rows += prefilling
        if decoding:
            logits.append(self._forward(decoding, 1))
            rows += decoding
        ready = [i for i, s in enumerate(rows) if s.cached == len(s.tokens)]  # prompts still being prefilled wait
        if not ready:
            return deltas
        seqs = [rows[i] for i in ready]
        params = [s.request.params for s in seqs]
        tokens = sample(
            torch.cat(logits)[ready],
            torch.tensor([p.temperature for p in params], device=self.device),
            torch.tensor([p.top_k for p in params], device=self.device),
            torch.tensor([p.top_p for p in params], device=self.device),
            [s.generator for s in seqs],
        )
        for s, token in zip(seqs, tokens.tolist()):  # the step's one device -> host sync
            delta = self._append(s, token)
            if delta is not None:
                deltas.append(delta)
        return deltas

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta]:
        """Run one request to its end, yielding its Deltas (other requests in the engine advance too)."""
        request = Request(uuid.uuid4().hex, list(prompt_ids), params)
        self.add(request)
        while True:
            for delta in self.step():
                if delta.request_id == request.id:
                    yield delta
                    if delta.finish_reason is not None:
                        return

    def _drop_cancelled(self) -> list[Delta]:
        deltas = []
        for request in [r for r in self.waiting if r.id in self.cancelled]:
            self.waiting.remove(request)
            deltas.append(Delta(request.id, "", "cancelled", len(request.prompt_ids), 0))
        for s in self.slots:
            if s is not None and s.request.id in self.cancelled:
                self.slots[s.slot] = None
                deltas.append(s.delta("", "cancelled"))
        self.cancelled.clear()
        return deltas

    def _admit(self) -> None:
        while self.waiting and None in self.slots:
            request = self.waiting.popleft()
            slot = self.slots.index(None)
            generator = torch.Generator(self.device)
            if request.params.seed is None:
                generator.seed()
            else:
                generator.manual_seed(request.params.seed)
            self.slots[slot] = _Sequence(request, slot, generator, StreamDecoder(self.tokenizer), list(request.prompt_ids))

    def _forward(self, seqs: list[_Sequence], t: int) -> Tensor:
        """Feed each sequence up to t of its uncached tokens, right-padded -> logits [n, V] at each row's last fed token."""
        n = len(seqs)
        tokens = torch.full((n, t), self.config.pad_token, dtype=torch.long)  # [n, t]
        start = torch.tensor([s.cached for s in seqs])  # [n]
        last = []
        for i, s in enumerate(seqs):
            fed = s.tokens[s.cached : s.cached + t]
            tokens[i, : len(fed)] = torch.tensor(fed)
            s.cached += len(fed)
            last.append(len(fed) - 1)
        # Padding continues its row's positions (as Grok.forward asks), capped at the last cache
        # cell: no real token is ever fed there (a sequence ends when it reaches context_len tokens).
        input_pos = (start[:, None] + torch.arange(t)).clamp(max=self.context_len - 1)  # [n, t]
        slots = torch.tensor([s.slot for s in seqs])  # [n]
        model = self.decode_model if t == 1 else self.model
        at = torch.tensor(last, device=self.device)  # [n]
        return model(tokens.to(self.device), input_pos.to(self.device), slots.to(self.device), at)[:, 0]  # [n, V]

    def _append(self, s: _Sequence, token: int) -> Delta | None:
        """Record a sampled token; the sequence's Delta if it has new text or ended (its slot then freed)."""
        s.tokens.append(token)
        params = s.request.params
        eos = token == self.config.eos_token
        full = s.completion_tokens >= params.max_new_tokens or len(s.tokens) >= self.context_len
        text = s.held + ("" if eos else s.decoder.push(token))
        if eos or full:
            text += s.decoder.flush()
        text, s.held, stopped = _split_stop(text, params.stop)
        if not (eos or full or stopped):
            return s.delta(text) if text else None
        if not stopped:
            text += s.held  # the end: no stop string can complete now
        self.slots[s.slot] = None
        return s.delta(text, "stop" if eos or stopped else "length")
