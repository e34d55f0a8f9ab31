"""CPU kernels for int8 projections: our own, where PyTorch's are slow at Grok-1's width.

- `int8_linear`: few rows (decode, batched decode) in bfloat16, a small C kernel
  (inference/cpu_kernels.c, AVX-512 VNNI) that reads the released int8 weight once per call.
  It is compiled with the system's C compiler on first use and cached under var/cpu_kernels/
  (keyed by the source's hash); without a compiler or without VNNI, `available()` is False and
  Int8Linear keeps to PyTorch.
- `blocked_matmul`: many rows (prefill): the weight is cast to the activation dtype a block of
  output rows at a time into a buffer small enough for the cache (our loop in bfloat16, PyTorch's
  copy elsewhere), and each block goes through PyTorch's matmul (oneDNN: AMX in bfloat16 on CPUs
  that have it).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("cpu_kernels.c")
CACHE = Path(__file__).resolve().parents[1] / "var" / "cpu_kernels"
# Portable across AVX-512 VNNI CPUs (not -march=native): one cached build serves them all.
CFLAGS = ("-O3", "-shared", "-fPIC", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vnni", "-mfma")
REQUIRED_CPU_FLAGS = ("avx512f", "avx512bw", "avx512_vnni")
MAX_GROUP_WIDTH = 8192  # the kernel's int32 sums cannot overflow up to this many inputs a group
BLOCK_BYTES = 2**21  # one block of the cast weight: about a core's L2 cache


def _cpu_has_vnni() -> bool:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return all(flag in flags for flag in REQUIRED_CPU_FLAGS)


def _build() -> Path:
    """The compiled kernel, building it unless a build of this source is cached."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:16]
    target = CACHE / f"cpu_kernels-{key}.so"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        # Build under a temporary name and rename: concurrent first uses never load a partial file.
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            built = Path(tmp) / target.name
            compiler = os.environ.get("CC", "cc")
            subprocess.run([compiler, *CFLAGS, str(SOURCE), "-o", str(built), "-lm"], check=True, capture_output=True)
            built.replace(target)
    return target


@functools.cache
def _library() -> ctypes.CDLL | None:
    if not _cpu_has_vnni():
        return None
    try:
        library = ctypes.CDLL(str(_build()))
    except (OSError, subprocess.CalledProcessError):
        return None  # no compiler, or one without AVX-512: PyTorch's kernels serve instead
    library.int8_linear_bf16.restype = None
    library.int8_to_bf16.restype = None
    return library


def available() -> bool:
    """Whether `int8_linear` can run on this machine (builds the kernel on first call)."""
    return _library() is not None


def int8_linear(rows: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    """bfloat16 rows [N, in] x int8 weight [G, out, in/G] with bfloat16 scales [G, out] -> [N, out] bfloat16."""
    if not available():
        raise RuntimeError("int8_linear needs an AVX-512 VNNI CPU and a C compiler (see inference/cpu_kernels.py)")
    groups, out_features, width = weight.shape
    if rows.dtype != torch.bfloat16 or weight.dtype != torch.int8 or scales.dtype != torch.bfloat16:
        raise TypeError("int8_linear takes bfloat16 rows, an int8 weight and bfloat16 scales")
    if rows.shape[-1] != groups * width or width > MAX_GROUP_WIDTH:
        raise ValueError(f"int8_linear: rows of {rows.shape[-1]} for a weight {tuple(weight.shape)}")
    rows, weight, scales = rows.contiguous(), weight.contiguous(), scales.contiguous()
    y = torch.empty(rows.shape[0], out_features, dtype=torch.bfloat16)
    _library().int8_linear_bf16(
        ctypes.c_void_p(rows.data_ptr()), rows.shape[0], rows.shape[1], ctypes.c_void_p(weight.data_ptr()),
        ctypes.c_void_p(scales.data_ptr()), groups, out_features, ctypes.c_void_p(y.data_ptr()),
        torch.get_num_threads(),
    )
    return y


def cast(weight: Tensor, out: Tensor) -> None:
    """out[...] = weight (int8 -> out's dtype, exact); our loop for bfloat16 where the kernels run."""
    if out.dtype == torch.bfloat16 and weight.is_contiguous() and out.is_contiguous() and available():
        _library().int8_to_bf16(ctypes.c_void_p(weight.data_ptr()), ctypes.c_void_p(out.data_ptr()), ctypes.c_size_t(weight.numel()))
    else:
        out.copy_(weight)


def blocked_matmul(rows: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    """rows [N, in] x int8 weight [G, out, in/G] with scales [G, out] -> [N, out], in the rows' dtype.

    The numerics of casting the whole weight (Int8Linear.cast_matmul): each group's product in
    the rows' dtype, times its scales, summed over the groups.
    """
    groups, out_features, width = weight.shape
    block = max(1, BLOCK_BYTES // (width * rows.element_size()))  # output rows a block
    buffer = torch.empty(block, width, dtype=rows.dtype)  # reused by every block of the call
    scales = scales.to(rows.dtype)
    parts = rows.chunk(groups, dim=-1)  # G x [N, in/G]
    y = None
    for g in range(groups):
        part = torch.empty(rows.shape[0], out_features, dtype=rows.dtype)  # [N, out]
        for start in range(0, out_features, block):
            stop = min(start + block, out_features)
            block_cast = buffer[: stop - start]
            cast(weight[g, start:stop], block_cast)
            torch.mm(parts[g], block_cast.T, out=part[:, start:stop])
        part.mul_(scales[g])
        y = part if y is None else y.add_(part)
    return y
