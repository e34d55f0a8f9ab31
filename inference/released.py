"""The released Grok-1 checkpoint format (xai-org/grok-1), read safely.

A released folder holds `ckpt-0/tensor{i:05d}_000`: one pickle per parameter, in the order of the
parameter names sorted as strings (config.json's `tensor_order` when present; see
../shared/grok1/README.md). Weights are [in, out] ([X, in, out] for the MoE); projections are
`QuantizedWeight8bit(weight int8, scales bf16 [..., G, out])`. Pickles are read with an unpickler
that refuses every global but the few these files use, so a hostile file fails before any of its
code runs.

`converted_tensors` maps a released parameter to the tensors of the project's converted format
(inference/checkpoint.py): both the loader and the converter go through it.
"""

import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
import torch
from torch import Tensor

from inference.config import read_checkpoint_info
from inference.model import GrokConfig

RELEASED_DIR = "ckpt-0"

LAYER_PARAMS = (
    "moe/linear/w",
    "moe/linear_1/w",
    "moe/linear_v/w",
    "multi_head_attention/key/w",
    "multi_head_attention/linear/w",
    "multi_head_attention/query/w",
    "multi_head_attention/value/w",
    "rms_norm/scale",
    "rms_norm_1/scale",
    "rms_norm_2/scale",
    "rms_norm_3/scale",
    "router/w",
)
_LAYER_NAME = re.compile(r"transformer/decoder_layer_(\d+)/(.+)")


class CheckpointError(Exception):
    """A checkpoint is missing, truncated, hostile or does not match the model."""


class QuantizedWeight8bit:
    """Stands in for the release's `__main__.QuantizedWeight8bit`: int8 `weight`, bf16 `scales`."""

    def __init__(self, weight: np.ndarray | None = None, scales: np.ndarray | None = None) -> None:
        self.weight, self.scales = weight, scales

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes + self.scales.nbytes


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("ml_dtypes", "bfloat16"): ml_dtypes.bfloat16,
    ("__main__", "QuantizedWeight8bit"): QuantizedWeight8bit,
}


class _ReleasedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(f"refusing to load global {module}.{name} (not part of the Grok-1 format)") from None


def read_released_tensor(file: Path, name: str) -> np.ndarray | QuantizedWeight8bit:
    """One released pickle: a float32 array or a QuantizedWeight8bit."""
    try:
        with open(file, "rb") as f:
            return _ReleasedUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(f"{file} (tensor {name}) is missing") from None
    except (CheckpointError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{file} (tensor {name}) is truncated or invalid: {err}") from None


def released_names(config: GrokConfig) -> list[str]:
    """The release's parameter names in file order: sorted as strings (layers 0, 1, 10, 11, ...)."""
    names = ["language_model/in_out_embed/embeddings", "language_model/rms_norm/scale"]
    names += [f"transformer/decoder_layer_{i}/{p}" for i in range(config.num_layers) for p in LAYER_PARAMS]
    return sorted(names)


def released_files(path: Path) -> dict[str, Path]:
    """A released folder's parameter name -> its pickle, in file order (config.json's `tensor_order` when present)."""
    raw = read_checkpoint_info(path).raw
    names = raw.get("tensor_order") or released_names(GrokConfig.from_dict(raw))
    return {name: path / RELEASED_DIR / f"tensor{i:05d}_000" for i, name in enumerate(names)}


def _torch(array: np.ndarray) -> Tensor:
    if array.dtype == ml_dtypes.bfloat16:  # numpy has no bfloat16: reinterpret the bits, no copy
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _expect(name: str, value: object, kind: type) -> None:
    if not isinstance(value, kind):
        raise CheckpointError(f"tensor {name}: expected {kind.__name__}, found {type(value).__name__}")


def converted_tensors(name: str, value: np.ndarray | QuantizedWeight8bit) -> Iterator[tuple[str, Tensor]]:
    """Released parameter -> converted tensors: transposed to [out, in], MoE split per expert."""
    if name == "language_model/in_out_embed/embeddings":
        _expect(name, value, np.ndarray)
        yield "embed.weight", _torch(value)
        return
    if name == "language_model/rms_norm/scale":
        _expect(name, value, np.ndarray)
        yield "norm.scale", _torch(value)
        return
    match = _LAYER_NAME.fullmatch(name)
    if match is None or match.group(2) not in LAYER_PARAMS:
        raise CheckpointError(f"unexpected tensor name {name}")
    prefix = f"layers.{match.group(1)}."
    group, param = match.group(2).split("/")[:2]
    if group.startswith("rms_norm"):
        _expect(name, value, np.ndarray)
        yield prefix + group + ".scale", _torch(value)
    elif group == "router":
        _expect(name, value, np.ndarray)
        yield prefix + "moe.router", _torch(value).T.contiguous()  # [E, X] -> [X, E]
    else:
        _expect(name, value, QuantizedWeight8bit)
        weight, scales = _torch(value.weight), _torch(value.scales)
        if group == "multi_head_attention":
            yield f"{prefix}attn.{param}.weight", weight.T.contiguous()
            yield f"{prefix}attn.{param}.scales", scales
        else:  # moe: [X, in, out]
            for x in range(weight.shape[0]):
                yield f"{prefix}moe.experts.{x}.{param}.weight", weight[x].T.contiguous()
                yield f"{prefix}moe.experts.{x}.{param}.scales", scales[x].clone()  # own storage for safetensors
