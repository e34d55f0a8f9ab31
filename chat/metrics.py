"""Prometheus metrics, named as vLLM's and SGLang's with a `grokweb_` prefix.

Several processes: with PROMETHEUS_MULTIPROC_DIR set (the same empty folder for every Daphne
process and worker of a host, emptied before they start), prometheus-client writes each
process's values there and any Daphne's `/metrics` adds them up (`exposition()`); without it a
process's `/metrics` shows its own, which covers the embedded mode (the worker is a thread of
Daphne). The worker's metrics carry `model` and `worker` labels (the worker is its Redis
consumer name, host-pid, or "embedded").

Replies are counted by the worker as they end (`observe_finished`, from the serving loop's
updates, so failures count too); steps, the replies running and waiting, the KV cache use and the
prefix cache's requests, hits and evictions by `Metered`, a thin wrapper of the engine the loop
drives.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from inference.loop import Update

LABELS = ("model", "worker")
# Seconds, up to 20 minutes: an offloaded Grok-1 takes minutes for a long reply.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 240, 480, 960, 1200)
TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

TIME_TO_FIRST_TOKEN = Histogram(
    "grokweb_time_to_first_token_seconds", "From a reply's start on a worker to its first text.", LABELS,
    buckets=LATENCY_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "grokweb_inter_token_latency_seconds", "A finished reply's mean time between tokens (one per reply).", LABELS,
    buckets=TOKEN_GAP_BUCKETS,
)
E2E_LATENCY = Histogram(
    "grokweb_e2e_request_latency_seconds", "From a reply's start on a worker to its end.", LABELS,
    buckets=LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter("grokweb_prompt_tokens", "Prompt tokens of finished replies.", LABELS)
GENERATION_TOKENS = Counter("grokweb_generation_tokens", "Tokens written by finished replies.", LABELS)
CACHED_TOKENS = Counter("grokweb_cached_tokens", "Prompt tokens whose KV came from a prefix cache.", LABELS)
REQUEST_SUCCESS = Counter(
    "grokweb_request_success", "Replies ended, by finish reason (stop, length, cancelled, error).",
    (*LABELS, "finished_reason"),
)
ENGINE_STEPS = Counter("grokweb_engine_steps", "Engine steps (rate(): steps per second).", LABELS)
# The local engine's prefix cache (Engine.stats): the hit rate is rate(hits) / rate(requests).
PREFIX_CACHE = {
    "requests": Counter("grokweb_prefix_cache_requests", "Requests admitted by the local engine.", LABELS),
    "hits": Counter("grokweb_prefix_cache_hits", "Requests admitted with some of the prompt cached.", LABELS),
    "evictions": Counter("grokweb_prefix_cache_evictions", "Cached prefixes overwritten by other requests.", LABELS),
}
# Gauges: each process's own value, summed over the live ones in multiprocess mode.
RUNNING = Gauge("grokweb_num_requests_running", "Replies being written.", LABELS, multiprocess_mode="livesum")
WAITING = Gauge(
    "grokweb_num_requests_waiting", "Replies taken by a worker and waiting for a free slot.", LABELS,
    multiprocess_mode="livesum",
)
KV_CACHE_USAGE = Gauge(
    "grokweb_kv_cache_usage_perc", "Share of the KV cache the running replies hold (local engine; 0 to 1).", LABELS,
    multiprocess_mode="livemax",
)
OPEN_WEBSOCKETS = Gauge("grokweb_open_websockets", "Chat websockets open.", multiprocess_mode="livesum")


def exposition(queue_length: int | None) -> bytes:
    """What `/metrics` shows: every process's values in multiprocess mode, else this process's;
    and the shared queue's length, read at the scrape (None: unknown, left out)."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    text = generate_latest(registry)
    if queue_length is not None:
        queue = CollectorRegistry()
        queue.register(_Read(GaugeMetricFamily(
            "grokweb_queue_length", "Replies in the Redis queue (shared and routed): waiting for a worker or being written.",
            value=queue_length,
        )))
        text += generate_latest(queue)
    return text


class _Read:
    """A collector of values read at the scrape (not kept by this process)."""

    def __init__(self, *families: GaugeMetricFamily) -> None:
        self.families = families

    def collect(self):
        return self.families


def observe_finished(updates: list[Update], model: str, worker: str) -> None:
    """Count the replies that ended among these updates."""
    for update in updates:
        if update.finish_reason is None:
            continue
        labels = {"model": model, "worker": worker}
        REQUEST_SUCCESS.labels(**labels, finished_reason="error" if update.error else update.finish_reason).inc()
        PROMPT_TOKENS.labels(**labels).inc(update.prompt_tokens)
        GENERATION_TOKENS.labels(**labels).inc(update.completion_tokens)
        if update.duration is not None:
            E2E_LATENCY.labels(**labels).observe(update.duration)
        if update.time_to_first_token is not None:
            TIME_TO_FIRST_TOKEN.labels(**labels).observe(update.time_to_first_token)
            if update.duration is not None and update.completion_tokens > 1:
                gap = (update.duration - update.time_to_first_token) / (update.completion_tokens - 1)
                INTER_TOKEN_LATENCY.labels(**labels).observe(gap)


class Metered:
    """The engine the serving loop drives, counting its steps and sampling what it holds after
    each; everything else is the engine's own."""

    def __init__(self, engine, worker: str) -> None:
        self._engine = engine
        labels = {"model": engine.model_name, "worker": worker}
        # Bound once: `step` runs for every token, and `labels()` looks each child up again.
        self._steps, self._cached = ENGINE_STEPS.labels(**labels), CACHED_TOKENS.labels(**labels)
        self._waiting, self._running = WAITING.labels(**labels), RUNNING.labels(**labels)
        self._kv_cache_usage = KV_CACHE_USAGE.labels(**labels)
        self._prefix_cache = {name: counter.labels(**labels) for name, counter in PREFIX_CACHE.items()}
        self._counted = dict.fromkeys(PREFIX_CACHE, 0)  # of Engine.stats, which counts since its start

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def step(self) -> list:
        deltas = self._engine.step()
        self._steps.inc()
        for delta in deltas:
            if delta.finish_reason is not None and delta.cached_tokens:
                self._cached.inc(delta.cached_tokens)
        self._waiting.set(len(self._engine.queued()))
        slots = getattr(self._engine, "slots", None)
        if slots is None:  # an engine server: its own metrics tell its cache
            self._running.set(len(self._engine.running))
        else:
            for name, counter in self._prefix_cache.items():
                total = getattr(self._engine.stats, name)
                counter.inc(total - self._counted[name])
                self._counted[name] = total
            running = [s for s in slots if s is not None]
            self._running.set(len(running))
            held = sum(len(s.tokens) for s in running)
            self._kv_cache_usage.set(held / (len(slots) * self._engine.context_len))
        return deltas
