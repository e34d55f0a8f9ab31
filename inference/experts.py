"""Experts placed one by one, each computed where its weights are.

With `--offload experts` (inference/placement.py `place_experts`) every layer's attention, norms
and router stay on the main device, and each expert of a layer lives on the main device, in CPU
RAM, or memory-mapped from the converted checkpoint's safetensors (`mmap`: no second copy, the
page cache keeps the hot ones). `PlacedExperts` replaces a layer's `Experts` (inference/model.py)
and, per forward:

- computes the tokens routed to a main-device expert there;
- sends the tokens routed to a CPU-RAM or memory-mapped expert to the CPU (a token is E numbers,
  12 KB at Grok-1's width, against 600 MB of an expert's weights), computes them there with the
  CPU kernels (inference/quantize.py), and sends the results back;
- unless the cost model (`copy_pays`) says that copying the expert's weights to the GPU for this
  step costs less than computing its tokens on the CPU (prefill, big batches).

On CUDA the CPU's experts overlap the GPU's: the tokens for the CPU are copied out first, the GPU
experts' kernels are then queued (they run asynchronously) while the CPU computes its own, and
the results come back with non-blocking copies from pinned memory. Copies of whole experts run on
a side stream, so they overlap the GPU's other experts too.

Bytes read are counted per location (`bytes_read`), so a run can be held against `plan`'s model.
"""

import json
import math
import mmap
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call

from inference.model import Expert, Experts, GrokConfig
from inference.quantize import build_linear

PROJECTIONS = ("linear", "linear_v", "linear_1")
# safetensors' dtype names, for the tensors a converted checkpoint holds
SAFETENSORS_DTYPES = {"I8": torch.int8, "BF16": torch.bfloat16, "F32": torch.float32}


# Share of the memory's read bandwidth our int8 kernels reach in a CPU decode step at batch 1:
# 10.6 of 13.2 GB/s, one thread against a one-thread read bound (bench/llama_peer.py,
# docs/BENCHMARKS.md "grokweb against llama.cpp on CPU"); llama.cpp reached 58% there.
CPU_EFFICIENCY = 0.8
CPU_PEAK = 300e9  # 8 channels of DDR5-4800 (12 channels: 460e9)


@dataclass(frozen=True)
class Costs:
    """Bandwidths (bytes/s) and CPU compute rate (FLOP/s): the per-step copy decision and `plan`'s
    decode estimate. The defaults describe an H100 SXM host with a DDR5 server CPU; measure your
    own (README "Placement")."""

    hbm: float = 3.35e12  # H100 SXM HBM3 (H200: 4.8e12)
    pcie: float = 25e9  # PCIe 4.0 x16, achievable pinned host -> GPU copy (PCIe 5.0: ~50e9)
    cpu: float = CPU_PEAK * CPU_EFFICIENCY  # DDR5 server RAM as the int8 kernels read it
    disk: float = 5e9  # NVMe (PCIe 4.0) sequential read, when the page cache misses
    cpu_flops: float = 1e12  # int8-weight matmul rate of a 32+-core AVX-512 server CPU


def copy_pays(tokens: int, nbytes: int, parameters: int, costs: Costs) -> bool:
    """Whether copying an expert of `nbytes` (`parameters` weights) to the GPU costs less than
    computing its `tokens` on the CPU: reading the weights once plus 2 FLOPs per weight and token."""
    on_cpu = nbytes / costs.cpu + tokens * 2 * parameters / costs.cpu_flops
    return nbytes / costs.pcie < on_cpu


class MappedCheckpoint:
    """A converted checkpoint's tensors as views of its memory-mapped safetensors shards."""

    def __init__(self, path: Path, weight_map: dict[str, str]):
        self.maps: dict[str, mmap.mmap] = {}
        self.entries: dict[str, tuple[str, int, torch.dtype, tuple[int, ...]]] = {}  # key -> shard, offset, dtype, shape
        for shard in sorted(set(weight_map.values())):
            with open(path / shard, "rb") as file:
                # ACCESS_COPY: a private mapping torch can view without a read-only warning; nothing writes it.
                self.maps[shard] = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
            header_len = int.from_bytes(self.maps[shard][:8], "little")
            header = json.loads(self.maps[shard][8 : 8 + header_len])
            for key, info in header.items():
                if key != "__metadata__" and info["dtype"] in SAFETENSORS_DTYPES:
                    start = 8 + header_len + info["data_offsets"][0]
                    self.entries[key] = (shard, start, SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]))

    def describe(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        _, _, dtype, shape = self.entries[key]
        return shape, dtype

    def tensor(self, key: str) -> Tensor:
        """The tensor, reading nothing until it is used (a copy only if the file misaligns it)."""
        shard, start, dtype, shape = self.entries[key]
        view = torch.frombuffer(self.maps[shard], dtype=dtype, count=math.prod(shape), offset=start).view(shape)
        return view if start % dtype.itemsize == 0 else view.clone()

    def nbytes(self, key: str) -> int:
        shape, dtype = self.describe(key)
        return dtype.itemsize * math.prod(shape)

    def release(self, key: str) -> None:
        """Drop this process's pages of the tensor (the page cache keeps them): memory-mapped
        experts do not pile up in the resident set."""
        shard, start, _, _ = self.entries[key]
        first = start - start % mmap.PAGESIZE
        self.maps[shard].madvise(mmap.MADV_DONTNEED, first, start + self.nbytes(key) - first)


class MappedExpert:
    """An expert left in the checkpoint: built from the memory map for the step that uses it."""

    def __init__(self, checkpoint: MappedCheckpoint, prefix: str, config: GrokConfig, quant: str, dtype: torch.dtype):
        self.checkpoint, self.prefix, self.config, self.quant, self.dtype = checkpoint, prefix, config, quant, dtype
        self.keys = [f"{prefix}.{p}.{leaf}" for p in PROJECTIONS for leaf in ("weight", "scales")]
        self.nbytes = sum(checkpoint.nbytes(key) for key in self.keys)

    def build(self, device: torch.device) -> Expert:
        with torch.device("meta"):
            expert = Expert(self.config)
        for p in PROJECTIONS:
            weight = self.checkpoint.tensor(f"{self.prefix}.{p}.weight")
            scales = self.checkpoint.tensor(f"{self.prefix}.{p}.scales")
            expert.set_submodule(p, build_linear(weight, scales, self.quant, self.dtype, device))
        return expert

    def release(self) -> None:
        for key in self.keys:
            self.checkpoint.release(key)


def module_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


class PlacedExperts(Experts):
    """A layer's experts, each where `locations` says: the main `device`, "cpu" or "mmap".

    Resident experts (device, cpu) are the modules of the list; a memory-mapped one stays on meta
    in the list (for its shapes) and is built from `mapped[index]` when a step routes tokens to it.
    """

    def __init__(
        self,
        experts: Experts,
        locations: list[str],
        mapped: dict[int, MappedExpert],
        device: torch.device,
        costs: Costs,
    ):
        super().__init__(experts)
        self.locations, self.mapped, self.device, self.costs = locations, mapped, device, costs
        self.parameters_each = sum(p.numel() for p in experts[0].parameters())
        self.nbytes = [mapped[i].nbytes if i in mapped else module_bytes(e) for i, e in enumerate(experts)]
        self.bytes_read: Counter[str] = Counter()  # location -> bytes of expert weights read; "copied": over PCIe
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def forward(self, x: Tensor, chosen: Tensor, gates: Tensor) -> Tensor:
        k = chosen.shape[1]
        flat = chosen.flatten()  # [N * k]
        # (token, rank) pairs grouped by expert, with one host sync for the group sizes
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=len(self)).tolist()
        out = torch.zeros_like(x)  # [N, E]
        on_host, on_device = [], []
        # 1. Start what leaves the GPU's stream: tokens for the CPU, weight copies for the GPU.
        start = 0
        for index, n in enumerate(counts):
            if not n:
                continue
            picks = order[start : start + n]
            start += n
            token, rank = picks // k, picks % k
            where = self.locations[index]
            self.bytes_read[where] += self.nbytes[index]
            if where == str(self.device):
                on_device.append((self[index], token, rank))
            elif self.device.type != "cpu" and copy_pays(n, self.nbytes[index], self.parameters_each, self.costs):
                on_device.append((self._copy_to_device(index), token, rank))
            else:
                on_host.append((index, token, x[token].to("cpu", non_blocking=True), gates[token, rank, None].to("cpu", non_blocking=True)))
        inputs_ready = torch.cuda.Event() if self.device.type == "cuda" else None
        if inputs_ready is not None:
            inputs_ready.record()
            torch.cuda.current_stream(self.device).wait_stream(self.copy_stream)
        # 2. Queue the GPU's experts (asynchronous on CUDA) ...
        for expert, token, rank in on_device:
            out.index_add_(0, token, expert(x[token]) * gates[token, rank, None])
        # 3. ... while the CPU computes its own.
        if inputs_ready is not None:
            inputs_ready.synchronize()
        for index, token, rows, gate in on_host:
            expert = self._on_host(index)
            y = expert(rows) * gate
            if index in self.mapped:
                self.mapped[index].release()
            if self.device.type == "cuda":
                y = y.pin_memory()  # a non-blocking copy back needs pinned memory
            out.index_add_(0, token, y.to(self.device, non_blocking=True))
        return out

    def _on_host(self, index: int) -> nn.Module:
        return self.mapped[index].build(torch.device("cpu")) if index in self.mapped else self[index]

    def _copy_to_device(self, index: int) -> Callable[[Tensor], Tensor]:
        """The expert with its weights copied to the GPU for this step, on the side stream."""
        self.bytes_read["copied"] += self.nbytes[index]
        source = self._on_host(index)
        with torch.cuda.stream(self.copy_stream):
            # non-blocking: the weights of CPU-RAM experts are pinned (`place`)
            weights = {name: p.to(self.device, non_blocking=True) for name, p in source.named_parameters()}
        for w in weights.values():
            w.record_stream(torch.cuda.current_stream(self.device))  # used there, freed after
        if index in self.mapped:
            self.mapped[index].release()
        return lambda rows: functional_call(source, weights, (rows,))


def bytes_read(model: nn.Module) -> Counter[str]:
    """Expert weight bytes read since the last `reset_bytes_read`, per location, over all layers."""
    total: Counter[str] = Counter()
    for module in model.modules():
        if isinstance(module, PlacedExperts):
            total.update(module.bytes_read)
    return total


def reset_bytes_read(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, PlacedExperts):
            module.bytes_read.clear()


def place(
    model: nn.Module,
    locations: list[list[str]],
    checkpoint: MappedCheckpoint | None,
    device: torch.device,
    quant: str,
    dtype: torch.dtype,
    costs: Costs,
) -> None:
    """Replace each layer's `Experts` by `PlacedExperts` as `locations` says (inference/placement.py
    `place_experts`); the resident experts' weights are already loaded where they belong."""
    for i, (layer, row) in enumerate(zip(model.layers, locations)):
        mapped = {
            x: MappedExpert(checkpoint, f"layers.{i}.moe.experts.{x}", model.config, quant, dtype)
            for x, where in enumerate(row)
            if where == "mmap"
        }
        if device.type == "cuda":  # pinned, so the copy of a hot CPU expert to the GPU is non-blocking
            for x, where in enumerate(row):
                if where == "cpu":
                    for p in layer.moe.experts[x].parameters():
                        p.data = p.data.pin_memory()
        layer.moe.experts = PlacedExperts(layer.moe.experts, row, mapped, device, costs)
