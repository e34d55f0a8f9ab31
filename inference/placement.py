"""Spread Grok-1 over GPUs, CPU RAM and disk (accelerate big-model inference), and plan it.

`device_map` asks accelerate's `infer_auto_device_map` where each part of the meta model goes
under the given budgets (a decoder layer is never split), `dispatch` installs accelerate's hooks:
layers on CPU or disk are moved to the main device for each forward. `make_plan` works out such a
placement for any config (the full 314B preset too) without loading weights, with the bytes per
device and a bandwidth-bound estimate of decode speed; `python -m inference plan` prints it.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from inference.model import GrokConfig
from inference.quantize import meta_model

# Assumed bandwidths for the decode estimate, bytes/s.
GPU_BANDWIDTH = 3.35e12  # H100 SXM HBM3
PCIE_BANDWIDTH = 25e9  # PCIe 4.0 x16, achievable host -> GPU copy rate
DISK_BANDWIDTH = 5e9  # NVMe (PCIe 4.0) sequential read
CPU_BANDWIDTH = 100e9  # DDR5 server memory, when the CPU does the compute

NO_SPLIT = ["DecoderLayer"]
DISK_SPACE = 2**50  # accelerate wants a budget for disk; the offload folder's file system decides


def parse_bytes(value: str | int) -> int:
    """80GiB, 80GB, 500MB, or a number of bytes."""
    from accelerate.utils import convert_file_size_to_int

    return value if isinstance(value, int) else convert_file_size_to_int(value)


def kv_cache_bytes(config: GrokConfig, max_batch: int, context_len: int, dtype: torch.dtype) -> int:
    """The static KV cache (inference/model.py `setup_cache`): keys and values of every layer."""
    per_layer = 2 * max_batch * config.num_kv_heads * context_len * config.key_size * dtype.itemsize
    return config.num_layers * per_layer


def max_memory(
    max_gpu_memory: str | int | None,
    max_cpu_memory: str | int | None,
    num_gpus: int | None = None,
    kv_bytes: int = 0,
) -> dict:
    """accelerate's budget dict for the weights: each GPU gets max_gpu_memory (none without it), the
    CPU max_cpu_memory (default: the RAM available now), disk whatever is left. The KV cache
    (`kv_bytes`) comes out of the budgets of the devices that run the layers: shared among the
    GPUs (layers offloaded to CPU or disk run on the first GPU, and so keep their cache there:
    exact for one GPU and for GPUs holding every layer), else the CPU's."""
    import psutil

    budget: dict[int | str, int] = {}
    cpu = psutil.virtual_memory().available if max_cpu_memory is None else parse_bytes(max_cpu_memory)
    if max_gpu_memory is not None:
        gpus = torch.cuda.device_count() if num_gpus is None else num_gpus
        if gpus == 0:
            raise ValueError("max_gpu_memory was given but there is no CUDA device")
        per_gpu = _less_kv_cache(parse_bytes(max_gpu_memory), -(-kv_bytes // gpus), kv_bytes, "max_gpu_memory")
        budget.update(dict.fromkeys(range(gpus), per_gpu))
    elif max_cpu_memory is not None:
        cpu = _less_kv_cache(cpu, kv_bytes, kv_bytes, "max_cpu_memory")
    budget["cpu"] = cpu
    budget["disk"] = DISK_SPACE
    return budget


def _less_kv_cache(budget: int, share: int, kv_bytes: int, name: str) -> int:
    """`budget` less this device's `share` of the KV cache; a clear error when nothing is left."""
    if budget - share <= 0:
        raise ValueError(
            f"the KV cache ({kv_bytes / 2**30:.1f} GiB) does not fit in {name}: lower the batch or the context length"
        )
    return budget - share


def _special_dtypes(model: nn.Module) -> dict:
    """Sizes accelerate cannot see: an nf4 weight sits on meta as [out, in] but takes half a byte each."""
    from accelerate.utils import CustomDtype

    return {f"{name}.weight": CustomDtype.INT4 for name, m in model.named_modules() if type(m).__name__ == "Linear4bit"}


def units(model: nn.Module) -> list[str]:
    """The parts placed as a whole, in forward order."""
    return ["embed", *(f"layers.{i}" for i in range(len(model.layers))), "norm"]


def device_map(
    model: nn.Module,
    *,
    max_gpu_memory: str | int | None = None,
    max_cpu_memory: str | int | None = None,
    num_gpus: int | None = None,
    kv_bytes: int = 0,
) -> dict[str, int | str]:
    """Device of each unit (GPU index, "cpu" or "disk") of a meta model under the budgets, with
    `kv_bytes` of KV cache kept out of them (`max_memory`)."""
    from accelerate import infer_auto_device_map

    found = infer_auto_device_map(
        model,
        max_memory=max_memory(max_gpu_memory, max_cpu_memory, num_gpus, kv_bytes),
        no_split_module_classes=NO_SPLIT,
        special_dtypes=_special_dtypes(model),
    )
    # One entry per unit: accelerate's hooks only run on modules that are called, and the layer
    # list itself is iterated, not called.
    return {unit: device_of(found, unit) for unit in units(model)}


def device_of(device_map: dict, name: str) -> int | str:
    """The device of a module or tensor: the map's entry for its longest prefix."""
    prefixes = [p for p in device_map if p == "" or name == p or name.startswith(p + ".")]
    return device_map[max(prefixes, key=len)]


def dispatch(model: nn.Module, device_map: dict, offload_dir: str | Path | None, offload_index: dict) -> None:
    """Install accelerate's hooks; offload_index describes the tensors already written to offload_dir."""
    from accelerate import dispatch_model
    from accelerate.utils import save_offload_index

    on_disk = "disk" in device_map.values()
    if on_disk:
        save_offload_index(offload_index, str(offload_dir))
    gpus = sorted(d for d in device_map.values() if isinstance(d, int))
    dispatch_model(
        model,
        device_map,
        main_device=f"cuda:{gpus[0]}" if gpus else "cpu",
        offload_dir=str(offload_dir) if on_disk else None,
        offload_index=offload_index if on_disk else None,
    )


@dataclass
class Plan:
    rows: list[tuple[str, list[str], int]]  # (device, units, bytes) in placement order
    total_bytes: int
    kv_bytes: int  # the KV cache, kept out of the budgets
    kv_shape: tuple[int, int]  # (slots, tokens each)
    parameters: int
    tokens_per_second: float


def make_plan(
    config: GrokConfig,
    quant: str,
    dtype: torch.dtype = torch.bfloat16,
    *,
    max_gpu_memory: str | int | None = None,
    max_cpu_memory: str | int | None = None,
    num_gpus: int | None = None,
    max_batch: int = 8,
    context_len: int | None = None,
) -> Plan:
    """Placement, bytes per device and the decode estimate, from the meta model alone, for an
    engine of `max_batch` slots of `context_len` tokens (default: the model's context length)."""
    from accelerate.utils import compute_module_sizes

    model = meta_model(config, quant, dtype)
    context_len = context_len or config.context_len
    kv_bytes = kv_cache_bytes(config, max_batch, context_len, dtype)
    placement = device_map(
        model, max_gpu_memory=max_gpu_memory, max_cpu_memory=max_cpu_memory, num_gpus=num_gpus, kv_bytes=kv_bytes
    )
    sizes = compute_module_sizes(model, special_dtypes=_special_dtypes(model))
    rows: list[tuple[str, list[str], int]] = []
    for unit, device in placement.items():
        name = f"cuda:{device}" if isinstance(device, int) else device
        if not rows or rows[-1][0] != name:
            rows.append((name, [], 0))
        rows[-1] = (name, rows[-1][1] + [unit], rows[-1][2] + sizes[unit])
    # Per token, a resident MoE layer reads only the chosen experts; the tied output reads all of embed.
    expert_share = config.num_selected_experts / config.num_experts
    has_gpu = any(isinstance(d, int) for d in placement.values())
    seconds = 0.0
    for unit, device in placement.items():
        experts = sizes.get(f"{unit}.moe.experts", 0)
        read = sizes[unit] - experts + experts * expert_share
        if isinstance(device, int):
            seconds += read / GPU_BANDWIDTH
        elif device == "cpu":
            seconds += sizes[unit] / PCIE_BANDWIDTH if has_gpu else read / CPU_BANDWIDTH
        else:  # disk: read whole each forward, then over PCIe to the GPU when there is one
            seconds += sizes[unit] / DISK_BANDWIDTH + (sizes[unit] / PCIE_BANDWIDTH if has_gpu else 0)
    parameters = sum(p.numel() for p in model.parameters())
    return Plan(rows, sizes[""], kv_bytes, (max_batch, context_len), parameters, 1 / seconds)


def _layer_ranges(unit_names: list[str]) -> str:
    """["embed", "layers.0", "layers.1", "layers.5"] -> "embed, layers 0-1, 5"."""
    layers = [int(u.split(".")[1]) for u in unit_names if u.startswith("layers.")]
    spans: list[list[int]] = []
    for i in layers:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    parts = [u for u in unit_names if u == "embed"]
    if spans:
        parts.append("layers " + ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in spans))
    parts += [u for u in unit_names if u == "norm"]
    return ", ".join(parts)


def format_plan(plan: Plan, title: str) -> str:
    """The plan as `python -m inference plan` prints it: a table of devices, then the KV cache and the estimate."""
    lines = [title, f"{'device':<8} {'GB':>8}  units"]
    lines += [f"{device:<8} {nbytes / 1e9:>8.2f}  {_layer_ranges(names)}" for device, names, nbytes in plan.rows]
    lines.append(f"{'total':<8} {plan.total_bytes / 1e9:>8.2f}  ({plan.parameters:,} parameters)")
    slots, tokens = plan.kv_shape
    lines.append(
        f"KV cache {plan.kv_bytes / 1e9:.2f} GB for {slots} slots of {tokens} tokens, on the devices that run the"
        " layers, inside the budgets (the weights get the rest)"
    )
    lines.append(
        f"decode estimate, batch 1: {plan.tokens_per_second:.2f} tokens/s (bandwidth bound: GPU {GPU_BANDWIDTH / 1e12:.2f} TB/s,"
        f" PCIe {PCIE_BANDWIDTH / 1e9:.0f} GB/s, disk {DISK_BANDWIDTH / 1e9:.0f} GB/s, CPU {CPU_BANDWIDTH / 1e9:.0f} GB/s)"
    )
    return "\n".join(lines)
