"""Running the worker: the engine the settings describe, the serving loop over a `Bridge`, the
heartbeat that keeps its jobs from being claimed, and the embedded mode (the worker on a thread
of the web process, with no `REDIS_URL`).

`python manage.py run_inference_worker` runs `serve` in a process of its own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import close_old_connections, connections

from chat import jobs, metrics, replies
from chat.bridge import Bridge
from chat.publisher import Publish, Publisher
from inference.loop import IDLE_WAIT, ServingLoop

if TYPE_CHECKING:  # imported where used: the web process loads torch only when it runs a worker
    from inference.engine import Engine
    from inference.remote import RemoteEngine

log = logging.getLogger(__name__)


def load_engine() -> Engine | RemoteEngine:
    """With GROK_ENGINE=openai, the engine server the GROK_ENGINE_* settings describe (prompts
    tokenised with GROK_CHECKPOINT's tokenizer.model); else the model loaded here, as the
    settings describe it (GROK_CHECKPOINT, GROK_QUANT, GROK_DEVICE, GROK_DTYPE,
    GROK_MAX_BATCH, GROK_PREFIX_CACHE, GROK_CONTEXT_LEN, the memory budgets and GROK_OFFLOAD,
    GROK_CPU_THREADS)."""
    if settings.GROK_ENGINE == "openai":
        from inference.remote import RemoteEngine

        if not settings.GROK_ENGINE_URL:
            raise ValueError("GROK_ENGINE is openai but GROK_ENGINE_URL is not set")
        return RemoteEngine(
            settings.GROK_ENGINE_URL,
            settings.GROK_CHECKPOINT,
            model=settings.GROK_ENGINE_MODEL,
            api_key=settings.GROK_ENGINE_API_KEY,
            max_in_flight=settings.GROK_ENGINE_MAX_IN_FLIGHT,
            timeout=settings.GROK_ENGINE_TIMEOUT,
            context_len=settings.GROK_CONTEXT_LEN or None,
            cache_salt=settings.GROK_ENGINE_CACHE_SALT,
        )
    import torch

    from inference.engine import Engine
    from inference.model import DTYPES
    from inference.placement import OFFLOAD_MODES

    if settings.GROK_DTYPE and settings.GROK_DTYPE not in DTYPES:
        raise ValueError(f"GROK_DTYPE is {settings.GROK_DTYPE!r}; choose one of {', '.join(DTYPES)}")
    if settings.GROK_OFFLOAD not in OFFLOAD_MODES:
        raise ValueError(f"GROK_OFFLOAD is {settings.GROK_OFFLOAD!r}; choose one of {', '.join(OFFLOAD_MODES)}")
    if settings.GROK_CPU_THREADS < 0:
        raise ValueError(f"GROK_CPU_THREADS is {settings.GROK_CPU_THREADS}; give a number of threads, or 0 for torch's default")
    if settings.GROK_CPU_THREADS:
        torch.set_num_threads(settings.GROK_CPU_THREADS)
    return Engine(
        settings.GROK_CHECKPOINT,
        quant=settings.GROK_QUANT,
        device=settings.GROK_DEVICE or None,
        dtype=DTYPES.get(settings.GROK_DTYPE),
        max_batch=settings.GROK_MAX_BATCH,
        prefix_cache=settings.GROK_PREFIX_CACHE,
        context_len=settings.GROK_CONTEXT_LEN or None,
        max_gpu_memory=settings.GROK_MAX_GPU_MEMORY or None,
        max_cpu_memory=settings.GROK_MAX_CPU_MEMORY or None,
        offload_dir=settings.GROK_OFFLOAD_DIR or None,
        offload=settings.GROK_OFFLOAD,
    )


def serve(
    engine: Engine | RemoteEngine, publish: Publish, stop: threading.Event, *, max_batch: int | None = None,
    queue: jobs.JobQueue | None = None,
) -> None:
    """Write replies from `queue` (default: this process's) until `stop` is set, then drain."""
    remote = settings.GROK_ENGINE == "openai"
    max_batch = max_batch or (settings.GROK_ENGINE_MAX_IN_FLIGHT if remote else settings.GROK_MAX_BATCH)
    bridge = Bridge(engine, queue or jobs.get_queue(), publish)
    beating = threading.Event()
    heartbeat = threading.Thread(
        target=_heartbeat, args=(bridge, beating), name="grokweb-heartbeat", daemon=True
    )
    heartbeat.start()
    try:
        # Twice the batch in hand: a freed slot refills at once and the waiting learn their place.
        ServingLoop(metrics.Metered(engine, bridge.worker), bridge, bridge, max_jobs=2 * max_batch).run(
            stop, drain_timeout=settings.GROK_WORKER_DRAIN_SECONDS
        )
    finally:
        beating.set()
        heartbeat.join(timeout=15)  # a beat in flight ends within Redis's socket timeout
        connections.close_all()


def _heartbeat(bridge: Bridge, stop: threading.Event) -> None:
    """Touch the jobs in hand every third of the claim time. A thread of its own: a step that
    takes long (a big model's prefill) must not make a live worker look dead."""
    while True:  # a first beat at once: /readyz counts this worker from its start
        try:
            bridge.queue.heartbeat(list(bridge.jobs.copy().values()))  # copy(): atomic
        except Exception as exc:  # Redis away: the next beat tries again
            log.warning("job heartbeat failed: %s", exc)
        if stop.wait(settings.GROK_JOB_CLAIM_SECONDS / 3):
            return


# -- embedded mode --------------------------------------------------------------------------------

_embedded_lock = threading.Lock()
_embedded_started = False


def start_embedded_worker(loop: asyncio.AbstractEventLoop) -> None:
    """Start the worker thread of the web process once, sending through the server's `loop`."""
    global _embedded_started
    with _embedded_lock:
        if _embedded_started:
            return
        _embedded_started = True
    threading.Thread(
        target=_run_embedded, args=(Publisher(loop),), name="grokweb-worker", daemon=True
    ).start()


def _run_embedded(publish: Publish) -> None:
    try:
        engine = load_engine()
    except Exception as exc:
        log.exception("the embedded worker could not load the model")
        _refuse_jobs(publish, f"The model could not be loaded: {exc}")
        return
    try:
        publish(replies.do_recover_replies(jobs.get_queue()))
    except Exception:
        log.exception("recovering the replies of the last run failed")
    serve(engine, publish, threading.Event())  # a daemon thread: it ends with the process


def _refuse_jobs(publish: Publish, error: str) -> None:
    """Without a model, fail each reply as it is queued rather than leave it waiting forever."""
    queue = jobs.get_queue()
    while True:
        for job in queue.take(16, IDLE_WAIT):
            close_old_connections()
            publish(replies.do_fail_reply(job.message_id, error))
            queue.ack(job)
