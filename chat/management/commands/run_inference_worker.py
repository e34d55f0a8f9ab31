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
        if settings.GROK_ENGINE == "openai":
            log.info(
                "worker ready: %s (demo: %s), engine server %s, %d requests in flight, %d tokens of context",
                engine.model_name, engine.is_demo, engine.url, engine.max_in_flight, engine.context_len,
            )
        else:
            self._log_local_engine(engine)
        with event_loop_thread() as loop:
            serve(engine, Publisher(loop), stop)
        log.info("worker stopped")

    def _log_local_engine(self, engine) -> None:
        """The model loaded here: its precision, its cache and where its layers went."""
        dtype, slots, rows = engine.model.embed.weight.dtype, len(engine.slots), len(engine.rows)  # the activation dtype
        log.info(
            "worker ready: %s (demo: %s), %s, %s activations, %d slots + %d prefix-cache rows of %d tokens,"
            " KV cache %.2f GB",
            engine.model_name, engine.is_demo, settings.GROK_QUANT, str(dtype).removeprefix("torch."),
            slots, rows - slots, engine.context_len, kv_cache_bytes(engine.config, rows, engine.context_len, dtype) / 1e9,
        )
        log.info("placement: %s", engine.model.placement)
