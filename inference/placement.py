"""Spread Grok-1 over GPUs, CPU RAM and disk, and plan it, in one of two ways (`--offload`).

- "experts" (the default): per layer, the attention, norms and router, and each expert on its own.
  What every token needs (embedding, attention, norms, routers, the KV cache) goes to the main
  device; then as many experts as fit there (`place_experts`); then CPU RAM up to its budget;
  the rest stay memory-mapped in the converted checkpoint. Each expert is computed where it lies
  (inference/experts.py): a token's activations cross PCIe, not the weights.
- "layers": accelerate's big-model inference. `device_map` asks `infer_auto_device_map` where each
  decoder layer goes (never split), `dispatch` installs its hooks: a layer on CPU or disk is
  copied whole, all its experts, to the main device for each forward.

`make_plan` works out either placement for any config (the full 314B preset too) without loading
weights, with the bytes per device and a bandwidth-bound estimate of decode speed at batch 1 and 8
(`Costs`: the bandwidths it assumes); `python -m inference plan` prints both.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from inference.experts import Costs
from inference.model import GrokConfig
from inference.quantize import meta_model

OFFLOAD_MODES = ("experts", "layers")
DEFAULT_OFFLOAD = "experts"
MMAP = "mmap"  # an expert left in the checkpoint's memory-mapped safetensors
PLAN_BATCHES = (1, 8)
NO_SPLIT = ["DecoderLayer"]
DISK_SPACE = 2**50  # accelerate wants a budget for disk; the offload folder's file system decides


def parse_bytes(value: str | int) -> int:
    """80GiB, 80GB, 500MB, or a number of bytes."""
    from accelerate.utils import convert_file_size_to_int

    if isinstance(value, int) or value.isdigit():
        return int(value)
    return convert_file_size_to_int(value)


def kv_cache_bytes(config: GrokConfig, max_batch: int, context_len: int, dtype: torch.dtype) -> int:
    """The static KV cache (inference/model.py `setup_cache`): keys and values of every layer, for
    `max_batch` rows (the engine's batch slots plus its prefix-cache rows)."""
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


def check_offload(offload: str) -> None:
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"unknown offload mode {offload!r}; choose one of {', '.join(OFFLOAD_MODES)}")


def expert_budgets(
    max_gpu_memory: str | int | None, max_cpu_memory: str | int | None, num_gpus: int | None, kv_bytes: int
) -> tuple[str, int, int]:
    """(main device, its budget for weights, the CPU RAM budget for experts) of `--offload experts`,
    the KV cache kept out of the main device's. Without a GPU budget the main device is the CPU,
    and its one budget holds everything resident."""
    import psutil

    cpu = psutil.virtual_memory().available if max_cpu_memory is None else parse_bytes(max_cpu_memory)
    if max_gpu_memory is None:
        return "cpu", _less_kv_cache(cpu, kv_bytes, kv_bytes, "max_cpu_memory"), 0
    gpus = torch.cuda.device_count() if num_gpus is None else num_gpus
    if gpus == 0:
        raise ValueError("max_gpu_memory was given but there is no CUDA device")
    if gpus > 1:
        raise ValueError(f"--offload experts places on one GPU; to spread over {gpus} GPUs use --offload layers")
    return "cuda:0", _less_kv_cache(parse_bytes(max_gpu_memory), kv_bytes, kv_bytes, "max_gpu_memory"), cpu


def shared_bytes(model: nn.Module) -> int:
    """What every token needs: the model less its experts (embedding, attention, norms, routers)."""
    from accelerate.utils import compute_module_sizes

    sizes = compute_module_sizes(model, special_dtypes=_special_dtypes(model))
    return sizes[""] - sum(sizes[f"layers.{i}.moe.experts"] for i in range(len(model.layers)))


def expert_sizes(model: nn.Module, config: GrokConfig) -> tuple[int, int]:
    """(bytes of one expert in memory, as `model` holds it; bytes of one in the converted checkpoint, int8 + scales)."""
    from accelerate.utils import compute_module_sizes

    memory = compute_module_sizes(model, special_dtypes=_special_dtypes(model))["layers.0.moe.experts.0"]
    on_disk = compute_module_sizes(meta_model(config, "int8", torch.float32))["layers.0.moe.experts.0"]
    return memory, on_disk


def place_experts(model: nn.Module, main: str, main_budget: int, cpu_budget: int) -> list[list[str]]:
    """The location of each expert of a meta model, per layer: `main` (the main device), "cpu" or MMAP.

    Everything but the experts goes on the main device first; then experts fill its budget,
    expert 0 of every layer, then expert 1 of every layer, ... (so each layer has about the same
    share there and no layer waits much longer than another), then CPU RAM; the rest stay in
    the checkpoint, memory-mapped.
    """
    shared = shared_bytes(model)
    memory, _ = expert_sizes(model, model.config)  # every expert has the same size
    free = {"cpu": cpu_budget, main: main_budget - shared}
    if free[main] < 0:
        raise ValueError(
            f"embedding, attention, norms and routers ({shared / 1e9:.2f} GB) do not fit the {main} budget"
            f" ({main_budget / 1e9:.2f} GB after the KV cache): raise it, or lower the batch or the context length"
        )
    config = model.config
    locations = [[MMAP] * config.num_experts for _ in range(config.num_layers)]
    for x in range(config.num_experts):
        for layer in locations:
            where = next((w for w in dict.fromkeys((main, "cpu")) if free[w] >= memory), MMAP)
            if where != MMAP:
                free[where] -= memory
            layer[x] = where
    return locations


def check_nf4(quant: str, main: str, locations: list[list[str]]) -> None:
    """nf4 experts off the GPU are refused: bitsandbytes quantizes and computes them on the GPU."""
    if quant == "nf4" and main != "cpu" and any(where != main for row in locations for where in row):
        raise ValueError("nf4 experts must all fit the GPU: use int8 for experts in CPU RAM, or --offload layers")


def describe_experts(main: str, locations: list[list[str]]) -> str:
    """A line for logs: where `place_experts` put what."""
    flat = [where for row in locations for where in row]
    counts = ", ".join(f"{flat.count(w)} {w}" for w in dict.fromkeys((main, "cpu", MMAP)) if flat.count(w))
    return f"--offload experts: embedding, attention, norms, routers, KV cache on {main}; experts {counts} (of {len(flat)})"


def describe_layers(device_map: dict) -> str:
    """A line for logs: where accelerate put each unit."""
    by_device: dict[str, list[str]] = {}
    for unit, device in device_map.items():
        by_device.setdefault(f"cuda:{device}" if isinstance(device, int) else device, []).append(unit)
    return "--offload layers: " + "; ".join(f"{d}: {_layer_ranges(units)}" for d, units in by_device.items())


@dataclass
class Plan:
    offload: str  # "layers" or "experts"
    rows: list[tuple[str, list[str], int]]  # (device, what lives there, bytes) in placement order
    total_bytes: int  # the weights in memory ("mmap" rows count the checkpoint's bytes)
    kv_bytes: int  # the KV cache, kept out of the budgets
    kv_shape: tuple[int, int]  # (slots, tokens each)
    parameters: int
    step_bytes: dict[int, dict[str, float]]  # batch -> device -> weight bytes one decode step reads there
    tokens_per_second: dict[int, float]  # batch -> decode tokens/s of the whole batch, bandwidth bound
    costs: Costs
    prefix_rows: int = 0  # KV cache rows beyond the slots, for prefix reuse (inference/engine.py)


def expert_share(config: GrokConfig, batch: int) -> float:
    """The share of a layer's experts a decode step of `batch` tokens reads, routing taken as uniform:
    each token picks k of X, so 1 - (1 - k/X)^batch (k/X at batch 1)."""
    return 1 - (1 - config.num_selected_experts / config.num_experts) ** batch


def make_plan(
    config: GrokConfig,
    quant: str,
    dtype: torch.dtype = torch.bfloat16,
    *,
    offload: str = DEFAULT_OFFLOAD,
    max_gpu_memory: str | int | None = None,
    max_cpu_memory: str | int | None = None,
    num_gpus: int | None = None,
    max_batch: int = 8,
    prefix_cache: int = 0,
    context_len: int | None = None,
    costs: Costs = Costs(),
    batches: tuple[int, ...] = PLAN_BATCHES,
) -> Plan:
    """Placement, bytes per device and the decode estimate at each of `batches`, from the meta
    model alone, for an engine of `max_batch` slots and `prefix_cache` more cache rows of
    `context_len` tokens (default: the model's context length)."""
    check_offload(offload)
    model = meta_model(config, quant, dtype)
    context_len = context_len or config.context_len
    kv_bytes = kv_cache_bytes(config, max_batch + prefix_cache, context_len, dtype)
    budgets = max_gpu_memory, max_cpu_memory, num_gpus, kv_bytes
    if offload == "experts":
        rows, step_bytes, seconds = _plan_experts(model, config, quant, budgets, costs, batches)
    else:
        rows, step_bytes, seconds = _plan_layers(model, config, budgets, costs, batches)
    parameters = sum(p.numel() for p in model.parameters())
    return Plan(
        offload, rows, sum(row[2] for row in rows), kv_bytes, (max_batch, context_len), parameters, step_bytes,
        {b: b / seconds[b] for b in batches}, costs, prefix_cache,
    )


def _plan_layers(model: nn.Module, config: GrokConfig, budgets: tuple, costs: Costs, batches: tuple[int, ...]):
    """accelerate's whole-layer placement: a layer off the GPU crosses PCIe whole every forward."""
    from accelerate.utils import compute_module_sizes

    max_gpu_memory, max_cpu_memory, num_gpus, kv_bytes = budgets
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
    has_gpu = any(isinstance(d, int) for d in placement.values())
    step_bytes, seconds = {}, {}
    for batch in batches:
        read: dict[str, float] = {}
        seconds[batch] = 0.0
        for unit, device in placement.items():
            # A resident MoE layer reads only the experts the batch picks; the tied output all of embed.
            experts = sizes.get(f"{unit}.moe.experts", 0)
            used = sizes[unit] - experts + experts * expert_share(config, batch)
            if isinstance(device, int):
                name, nbytes, time = f"cuda:{device}", used, used / costs.hbm
            elif device == "cpu":
                name, nbytes = "cpu", sizes[unit] if has_gpu else used
                time = sizes[unit] / costs.pcie if has_gpu else used / costs.cpu
            else:  # disk: read whole each forward, then over PCIe to the GPU when there is one
                name, nbytes = "disk", sizes[unit]
                time = sizes[unit] / costs.disk + (sizes[unit] / costs.pcie if has_gpu else 0)
            read[name] = read.get(name, 0.0) + nbytes
            seconds[batch] += time
        step_bytes[batch] = read
    return rows, step_bytes, seconds


def _plan_experts(model: nn.Module, config: GrokConfig, quant: str, budgets: tuple, costs: Costs, batches: tuple[int, ...]):
    """Placement per expert (`place_experts`): experts are read where they lie, CPU ones by the CPU,
    which on a GPU host works alongside the GPU."""
    main, main_budget, cpu_budget = expert_budgets(*budgets)
    locations = place_experts(model, main, main_budget, cpu_budget)
    check_nf4(quant, main, locations)
    memory, on_disk = expert_sizes(model, config)
    shared = shared_bytes(model)
    total = config.num_layers * config.num_experts
    held = {where: sum(row.count(where) for row in locations) for where in (main, "cpu", MMAP)}
    size = {main: held[main] * memory, "cpu": held["cpu"] * memory, MMAP: held[MMAP] * on_disk}
    rows = [(main, [f"embed, attention + norms + router of {config.num_layers} layers", f"experts: {held[main]} of {total}"],
             shared + size[main])]
    rows += [(where, [f"experts: {held[where]} of {total}"], size[where]) for where in ("cpu", MMAP) if held[where] and where != main]
    step_bytes, seconds = {}, {}
    for batch in batches:
        share = expert_share(config, batch)
        read = {device: share * size[device] for device, _, _ in rows}
        read[main] += shared
        main_time = read[main] / (costs.hbm if main != "cpu" else costs.cpu)
        # memory-mapped experts: read from disk (page cache misses), then by the CPU
        host_time = read.get("cpu", 0.0) / costs.cpu + read.get(MMAP, 0.0) * (1 / costs.disk + 1 / costs.cpu)
        if main == "cpu":
            seconds[batch] = main_time + host_time
        else:  # the GPU's experts run while the CPU computes its own; attention etc. come before
            seconds[batch] = shared / costs.hbm + max(main_time - shared / costs.hbm, host_time)
        step_bytes[batch] = read
    return rows, step_bytes, seconds


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
    """The plan as `python -m inference plan` prints it: a table of devices, then the KV cache and the estimates."""
    lines = [f"{title}, --offload {plan.offload}", f"{'device':<8} {'GB':>8}  what"]
    for device, names, nbytes in plan.rows:
        what = _layer_ranges(names) if plan.offload == "layers" else ", ".join(names)
        lines.append(f"{device:<8} {nbytes / 1e9:>8.2f}  {what}")
    lines.append(f"{'total':<8} {plan.total_bytes / 1e9:>8.2f}  ({plan.parameters:,} parameters)")
    slots, tokens = plan.kv_shape
    lines.append(
        f"KV cache {plan.kv_bytes / 1e9:.2f} GB for {slots} slots"
        + (f" + {plan.prefix_rows} prefix-cache rows" if plan.prefix_rows else "")
        + f" of {tokens} tokens, on the devices that run the"
        " layers, inside the budgets (the weights get the rest)"
    )
    for batch, rate in plan.tokens_per_second.items():
        read = ", ".join(f"{device} {nbytes / 1e9:.1f}" for device, nbytes in plan.step_bytes[batch].items())
        lines.append(f"decode estimate, batch {batch}: {rate:.2f} tokens/s (GB read a step: {read})")
    c = plan.costs
    lines.append(
        f"bandwidths assumed: HBM {c.hbm / 1e9:.0f} GB/s, PCIe {c.pcie / 1e9:.0f} GB/s, CPU RAM {c.cpu / 1e9:.0f} GB/s,"
        f" disk {c.disk / 1e9:.0f} GB/s; CPU {c.cpu_flops / 1e12:.1f} TFLOP/s"
    )
    return "\n".join(lines)
