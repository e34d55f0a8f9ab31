"""What every page may show about the model being served."""

import json
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest


@lru_cache
def model_info(checkpoint: str) -> tuple[str, bool]:
    """(model name, is it the noise-only demo model) from the checkpoint's config.json.

    Read once per checkpoint path: it never changes while the server runs. A released
    checkpoint has no config.json and is the real Grok-1.
    """
    try:
        config = json.loads((Path(checkpoint) / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    return str(config.get("model_name") or "Grok-1"), bool(config.get("demo", False))


def model(request: HttpRequest) -> dict:
    """`model_name`, and `is_demo`, which pages show as a warning that replies are noise."""
    model_name, is_demo = model_info(settings.GROK_CHECKPOINT)
    return {"model_name": model_name, "is_demo": is_demo}
