"""Released checkpoint (ckpt-0/ pickles) -> the converted format of inference/checkpoint.py.

Kept apart from loading, as gpt-fast keeps its conversion script: conversion runs once per
checkpoint and reads every released pickle, loading runs at every start and memory-maps shards.

`write_converted` writes one shard at a time (to `*.partial`, then renamed) and records finished
shards in `.convert-done.json`; a rerun skips the shards recorded there whose file is intact, so
an interrupted conversion of the 318 GB release resumes where it stopped.
"""

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.torch import save_file
from tqdm import tqdm

from inference.checkpoint import INDEX_FILE
from inference.config import CONFIG_FILE, read_checkpoint_info
from inference.model import GrokConfig
from inference.released import RELEASED_DIR, CheckpointError, QuantizedWeight8bit, converted_tensors, read_released_tensor, released_files

DONE_FILE = ".convert-done.json"
DEFAULT_SHARD_BYTES = 4 * 2**30


def _write_json(file: Path, data: object) -> None:
    """Write JSON atomically, so a crash never leaves a half-written file."""
    tmp = file.with_name(file.name + ".partial")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, file)


def _plan_shards(sources: list[tuple[str, int]], shard_bytes: int) -> list[list[str]]:
    """Group released parameters, in order, into shards of at most shard_bytes (a bigger one gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, nbytes in sources:
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_converted(
    dst: str | Path,
    config: dict,
    sources: list[tuple[str, int]],
    read: Callable[[str], np.ndarray | QuantizedWeight8bit],
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    tokenizer: str | Path | None = None,
) -> None:
    """Write a converted checkpoint from released-format parameters.

    sources: (released name, approximate bytes) in order; read(name) returns that parameter. One
    shard is in memory at a time; shards already recorded as done (with an intact file) are skipped.
    """
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    plan = _plan_shards(sources, shard_bytes)
    sizes = dict(sources)
    done_file = dst / DONE_FILE
    done = json.loads(done_file.read_text()) if done_file.exists() else {}
    weight_map: dict[str, str] = {}
    total_size = 0
    with tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, unit_divisor=1024, desc=f"writing {dst.name}") as bar:
        for i, names in enumerate(plan):
            shard = f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors"
            record = done.get(shard)
            intact = record is not None and record["sources"] == names and (dst / shard).is_file() and (dst / shard).stat().st_size == record["bytes"]
            if not intact:
                tensors = {key: t for name in names for key, t in converted_tensors(name, read(name))}
                tmp = dst / (shard + ".partial")
                save_file(tensors, tmp, metadata={"format": "pt"})
                os.chmod(tmp, 0o644)  # safetensors creates files 0600; the serving user must read them too
                os.replace(tmp, dst / shard)
                record = {
                    "sources": names,
                    "bytes": (dst / shard).stat().st_size,
                    "tensor_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
                    "tensors": list(tensors),
                }
                del tensors
                done[shard] = record
                _write_json(done_file, done)
            weight_map.update(dict.fromkeys(record["tensors"], shard))
            total_size += record["tensor_bytes"]
            bar.update(sum(sizes[name] for name in names))
    if tokenizer is not None:
        shutil.copyfile(tokenizer, dst / "tokenizer.model")
    _write_json(dst / CONFIG_FILE, config)
    _write_json(dst / INDEX_FILE, {"metadata": {"total_size": total_size}, "weight_map": weight_map})


def convert(src: str | Path, dst: str | Path, *, shard_bytes: int = DEFAULT_SHARD_BYTES, tokenizer: str | Path | None = None) -> None:
    """Released checkpoint folder (holding ckpt-0/) -> converted folder. Resumable: rerun after an interruption."""
    src = Path(src)
    if not (src / RELEASED_DIR).is_dir():
        raise CheckpointError(f"{src} has no {RELEASED_DIR}/ folder: not a released Grok-1 checkpoint")
    files = released_files(src)
    for name, file in files.items():
        if not file.is_file():
            raise CheckpointError(f"{file} (tensor {name}) is missing")
    raw = read_checkpoint_info(src).raw
    config = GrokConfig.from_dict(raw).to_dict() | {k: v for k, v in raw.items() if k != "tensor_order"}
    if tokenizer is None and (src / "tokenizer.model").is_file():
        tokenizer = src / "tokenizer.model"
    sources = [(name, file.stat().st_size) for name, file in files.items()]
    write_converted(dst, config, sources, lambda name: read_released_tensor(files[name], name), shard_bytes=shard_bytes, tokenizer=tokenizer)
