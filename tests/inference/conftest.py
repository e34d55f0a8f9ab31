"""Fixtures for the inference tests: CPU only, no Django.

GOLDEN is ../shared/grok1 from the repository root (README.md there describes golden-tiny/).
"""

from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).parents[2].parent / "shared" / "grok1"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The released-format miniature Grok-1 with reference logits."""
    folder = GOLDEN / "golden-tiny"
    if not (folder / "golden.npz").is_file():
        pytest.skip(f"golden vectors not found at {folder} (../shared/grok1 from the repository root)")
    return folder


@pytest.fixture(scope="session")
def golden(golden_dir) -> dict[str, np.ndarray]:
    """tokens [2, 24] (0 = right padding), logits_f32 and logits_bf16 [2, 24, 512]."""
    with np.load(golden_dir / "golden.npz") as data:
        return dict(data)


@pytest.fixture(scope="session")
def converted_golden(golden_dir, tmp_path_factory) -> Path:
    """golden-tiny converted to the project's safetensors format (small shards, to exercise sharding)."""
    from inference.convert import convert

    dst = tmp_path_factory.mktemp("golden") / "converted"
    convert(golden_dir, dst, shard_bytes=200_000)
    return dst


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: the tiny model's ops are too small to share out, and on a
    busy 2-core machine threads made them 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
