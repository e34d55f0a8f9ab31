"""Quantization as a module swap.

The model (inference/model.py) builds every projection as a plain `nn.Linear`. Here those
modules are replaced, on the meta device, by the kind a quant mode uses; the loader then fills
each one from the released int8 weight [out, in] and its bfloat16 group scales [G, out]:

- "int8": `Int8Linear` keeps the released weight and scales and computes with them directly
  (weight-only int8: the scales are applied per group after the matmul, never to the weight).
  Memory: 1 byte per parameter, as released.
- "nf4": bitsandbytes `Linear4bit` (NormalFloat4), quantized from the dequantised weight when the
  module is moved to its device. About 0.52 bytes per parameter.
- "none": a float `nn.Linear` holding the dequantised weight, int8 * scales computed in the
  activation dtype as the reference does (so rounded to bfloat16 in bfloat16).

Scales split the input dimension into G equal groups: input row r uses scales[r // (in / G)].
"""

import torch
from torch import Tensor, nn

from inference import cpu_kernels
from inference.model import Grok, GrokConfig

QUANT_MODES = ("int8", "nf4", "none")
DEFAULT_QUANT = "int8"  # the weights as released: a byte per parameter, no rounding beyond xAI's own


def scale_groups(name: str) -> int:
    """Scale groups of a projection in the release: 8 for the attention output and the expert down projection."""
    return 8 if name.endswith(("attn.linear", "linear_1")) else 1


# Which way Int8Linear computes on CPU (bench/int8_matmul.py, bench/llama_peer.py):
# - bfloat16, up to VNNI_MAX_ROWS rows (decode, batched decode): our VNNI kernel
#   (inference/cpu_kernels.c), which reads the weight once at up to ~90% of the memory's speed
#   and is compute-bound beyond;
# - more rows (prefill), weights too big for the caches: the weight cast a cache-sized block at a
#   time for PyTorch's matmul (AMX in bfloat16); small weights are cast whole;
# - float32, big weights: PyTorch's weight-only int8 kernel up to 2 rows (its float32 path does
#   not batch rows), blocks beyond;
# - bfloat16 without VNNI: PyTorch's int8 kernel for big weights whose group width is a multiple
#   of 16 (PyTorch 2.13 crashes otherwise; Grok-1's are 768 and wider).
CPU_PATHS = ("vnni", "blocked", "int8pack", "cast")
VNNI_MAX_ROWS = 32
INT8_KERNEL_MIN_BLOCK = 2**20  # weights in one scale group's block
INT8_KERNEL_MAX_ROWS_F32 = 2
INT8_KERNEL_BF16_WIDTH = 16


def default_dtype(config: GrokConfig, device: str | torch.device) -> torch.dtype:
    """The faster activation dtype: bfloat16, but float32 on CPU for a model whose projections fit
    the caches (the tiny demo), where the int8 kernels do not pay (see above)."""
    small = config.emb_size**2 < INT8_KERNEL_MIN_BLOCK
    return torch.float32 if torch.device(device).type == "cpu" and small else torch.bfloat16


class Int8Linear(nn.Module):
    """y = x @ (weight * scales).T without materialising the float weight.

    The weight is kept as G contiguous blocks [G, out, in/G], one per scale group. On CPU the
    way (`path`, one of CPU_PATHS) is chosen per call by `cpu_path` unless `path` is set; on
    other devices, as in gpt-fast, the weight is cast to the activation dtype inside the matmul
    (compiled, the cast fuses into it).
    """

    def __init__(self, in_features: int, out_features: int, groups: int = 1, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(
            torch.empty(groups, out_features, in_features // groups, dtype=torch.int8, device=device),
            requires_grad=False,
        )  # [G, out, in/G]
        self.scales = nn.Parameter(
            torch.empty(groups, out_features, dtype=torch.bfloat16, device=device), requires_grad=False
        )  # [G, out]
        self.path: str | None = None  # a fixed CPU way (tests, benches); None: cpu_path picks per call

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)  # [N, in]
        path = "cast" if x.device.type != "cpu" else self.path or self.cpu_path(rows)
        return getattr(self, f"{path}_matmul")(rows).view(*x.shape[:-1], self.out_features)  # [..., out]

    def cpu_path(self, rows: Tensor) -> str:
        """The fastest way for these rows [N, in] on CPU (see the table above the class)."""
        n, width = rows.shape[0], self.weight.shape[2]
        big = self.weight[0].numel() >= INT8_KERNEL_MIN_BLOCK
        if rows.dtype == torch.bfloat16:
            if n <= VNNI_MAX_ROWS and width <= cpu_kernels.MAX_GROUP_WIDTH and cpu_kernels.available():
                return "vnni"
            if big and n > VNNI_MAX_ROWS:
                return "blocked"
            if big and width % INT8_KERNEL_BF16_WIDTH == 0:
                return "int8pack"
        elif rows.dtype == torch.float32 and big:
            return "int8pack" if n <= INT8_KERNEL_MAX_ROWS_F32 else "blocked"
        return "cast"

    def vnni_matmul(self, rows: Tensor) -> Tensor:
        """[N, in] -> [N, out] through our VNNI kernel (bfloat16 only)."""
        return cpu_kernels.int8_linear(rows, self.weight, self.scales)

    def blocked_matmul(self, rows: Tensor) -> Tensor:
        """[N, in] -> [N, out] with the weight cast a block at a time (the numerics of cast_matmul)."""
        return cpu_kernels.blocked_matmul(rows, self.weight, self.scales)

    def int8pack_matmul(self, rows: Tensor) -> Tensor:
        """[N, in] -> [N, out] through `_weight_int8pack_mm`, one call a scale group."""
        scales = self.scales.to(rows.dtype)  # [G, out]
        parts = rows.chunk(self.weight.shape[0], dim=-1)  # G x [N, in/G]
        y = torch._weight_int8pack_mm(parts[0].contiguous(), self.weight[0], scales[0])  # [N, out]
        for g in range(1, len(parts)):
            y += torch._weight_int8pack_mm(parts[g].contiguous(), self.weight[g], scales[g])
        return y

    def cast_matmul(self, rows: Tensor) -> Tensor:
        """[N, in] -> [N, out] with the weight cast to the rows' dtype (int8 -> float is exact)."""
        groups = self.weight.shape[0]
        xg = rows.view(-1, groups, self.in_features // groups).transpose(0, 1)  # [G, N, in/G]
        y = torch.bmm(xg, self.weight.to(rows.dtype).transpose(1, 2))  # [G, N, out]; the transpose is free in bmm
        return (y * self.scales.to(rows.dtype)[:, None, :]).sum(0)  # [N, out]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, groups={self.scales.shape[0]}"


def dequantize(weight: Tensor, scales: Tensor, dtype: torch.dtype) -> Tensor:
    """int8 [out, in] * bf16 scales [G, out] -> [out, in] in `dtype`.

    The product is taken in `dtype`, as the reference does: rounded in bfloat16, exact in float32
    (the golden float32 logits agree with the exact product to 3e-7, with a bf16-rounded one to 1e-3).
    """
    out_features, groups = weight.shape[0], scales.shape[0]
    w = weight.view(out_features, groups, -1).to(dtype)  # [out, G, in/G]
    return (w * scales.T[:, :, None].to(dtype)).view(out_features, -1)


def _nf4_linear(in_features: int, out_features: int, dtype: torch.dtype, device=None) -> nn.Module:
    import bitsandbytes as bnb  # imported lazily: slow to import, and only nf4 needs it

    return bnb.nn.Linear4bit(
        in_features, out_features, bias=False, compute_dtype=dtype, quant_type="nf4", device=device
    )


def empty_linear(name: str, in_features: int, out_features: int, quant: str, dtype: torch.dtype) -> nn.Module:
    """A meta-device projection of the kind `quant` uses (weights come later)."""
    if quant == "int8":
        return Int8Linear(in_features, out_features, scale_groups(name), device="meta")
    if quant == "nf4":
        return _nf4_linear(in_features, out_features, dtype, device="meta")
    if quant == "none":
        return nn.Linear(in_features, out_features, bias=False, device="meta", dtype=dtype)
    raise ValueError(f"unknown quant mode {quant!r}; choose one of {', '.join(QUANT_MODES)}")


def build_linear(weight: Tensor, scales: Tensor, quant: str, dtype: torch.dtype, device: str | torch.device) -> nn.Module:
    """The finished projection from a released int8 weight [out, in] and bf16 scales [G, out], on `device`."""
    out_features, in_features = weight.shape
    if quant == "int8":
        groups = scales.shape[0]
        module = Int8Linear(in_features, out_features, groups, device="meta")
        # [out, in] -> [G, out, in/G]: a view for one group, a copy of this one tensor for several.
        blocks = weight.view(out_features, groups, -1).transpose(0, 1).contiguous()
        module.weight = nn.Parameter(blocks.to(device), requires_grad=False)
        module.scales = nn.Parameter(scales.to(device), requires_grad=False)
        return module
    if quant == "none":
        module = nn.Linear(in_features, out_features, bias=False, device="meta", dtype=dtype)
        module.weight = nn.Parameter(dequantize(weight, scales, dtype).to(device), requires_grad=False)
        return module
    if quant == "nf4":
        import bitsandbytes as bnb

        module = _nf4_linear(in_features, out_features, dtype, device="meta")
        module.weight = bnb.nn.Params4bit(dequantize(weight, scales, dtype), requires_grad=False, quant_type="nf4")
        return module.to(device)  # bitsandbytes quantizes when the weight is moved to its device
    raise ValueError(f"unknown quant mode {quant!r}; choose one of {', '.join(QUANT_MODES)}")


def swap_linears(model: nn.Module, quant: str, dtype: torch.dtype) -> nn.Module:
    """Replace every plain nn.Linear of a meta-device model by an empty module of the `quant` kind."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear:
            model.set_submodule(name, empty_linear(name, module.in_features, module.out_features, quant, dtype))
    return model


def meta_model(config: GrokConfig, quant: str, dtype: torch.dtype) -> Grok:
    """The model skeleton on the meta device as `quant` lays it out in memory: sizes are exact, no weights."""
    with torch.device("meta"):
        model = Grok(config)
    model.embed.to(dtype)  # the embedding's dtype is the activation dtype
    return swap_linears(model, quant, dtype).requires_grad_(False).eval()
