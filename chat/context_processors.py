"""What every page may show about the model being served."""

from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest

from inference.config import DEFAULT_MODEL_NAME, CheckpointInfo, read_checkpoint_info


@lru_cache
def model_info(checkpoint: str) -> CheckpointInfo:
    """The checkpoint's name and demo flag, read once per path: they never change while the
    server runs. A broken config.json is the worker's to report; pages then say "Grok-1"."""
    try:
        return read_checkpoint_info(checkpoint)
    except (OSError, ValueError):
        return CheckpointInfo(DEFAULT_MODEL_NAME, False, {})


def model(request: HttpRequest) -> dict:
    """`model_name`, and `is_demo`, which pages show as a warning that replies are noise."""
    info = model_info(settings.GROK_CHECKPOINT)
    return {"model_name": info.model_name, "is_demo": info.is_demo}
