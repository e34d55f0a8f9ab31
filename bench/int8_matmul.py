"""The int8 projection's two ways on this CPU, side by side in one run: PyTorch's weight-only int8
kernel (`Int8Linear.kernel_matmul`) against casting the weight to the activation dtype
(`Int8Linear.cast_matmul`), at one Grok-1 projection's shape, per activation dtype, scale groups
and rows (tokens in the call). What `Int8Linear` picks on CPU follows from these figures.

    OMP_NUM_THREADS=1 .venv/bin/python bench/int8_matmul.py [--features 6144] [--repeats 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the repository root
from inference.quantize import Int8Linear, build_linear  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=6144, help="in and out features (Grok-1: 6144)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    n = args.features
    weight = torch.randint(-127, 128, (n, n), dtype=torch.int8)
    print(f"[{n} x {n}] int8 projection, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print("| activations | scale groups | rows | cast weight | int8 kernel | kernel speed-up | Int8Linear uses |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for dtype in (torch.float32, torch.bfloat16):
        for groups in (1, 8):
            module: Int8Linear = build_linear(weight, torch.rand(groups, n).to(torch.bfloat16), "int8", dtype, "cpu")
            for rows in (1, 2, 8, 32):
                x = torch.randn(rows, n, dtype=dtype)
                cast = seconds(lambda: module.cast_matmul(x), args.repeats)
                kernel = seconds(lambda: module.kernel_matmul(x), args.repeats)
                uses = "kernel" if module._cpu_kernel_fits(x, rows) else "cast"
                print(f"| {str(dtype).removeprefix('torch.')} | {groups} | {rows} | {cast * 1e3:.2f} ms | "
                      f"{kernel * 1e3:.2f} ms | {cast / kernel:.2f}x | {uses} |", flush=True)


if __name__ == "__main__":
    main()
