"""`RemoteEngine`: an engine server (SGLang, vLLM, llama.cpp's llama-server) driven through the
OpenAI-compatible completions protocol, behind the interface the serving loop uses
(add / cancel / step / has_work / queued, tokenizer, context_len, model_name, is_demo).

Each request streams `POST /v1/completions` on a thread of its own, at most `max_in_flight` at
once (the rest wait here, first come first served, and are told their place). The prompt goes as
token ids, tokenised here with the checkpoint folder's tokenizer.model (the one the server's model
was exported with), so the context budget counted by `chat.prompts` is exact and a reply taken
over from a dead worker continues from its saved text's tokens. Token counts come from the
server's `usage` (`stream_options.include_usage`). Each request's `cache_salt` (an HMAC of its
user: chat/replies.py) goes as `cache_salt`, vLLM's field: its prefix cache reuses blocks only
under the same salt, so one user's conversation cannot be timed by another (llama-server ignores
the field, tested); `cache_salt=False` for a server that refuses fields it does not know.

Stopping a reply ends its stream: the thread leaves at the next chunk, which closes the
connection, and the server aborts the generation (llama-server does, tested; vLLM and SGLang
are said to abort a request whose client has gone, untested here).

The server away: a request that cannot connect (or gets 503, a server loading its model) retries
every RECONNECT_WAIT seconds for up to `timeout`, so a restarting server is waited for;
`queued()` lists it meanwhile, so its page is told it waits. Then it fails with a message saying
so. A stream cut mid-reply fails that reply, its text kept. A server silent for `timeout` seconds
fails the reply too. Nothing is kept between requests but the connection pool, so once the server
is back the next request simply works.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from inference.config import read_checkpoint_info
from inference.engine import Delta, Request, check_prompt_fits
from inference.model import GrokConfig
from inference.tokenizer import Tokenizer

RECONNECT_WAIT = 1.0  # seconds between attempts to reach a server that refuses connections
STEP_WAIT = 0.02  # how long step() waits for the first event: the loop must not spin meanwhile
CONNECT_TIMEOUT = 5.0


@dataclass
class _Stream:
    request: Request
    cancelled: threading.Event = field(default_factory=threading.Event)
    answered: bool = False  # the server took it (200): till then it waits, for the server to come back
    prompt_tokens: int = 0  # as sent, until `usage` says what the server counted
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the server had cached (`usage.prompt_tokens_details`)


class RemoteEngine:
    """Requests served by the engine server at `url` (e.g. http://host:8000; /v1 is added)."""

    def __init__(
        self,
        url: str,
        checkpoint: str | Path,
        *,
        model: str = "",
        api_key: str = "",
        max_in_flight: int = 16,
        timeout: float = 300.0,
        context_len: int | None = None,
        cache_salt: bool = True,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the engine URL must start with http:// or https://, not {url!r}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, not {max_in_flight}")
        path = Path(checkpoint)
        tokenizer_file = path / "tokenizer.model"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{tokenizer_file} is missing: the worker tokenises prompts with the model's tokenizer.model")
        info = read_checkpoint_info(path)
        self.config = GrokConfig.from_dict(info.raw)
        self.tokenizer = Tokenizer(tokenizer_file)
        self.context_len = min(context_len or self.config.context_len, self.config.context_len)
        self.model_name = info.model_name
        self.is_demo = info.is_demo
        self.url = url.rstrip("/")
        self.model = model
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.cache_salt = cache_salt
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            base_url=self.url, headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
            limits=httpx.Limits(max_connections=max_in_flight),
        )
        self.waiting: deque[Request] = deque()
        self.running: dict[str, _Stream] = {}
        self.cancelled: set[str] = set()
        self.events: queue.Queue[Delta] = queue.Queue()  # from the streaming threads

    def add(self, request: Request) -> None:
        check_prompt_fits(request, self.context_len)
        self.waiting.append(request)

    def cancel(self, request_id: str) -> None:
        self.cancelled.add(request_id)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.cancelled)

    def queued(self) -> list[str]:
        """Waiting here for a free stream, then those waiting for the server to answer: their
        pages are told they wait in line while the server is away."""
        return [r.id for r in self.waiting] + [i for i, s in self.running.items() if not s.answered]

    def step(self) -> list[Delta]:
        """Start what fits, then the text the streams brought (waiting briefly for the first)."""
        deltas = self._drop_cancelled()
        while self.waiting and len(self.running) < self.max_in_flight:
            request = self.waiting.popleft()
            stream = _Stream(request, prompt_tokens=len(request.prompt_ids))
            self.running[stream.request.id] = stream
            threading.Thread(target=self._stream, args=(stream,), name=f"engine-{stream.request.id}", daemon=True).start()
        try:
            events = [self.events.get(timeout=0 if deltas else STEP_WAIT)]
        except queue.Empty:
            return deltas
        while not self.events.empty():
            events.append(self.events.get_nowait())
        for delta in events:
            if delta.request_id not in self.running:
                continue  # cancelled here already: its thread's last words
            if delta.finish_reason is not None:
                del self.running[delta.request_id]
            deltas.append(delta)
        return deltas

    def _drop_cancelled(self) -> list[Delta]:
        deltas = []
        for request in [r for r in self.waiting if r.id in self.cancelled]:
            self.waiting.remove(request)
            deltas.append(Delta(request.id, "", "cancelled", len(request.prompt_ids), 0))
        for request_id in self.cancelled & self.running.keys():
            stream = self.running.pop(request_id)
            stream.cancelled.set()  # its thread closes the connection at the next chunk
            deltas.append(Delta(request_id, "", "cancelled", len(stream.request.prompt_ids), stream.completion_tokens))
        self.cancelled.clear()
        return deltas

    # -- a streaming thread ---------------------------------------------------------------------

    def _body(self, request: Request) -> dict:
        params = request.params
        body = {
            "prompt": request.prompt_ids,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.model:
            body["model"] = self.model
        if params.top_k:  # off is spelt differently by each server (0, -1): leave it to its default
            body["top_k"] = params.top_k
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if self.cache_salt and request.cache_salt:  # vLLM wants a non-empty string or none
            body["cache_salt"] = request.cache_salt
        return body

    def _stream(self, stream: _Stream) -> None:
        """Stream one request into `events`; every way out but a cancel ends with a final Delta."""
        def put(text: str, finish_reason: str | None = None, error: str = "") -> None:
            self.events.put(Delta(
                stream.request.id, text, finish_reason, stream.prompt_tokens, stream.completion_tokens,
                cached_tokens=stream.cached_tokens, error=error,
            ))

        give_up_at = time.monotonic() + self.timeout
        while True:
            try:
                finish_reason = self._read(stream, put)
            except (httpx.ConnectError, httpx.ConnectTimeout, _Unavailable) as exc:  # away, or loading its model
                if stream.cancelled.is_set():
                    return
                if time.monotonic() < give_up_at:
                    time.sleep(RECONNECT_WAIT)
                    continue
                put("", "error", f"The model server at {self.url} could not be reached for {self.timeout:.0f} s ({exc}).")
                return
            except httpx.TimeoutException:
                put("", "error", f"The model server at {self.url} sent nothing for {self.timeout:.0f} s.")
                return
            except (httpx.HTTPError, ValueError) as exc:  # ValueError: a chunk that is not JSON
                if not stream.cancelled.is_set():
                    put("", "error", f"The model server at {self.url} went away in the middle of the reply ({exc}).")
                return
            except _ServerError as exc:
                put("", "error", str(exc))
                return
            if stream.cancelled.is_set():
                return
            if finish_reason is None:
                put("", "error", f"The model server at {self.url} ended the reply without finishing it.")
            else:
                put("", finish_reason)
            return

    def _read(self, stream: _Stream, put: Callable[[str], None]) -> str | None:
        """The server-sent events of one request -> its finish reason (None: the stream ended first)."""
        finish_reason = None
        with self.client.stream("POST", "/v1/completions", json=self._body(stream.request)) as response:
            if response.status_code == 503:
                raise _Unavailable("503 Service Unavailable")
            if response.status_code != 200:
                response.read()
                raise _ServerError(f"The model server refused the request ({response.status_code}): {_message(response)}")
            stream.answered = True
            for line in response.iter_lines():
                if stream.cancelled.is_set():
                    return None  # leaving closes the connection: the server stops generating
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise _ServerError(f"The model server failed: {chunk['error'].get('message', chunk['error'])}")
                usage = chunk.get("usage")
                if usage:
                    stream.prompt_tokens = usage["prompt_tokens"]
                    stream.completion_tokens = usage["completion_tokens"]
                    stream.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                for choice in chunk.get("choices") or []:
                    text = choice.get("text") or ""
                    if text and not usage:
                        stream.completion_tokens += 1  # a chunk a token, until `usage` says exactly
                    finish_reason = choice.get("finish_reason") or finish_reason
                    if text:
                        put(text)
        return finish_reason


class _Unavailable(Exception):
    """The server answered 503: it is starting (loading its model) or overloaded; try again."""


class _ServerError(Exception):
    """The server answered, with an error: the request fails with this message."""


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return error.get("message", str(error)) if isinstance(error, dict) else str(error)
    except ValueError:
        return response.text[:200]
