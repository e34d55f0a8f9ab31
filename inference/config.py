"""A checkpoint folder's config.json, read without torch or numpy.

The web tier shows the model's name and its demo flag on every page; it imports this module,
not the model, so a page never pays for importing torch.
"""

import json
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.json"
# A released checkpoint has no config.json and converting one keeps xAI's keys, which carry no
# name: a folder without `model_name` holds the real Grok-1.
DEFAULT_MODEL_NAME = "Grok-1"


@dataclass(frozen=True)
class CheckpointInfo:
    model_name: str
    is_demo: bool  # the seeded random weights of `make-tiny`: replies are noise
    raw: dict  # config.json as parsed, {} without one; GrokConfig.from_dict reads the model's shape from it


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """config.json of the checkpoint folder `path`; a folder without one is a released Grok-1.

    An unreadable or malformed config.json raises (OSError, ValueError): loading must not guess.
    """
    file = Path(path) / CONFIG_FILE
    raw = json.loads(file.read_text()) if file.is_file() else {}
    return CheckpointInfo(
        model_name=str(raw.get("model_name") or DEFAULT_MODEL_NAME),
        is_demo=bool(raw.get("demo", False)),
        raw=raw,
    )
