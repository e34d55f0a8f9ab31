"""The int8 projection's ways on this CPU (quantize.CPU_PATHS), side by side in one run: casting the
weight to the activation dtype (`cast`), PyTorch's weight-only int8 kernel (`int8pack`), the
weight cast a block at a time for PyTorch's matmul (`blocked`) and our VNNI kernel (`vnni`,
bfloat16 only), at one Grok-1 projection's shape, per activation dtype, scale groups
and rows (tokens in the call). What `Int8Linear` picks on CPU follows from these figures.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.int8_matmul [--features 6144] [--repeats 10]
"""

from __future__ import annotations

import argparse
import time

import torch

from inference import cpu_kernels
from inference.quantize import CPU_PATHS, Int8Linear, build_linear


def seconds(fn, repeats: int) -> float:
    """The best of two rounds of `repeats` calls, per call."""
    fn()
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def cell(module: Int8Linear, path: str, x: torch.Tensor, repeats: int) -> str:
    """The time of one way, or "-" where it cannot run (vnni: bfloat16 on an AVX-512 VNNI CPU)."""
    if path == "vnni" and not (x.dtype == torch.bfloat16 and cpu_kernels.available()):
        return "-"
    matmul = getattr(module, f"{path}_matmul")
    return f"{seconds(lambda: matmul(x), repeats) * 1e3:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=6144, help="in and out features (Grok-1: 6144)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    n = args.features
    weight = torch.randint(-127, 128, (n, n), dtype=torch.int8)
    print(f"[{n} x {n}] int8 projection, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print("| activations | scale groups | rows | " + " | ".join(CPU_PATHS) + " | Int8Linear uses |")
    print("|---|---:|---:|" + "---:|" * len(CPU_PATHS) + "---|")
    for dtype in (torch.float32, torch.bfloat16):
        for groups in (1, 8):
            module: Int8Linear = build_linear(weight, torch.rand(groups, n).to(torch.bfloat16), "int8", dtype, "cpu")
            for rows in (1, 2, 8, 32, 128):
                x = torch.randn(rows, n, dtype=dtype)
                times = [cell(module, path, x, args.repeats) for path in CPU_PATHS]
                print(f"| {str(dtype).removeprefix('torch.')} | {groups} | {rows} | {' | '.join(times)} | "
                      f"{module.cpu_path(x)} |", flush=True)


if __name__ == "__main__":
    main()
