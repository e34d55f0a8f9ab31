"""`python manage.py run_inference_worker`: one inference worker process, until SIGTERM/SIGINT."""

import logging
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from chat.publisher import Publisher, event_loop_thread
from chat.serving import load_engine, serve
from inference.placement import kv_cache_bytes

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Load the model (GROK_* settings) and write queued replies until SIGTERM or SIGINT."

    def handle(self, *args, **options) -> None:
        stop = threading.Event()
        # The first signal asks for a clean end: replies in hand get GROK_WORKER_DRAIN_SECONDS to
        # finish and are all saved and acknowledged; queued jobs stay for the other workers.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        engine = load_engine()
        dtype, slots = engine.model.embed.weight.dtype, len(engine.slots)  # the activation dtype
        log.info(
            "worker ready: %s (demo: %s), %s, %s activations, %d slots of %d tokens, KV cache %.2f GB",
            engine.model_name, engine.is_demo, settings.GROK_QUANT, str(dtype).removeprefix("torch."),
            slots, engine.context_len, kv_cache_bytes(engine.config, slots, engine.context_len, dtype) / 1e9,
        )
        with event_loop_thread() as loop:
            serve(engine, Publisher(loop), stop)
        log.info("worker stopped")
