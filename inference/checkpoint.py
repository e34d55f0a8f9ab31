"""Grok-1 checkpoints: the released format, the project's converted format, and `load_model`.

Released format (xai-org/grok-1, see ../shared/grok1/README.md): `ckpt-0/tensor{i:05d}_000`, one
pickle per parameter in sorted-name order (config.json's `tensor_order` when present). Weights are
[in, out] ([X, in, out] for the MoE); projections are `QuantizedWeight8bit(weight int8, scales
bf16 [..., G, out])`. Pickles are read with an unpickler that refuses every global but the few
these files use, so a hostile file fails before any of its code runs.

Converted format (`convert`): a folder with
- `model-0000i-of-0000n.safetensors` shards and `model.safetensors.index.json`
  (`{"metadata": {"total_size": bytes}, "weight_map": {tensor: shard}}`),
- `config.json` (GrokConfig fields, plus optional `model_name` and `"demo": true`),
- `tokenizer.model` when the source had one.
Tensors are named as in the int8 model's `state_dict()` and keep the released dtypes, already
laid out for `nn.Linear` so loading is a memory map, no transpose:

    embed.weight                                   float32 [V, E]
    norm.scale                                     float32 [E]
    layers.{i}.rms_norm{,_1,_2,_3}.scale           float32 [E]
    layers.{i}.attn.{query,key,value,linear}.weight   int8 [out, in]
    layers.{i}.attn.{query,key,value,linear}.scales   bfloat16 [G, out]   (G = 8 for `linear`)
    layers.{i}.moe.router                          float32 [X, E]
    layers.{i}.moe.experts.{x}.{linear,linear_v,linear_1}.weight   int8 [out, in]
    layers.{i}.moe.experts.{x}.{linear,linear_v,linear_1}.scales   bfloat16 [G, out]  (G = 8 for `linear_1`)

Conversion writes one shard at a time (to `*.partial`, then renamed) and records finished shards
in `.convert-done.json`; a rerun skips the shards recorded there whose file is intact.
"""

import argparse
import json
import os
import pickle
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import ml_dtypes
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from inference import placement
from inference.model import Grok, GrokConfig
from inference.quantize import QUANT_MODES, build_linear, meta_model

RELEASED_DIR = "ckpt-0"
INDEX_FILE = "model.safetensors.index.json"
DONE_FILE = ".convert-done.json"
DEFAULT_SHARD_BYTES = 4 * 2**30

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

    def __init__(self, weight: np.ndarray | None = None, scales: np.ndarray | None = None):
        self.weight, self.scales = weight, scales


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("ml_dtypes", "bfloat16"): ml_dtypes.bfloat16,
    ("__main__", "QuantizedWeight8bit"): QuantizedWeight8bit,
}


class _ReleasedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
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


def released_order(path: Path) -> list[str]:
    """A released folder's parameter names in file order: config.json's `tensor_order` when present."""
    config_file = path / "config.json"
    raw = json.loads(config_file.read_text()) if config_file.exists() else {}
    return raw.get("tensor_order") or released_names(read_config(path))


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


def read_config(path: Path) -> GrokConfig:
    """config.json of a checkpoint folder; the full Grok-1 preset when a released folder has none."""
    config_file = Path(path) / "config.json"
    return GrokConfig.from_json(config_file) if config_file.exists() else GrokConfig()


def checkpoint_tensors(path: Path) -> Iterator[tuple[str, Tensor, str]]:
    """(converted name, tensor, where it came from) for every tensor of a released or converted folder."""
    if (path / RELEASED_DIR).is_dir():
        for i, name in enumerate(released_order(path)):
            file = path / RELEASED_DIR / f"tensor{i:05d}_000"
            for key, tensor in converted_tensors(name, read_released_tensor(file, name)):
                yield key, tensor, f"{file} ({name})"
    elif (path / INDEX_FILE).is_file():
        weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
        shards: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            shards.setdefault(shard, []).append(key)
        for shard, keys in shards.items():
            file = path / shard
            if not file.is_file():
                raise CheckpointError(f"{file} is missing (it holds tensor {keys[0]} and {len(keys) - 1} more)")
            try:
                handle = safe_open(file, framework="pt")
            except Exception as err:
                raise CheckpointError(f"{file} (holding tensor {keys[0]}, ...) is truncated or invalid: {err}") from None
            for key in keys:
                try:
                    tensor = handle.get_tensor(key)
                except Exception as err:
                    raise CheckpointError(f"{file}: cannot read tensor {key}: {err}") from None
                yield key, tensor, str(file)
    else:
        raise CheckpointError(f"{path} holds neither a released checkpoint ({RELEASED_DIR}/) nor a converted one ({INDEX_FILE})")


def load_model(
    path: str | Path,
    *,
    quant: str = "int8",
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    max_gpu_memory: str | int | None = None,
    max_cpu_memory: str | int | None = None,
    offload_dir: str | Path | None = None,
    kv_bytes: int = 0,
) -> Grok:
    """Load a released or converted checkpoint into an inference-ready model. With budgets,
    `kv_bytes` of them are kept for the KV cache (inference/placement.py `max_memory`).

    The model is built on the meta device with the `quant` kind of projections; each tensor is then
    read, checked, and put in place on its device (or written to `offload_dir` for disk), so the
    weights are never held twice. With memory budgets, inference/placement.py spreads the layers
    over GPUs, CPU and disk.
    """
    if quant not in QUANT_MODES:
        raise ValueError(f"unknown quant mode {quant!r}; choose one of {', '.join(QUANT_MODES)}")
    path = Path(path)
    config = read_config(path)
    model = meta_model(config, quant, dtype)
    expected = _schema(config)

    placed = max_gpu_memory is not None or max_cpu_memory is not None
    if placed:
        device_map = placement.device_map(
            model, max_gpu_memory=max_gpu_memory, max_cpu_memory=max_cpu_memory, kv_bytes=kv_bytes
        )
        if "disk" in device_map.values():
            if offload_dir is None:
                raise ValueError("the model does not fit in the memory budgets: give offload_dir for the layers that go to disk")
            if quant == "nf4":
                raise ValueError("nf4 weights cannot be offloaded to disk: raise the memory budgets or use int8")
    else:
        device_map = {"": str(device)}

    offload_index: dict = {}
    pending: dict[str, dict[str, Tensor]] = {}  # projection -> the weight or scales read so far
    seen = set()
    for key, tensor, origin in checkpoint_tensors(path):
        if key not in expected:
            raise CheckpointError(f"{origin}: unexpected tensor {key}")
        shape, want = expected[key]
        if tuple(tensor.shape) != shape or tensor.dtype != want:
            raise CheckpointError(
                f"{origin}: tensor {key} is {tensor.dtype} {list(tensor.shape)}, expected {want} {list(shape)}"
            )
        seen.add(key)
        target = placement.device_of(device_map, key)
        module_name, _, leaf = key.rpartition(".")
        if f"{module_name}.scales" in expected:  # a projection: build it once weight and scales are in
            parts = pending.setdefault(module_name, {})
            parts[leaf] = tensor
            if len(parts) < 2:
                continue
            del pending[module_name]
            module = build_linear(parts["weight"], parts["scales"], quant, dtype, "cpu" if target == "disk" else target)
            if target == "disk":
                for name, value in module.state_dict().items():
                    _offload(value, f"{module_name}.{name}", offload_dir, offload_index)
            else:
                model.set_submodule(module_name, module)
        else:
            value = tensor.to(dtype) if key == "embed.weight" else tensor
            if target == "disk":
                _offload(value, key, offload_dir, offload_index)
            else:
                setattr(model.get_submodule(module_name), leaf, nn.Parameter(value.to(target), requires_grad=False))

    missing = sorted(set(expected) - seen)
    if missing:
        raise CheckpointError(f"{path}: tensor {missing[0]} is missing" + (f" ({len(missing) - 1} more)" if len(missing) > 1 else ""))
    if placed:
        placement.dispatch(model, device_map, offload_dir, offload_index)
    return model


def _schema(config: GrokConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The converted format's tensors, name -> (shape, dtype): the int8 model's, with projection
    weights [out, in] as released (Int8Linear keeps them as [G, out, in/G]) and the embedding
    float32 as released."""
    schema = {}
    for key, value in meta_model(config, "int8", torch.float32).state_dict().items():
        shape = tuple(value.shape)
        if value.dtype == torch.int8:
            groups, out_features, part = shape
            shape = (out_features, groups * part)
        schema[key] = (shape, value.dtype)
    return schema


def _offload(value: Tensor, name: str, offload_dir: str | Path, index: dict) -> None:
    from accelerate.utils import offload_weight

    os.makedirs(offload_dir, exist_ok=True)
    offload_weight(value, name, str(offload_dir), index)


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
    _write_json(dst / "config.json", config)
    _write_json(dst / INDEX_FILE, {"metadata": {"total_size": total_size}, "weight_map": weight_map})


def convert(src: str | Path, dst: str | Path, *, shard_bytes: int = DEFAULT_SHARD_BYTES, tokenizer: str | Path | None = None) -> None:
    """Released checkpoint folder (holding ckpt-0/) -> converted folder. Resumable: rerun after an interruption."""
    src = Path(src)
    if not (src / RELEASED_DIR).is_dir():
        raise CheckpointError(f"{src} has no {RELEASED_DIR}/ folder: not a released Grok-1 checkpoint")
    names = released_order(src)
    files = {name: src / RELEASED_DIR / f"tensor{i:05d}_000" for i, name in enumerate(names)}
    for name, file in files.items():
        if not file.is_file():
            raise CheckpointError(f"{file} (tensor {name}) is missing")
    config_file = src / "config.json"
    raw = json.loads(config_file.read_text()) if config_file.exists() else {}
    config = asdict(read_config(src)) | {k: v for k, v in raw.items() if k != "tensor_order"}
    if tokenizer is None and (src / "tokenizer.model").is_file():
        tokenizer = src / "tokenizer.model"
    sources = [(name, file.stat().st_size) for name, file in files.items()]
    write_converted(dst, config, sources, lambda name: read_released_tensor(files[name], name), shard_bytes=shard_bytes, tokenizer=tokenizer)


def convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="released checkpoint folder (holding ckpt-0/)")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--tokenizer", help="tokenizer.model to copy (default: SRC/tokenizer.model if present)")
    parser.add_argument("--shard-gib", type=float, default=DEFAULT_SHARD_BYTES / 2**30, help="shard size in GiB")


def convert_cli(args: argparse.Namespace) -> None:
    convert(args.src, args.dst, shard_bytes=int(args.shard_gib * 2**30), tokenizer=args.tokenizer)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def logits(model: Grok, tokens: Tensor) -> Tensor:
    """Logits [B, T, V] float32 of right-padded token rows [B, T], each row in its own cache slot."""
    b, t = tokens.shape
    model.setup_cache(b, t)
    input_pos = torch.arange(t, device=tokens.device).expand(b, t)  # padding continues the count, as forward asks
    with torch.inference_mode():
        return model(tokens, input_pos, torch.arange(b, device=tokens.device))


def logits_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="released or converted checkpoint folder")
    parser.add_argument("--tokens", required=True, help=".npz with an int array `tokens` [B, T], 0 = right padding")
    parser.add_argument("--out", required=True, help="output .npy, float32 [B, T, V]")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="activation dtype")
    parser.add_argument("--quant", choices=QUANT_MODES, default="none", help="none = dequantised float weights, like the reference")
    parser.add_argument("--device", default="cpu")


def logits_cli(args: argparse.Namespace) -> None:
    tokens = torch.from_numpy(np.load(args.tokens)["tokens"].astype(np.int64))
    model = load_model(args.checkpoint, quant=args.quant, dtype=DTYPES[args.dtype], device=args.device)
    np.save(args.out, logits(model, tokens.to(args.device)).cpu().numpy())
