"""Continuous batching over Grok's static KV cache, with sampling on the device.

The engine owns `max_batch` cache slots. A request waits in a first-come-first-served queue until
a slot is free, then joins the running batch at the next `step()`: each step runs one forward
for the prompts being prefilled (right-padded, in chunks of at most `prefill_tokens` a step) and
one for every running request's last token, then samples one token per request whose prompt is
in. A request that finishes or is cancelled frees its slot at once.

Prefix reuse: the KV cache has `max_batch + prefix_cache` rows, and each row remembers the token
ids whose keys and values it holds (a running request's, or a finished one's prompt and reply).
A request that joins starts from the row whose tokens share the longest prefix with its prompt:
it extends that row in place when the whole row is its prefix (the next turn of a conversation),
else the prefix is copied into a free row (a persona's system prompt shared by many
conversations), and only the rest of the prompt is prefilled. Keys and values at a position
depend only on the tokens up to it, so the reply is the one a full prefill gives. Only exactly
equal token ids are reused, and across different `cache_salt`s only the request's
`public_prefix` (the persona's text): one user cannot reuse, nor time, what another wrote. Free
rows are overwritten least recently used first; the cache never grows past its rows. A row's
cells past its tokens are overwritten before anyone reads them, so nothing is cleared.

Every request samples with its own `torch.Generator`, so its tokens depend only on its seed and
its logits: the same alone or in any batch.
"""

import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from inference.checkpoint import load_model
from inference.config import read_checkpoint_info
from inference.model import Grok, GrokConfig, execution_device
from inference.experts import Costs
from inference.placement import DEFAULT_OFFLOAD, kv_cache_bytes
from inference.quantize import DEFAULT_QUANT, default_dtype
from inference.tokenizer import StreamDecoder, Tokenizer, common_prefix


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
    cache_salt: str = ""  # whose text this is (a user): cached K/V is reused in full only under the same salt ...
    public_prefix: int = 0  # ... and for this many leading prompt tokens under any (the persona's shared text)


@dataclass
class Delta:
    request_id: str
    text: str  # new text since the last Delta: UTF-8 safe, stop strings held back
    finish_reason: str | None  # None while running; "stop" (EOS / stop string), "length", "cancelled"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose K/V came from the prefix cache, not from this prefill
    error: str = ""  # with finish_reason "error": why this request failed alone (an engine server's answer)


@dataclass
class CacheStats:
    """What the prefix cache saved, since the engine started."""

    requests: int = 0  # admitted
    hits: int = 0  # admitted with some of the prompt cached
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens: not prefilled
    evictions: int = 0  # rows holding tokens overwritten by another request

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def token_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass
class _Row:
    """What one KV cache row holds while no request runs in it."""

    tokens: list[int] = field(default_factory=list)  # K/V at positions [:len(tokens)] are these tokens'
    salt: str = ""
    public: int = 0  # tokens[:public] may be reused under any salt
    used_at: int = -1  # when a request last left it, for LRU eviction


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
    slot: int  # in the batch
    row: int  # in the KV cache
    generator: torch.Generator
    decoder: StreamDecoder
    tokens: list[int]  # prompt, then the completion
    cached: int = 0  # tokens[:cached] are in the KV cache
    reused: int = 0  # of those, taken from the prefix cache
    held: str = ""  # text that may be the start of a stop string

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens) - len(self.request.prompt_ids)

    def delta(self, text: str, finish_reason: str | None = None) -> Delta:
        prompt = len(self.request.prompt_ids)
        return Delta(self.request.id, text, finish_reason, prompt, self.completion_tokens, self.reused)

    def cached_row(self) -> _Row:
        return _Row(self.tokens[: self.cached], self.request.cache_salt, self.request.public_prefix)


def _reusable(row: _Row, request: Request) -> int:
    """How many of the request's prompt tokens `row` holds and may give it; the last prompt token is
    always fed again, as its logits start the reply."""
    n = common_prefix(row.tokens, request.prompt_ids[:-1])
    return n if row.salt == request.cache_salt else min(n, row.public, request.public_prefix)


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


def check_prompt_fits(request: Request, context_len: int) -> None:
    """ValueError unless the request's prompt is non-empty and leaves room for a reply (any
    engine: the serving loop fails such a request alone)."""
    n = len(request.prompt_ids)
    if n == 0:
        raise ValueError("the prompt is empty")
    if n >= context_len:
        raise ValueError(
            f"the prompt has {n} tokens but the context holds {context_len}: "
            f"at most {context_len - 1} leave room for a reply"
        )


class Engine:
    """A checkpoint loaded for serving: `max_batch` slots of `context_len` tokens (default and
    upper bound: the model's), and `prefix_cache` more KV cache rows that keep finished requests'
    tokens for reuse (0 = no prefix reuse; the worker's default is GROK_PREFIX_CACHE's).
    `device` defaults to cuda when there is one, `dtype` (activations) to bfloat16 (float32 on CPU
    for a model as small as the tiny demo: quantize.default_dtype); with memory budgets the
    weights are spread over GPUs,
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
        prefix_cache: int = 0,
        context_len: int | None = None,
        max_gpu_memory: str | int | None = None,
        max_cpu_memory: str | int | None = None,
        offload_dir: str | Path | None = None,
        offload: str = DEFAULT_OFFLOAD,
        costs: Costs = Costs(),
        compile: bool = False,
    ) -> None:
        if prefix_cache < 0:
            raise ValueError(f"prefix_cache must be >= 0, not {prefix_cache}")
        path = Path(checkpoint)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer_file = path / "tokenizer.model"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{tokenizer_file} is missing: copy Grok-1's tokenizer.model into the checkpoint folder")
        info = read_checkpoint_info(path)

        self.config: GrokConfig = GrokConfig.from_dict(info.raw)
        dtype = dtype or default_dtype(self.config, device)
        self.context_len = min(context_len or self.config.context_len, self.config.context_len)
        self.model: Grok = load_model(
            path, quant=quant, dtype=dtype, device=device,
            max_gpu_memory=max_gpu_memory, max_cpu_memory=max_cpu_memory, offload_dir=offload_dir,
            offload=offload, costs=costs,
            kv_bytes=kv_cache_bytes(self.config, max_batch + prefix_cache, self.context_len, dtype),
        )
        self.tokenizer = Tokenizer(tokenizer_file)
        self.model_name = info.model_name
        self.is_demo = info.is_demo
        self.device = execution_device(self.model.embed)  # inputs go in and logits come out here
        self.prefix_cache = prefix_cache
        self.model.setup_cache(max_batch + prefix_cache, self.context_len)
        # Decode is the hot path: many small steps. Prefill is a few big ones and stays eager.
        self.decode_model = torch.compile(self.model, dynamic=True) if compile else self.model

        self.slots: list[_Sequence | None] = [None] * max_batch
        self.waiting: deque[Request] = deque()
        self.cancelled: set[str] = set()
        self.rows = [_Row() for _ in range(max_batch + prefix_cache)]  # free rows' contents
        self.stats = CacheStats()
        self._clock = 0  # counts requests leaving, for LRU

    def add(self, request: Request) -> None:
        """Queue a request; it joins the running batch at the next step with a free slot."""
        check_prompt_fits(request, self.context_len)
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
                self._leave(s)
                deltas.append(s.delta("", "cancelled"))
        self.cancelled.clear()
        return deltas

    def _admit(self) -> None:
        while self.waiting and None in self.slots:
            request = self.waiting.popleft()
            slot = self.slots.index(None)
            row, reused = self._place(request)
            generator = torch.Generator(self.device)
            if request.params.seed is None:
                generator.seed()
            else:
                generator.manual_seed(request.params.seed)
            self.slots[slot] = _Sequence(
                request, slot, row, generator, StreamDecoder(self.tokenizer), list(request.prompt_ids), reused, reused
            )
            self.stats.requests += 1
            self.stats.hits += reused > 0
            self.stats.prompt_tokens += len(request.prompt_ids)
            self.stats.cached_tokens += reused

    def _place(self, request: Request) -> tuple[int, int]:
        """A cache row for the request, and how many of its prompt tokens' K/V the row already holds.

        The row with the longest reusable prefix, running or free, is the source. A free source
        that the prompt wholly extends is taken as it is; otherwise the prefix is copied into the
        least recently used free row (the source itself when it is the only free one)."""
        running = {s.row: s for s in self.slots if s is not None}
        free = [r for r in range(len(self.rows)) if r not in running]
        if not self.prefix_cache:
            return free[0], 0
        held = [running[r].cached_row() if r in running else self.rows[r] for r in range(len(self.rows))]
        reused, source = max((_reusable(row, request), r) for r, row in enumerate(held))
        if source in free and reused == len(held[source].tokens):
            return source, reused
        target = min((r for r in free if r != source), key=lambda r: self.rows[r].used_at, default=source)
        self.stats.evictions += target != source and bool(self.rows[target].tokens)
        if reused and target != source:
            self.model.copy_cache(source, target, reused)
        return target, reused

    def _leave(self, s: _Sequence) -> None:
        """Free the sequence's slot; its row keeps what it computed, for the next request to reuse."""
        self.slots[s.slot] = None
        self._clock += 1
        self.rows[s.row] = s.cached_row()
        self.rows[s.row].used_at = self._clock

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
        slots = torch.tensor([s.row for s in seqs])  # [n]
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
        self._leave(s)
        return s.delta(text, "stop" if eos or stopped else "length")
