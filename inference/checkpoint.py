"""Loading a checkpoint, released or converted, into an inference-ready model: `load_model`.

Converted format (written by inference/convert.py): a folder with
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

A released folder (inference/released.py) loads as well: its pickles are converted on the way in.
"""

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

from inference import placement
from inference.experts import Costs, MappedCheckpoint, place
from inference.model import Grok, GrokConfig
from inference.quantize import DEFAULT_QUANT, QUANT_MODES, build_linear, meta_model
from inference.released import RELEASED_DIR, CheckpointError, converted_tensors, read_released_tensor, released_files

INDEX_FILE = "model.safetensors.index.json"


def checkpoint_tensors(path: Path, skip: Callable[[str], bool] = lambda key: False) -> Iterator[tuple[str, Tensor, str]]:
    """(converted name, tensor, where it came from) for every tensor of a released or converted
    folder; a converted folder's tensors for which `skip(name)` holds are not read at all."""
    if (path / RELEASED_DIR).is_dir():
        for name, file in released_files(path).items():
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
            for key in (k for k in keys if not skip(k)):
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
    quant: str = DEFAULT_QUANT,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    max_gpu_memory: str | int | None = None,
    max_cpu_memory: str | int | None = None,
    offload_dir: str | Path | None = None,
    kv_bytes: int = 0,
    offload: str = placement.DEFAULT_OFFLOAD,
    costs: Costs = Costs(),
) -> Grok:
    """Load a released or converted checkpoint into an inference-ready model. With budgets,
    `kv_bytes` of them are kept for the KV cache (inference/placement.py `max_memory`).

    The model is built on the meta device with the `quant` kind of projections; each tensor is then
    read, checked, and put in place on its device (or written to `offload_dir` for disk), so the
    weights are never held twice. With memory budgets, inference/placement.py spreads the model
    over GPUs, CPU and disk: expert by expert (`offload="experts"`, memory-mapped experts are not
    read here at all; `costs` drives the per-step copy decision), or layer by layer with
    accelerate (`offload="layers"`). `model.placement` tells, in a line, where everything went.
    """
    if quant not in QUANT_MODES:
        raise ValueError(f"unknown quant mode {quant!r}; choose one of {', '.join(QUANT_MODES)}")
    placement.check_offload(offload)
    path = Path(path)
    config = GrokConfig.from_checkpoint(path)
    model = meta_model(config, quant, dtype)
    expected = _schema(config)

    placed = max_gpu_memory is not None or max_cpu_memory is not None
    locations, mapped = None, None
    if placed and offload == "experts":
        main, main_budget, cpu_budget = placement.expert_budgets(max_gpu_memory, max_cpu_memory, None, kv_bytes)
        locations = placement.place_experts(model, main, main_budget, cpu_budget)
        placement.check_nf4(quant, main, locations)
        device_map = {"": main} | {
            f"layers.{i}.moe.experts.{x}": where for i, row in enumerate(locations) for x, where in enumerate(row)
        }
        if placement.MMAP in device_map.values():
            mapped = _mapped_checkpoint(path, quant)
        summary = placement.describe_experts(main, locations)
    elif placed:
        device_map = placement.device_map(
            model, max_gpu_memory=max_gpu_memory, max_cpu_memory=max_cpu_memory, kv_bytes=kv_bytes
        )
        if "disk" in device_map.values():
            if offload_dir is None:
                raise ValueError("the model does not fit in the memory budgets: give offload_dir for the layers that go to disk")
            if quant == "nf4":
                raise ValueError("nf4 weights cannot be offloaded to disk: raise the memory budgets or use int8")
        summary = placement.describe_layers(device_map)
    else:
        device_map = {"": str(device)}
        summary = f"all on {device}"

    offload_index: dict = {}
    pending: dict[str, dict[str, Tensor]] = {}  # projection -> the weight or scales read so far
    seen = set()

    def is_mapped(key: str) -> bool:
        return placement.device_of(device_map, key) == placement.MMAP

    for key in (k for k in expected if is_mapped(k) and k in mapped.entries):  # checked by the file's header: not read now
        _check(key, *mapped.describe(key), expected, str(path))
        seen.add(key)
    for key, tensor, origin in checkpoint_tensors(path, skip=is_mapped):
        _check(key, tuple(tensor.shape), tensor.dtype, expected, origin)
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
    if locations is not None:
        place(model, locations, mapped, torch.device(device_map[""]), quant, dtype, costs)
    elif placed:
        placement.dispatch(model, device_map, offload_dir, offload_index)
    model.placement = summary
    return model


def _check(key: str, shape: tuple[int, ...], dtype: torch.dtype, expected: dict, origin: str) -> None:
    if key not in expected:
        raise CheckpointError(f"{origin}: unexpected tensor {key}")
    want_shape, want_dtype = expected[key]
    if shape != want_shape or dtype != want_dtype:
        raise CheckpointError(f"{origin}: tensor {key} is {dtype} {list(shape)}, expected {want_dtype} {list(want_shape)}")


def _mapped_checkpoint(path: Path, quant: str) -> MappedCheckpoint:
    """The converted checkpoint's shards, memory-mapped, for the experts that fit no budget."""
    if quant == "nf4":
        raise ValueError("nf4 experts cannot stay memory-mapped (bitsandbytes quantizes on the GPU): raise the budgets or use int8")
    if not (path / INDEX_FILE).is_file():
        raise ValueError(
            f"the experts do not fit the memory budgets and {path} is not a converted checkpoint: memory-mapped experts"
            " are read from its safetensors (`python -m inference convert`), or raise the budgets"
        )
    return MappedCheckpoint(path, json.loads((path / INDEX_FILE).read_text())["weight_map"])


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
