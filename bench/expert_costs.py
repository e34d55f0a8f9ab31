"""The CPU constants of the expert cost model (inference/experts.py `Costs`), measured on this host.

- `cpu`: the rate the CPU's int8 kernels read an expert's weights at decode (1 token): one of
  Grok-1's expert projections (6144 x 32768 int8) through `Int8Linear`, bfloat16 activations;
  next to it, the plain RAM read rate (a sum over 1 GiB) for scale;
- `cpu_flops`: the rate once the rows are many (64 tokens), where compute, not reading, bounds it.

    flock /tmp/bench.lock .venv/bin/python -m bench.expert_costs

It prints the `--cpu-gbs` and `--cpu-tflops` values to pass to `plan`, `generate`, `bench`, `logits`.
PCIe and HBM cannot be measured without a GPU: bench/gpu_check.py measures decode on one.
"""

import time

import torch

from inference.quantize import build_linear

REPEATS = 5


def best_seconds(run) -> float:
    run()  # warm-up
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    data = torch.ones(2**30 // 4)  # 1 GiB of float32
    ram = data.numel() * 4 / best_seconds(data.sum)
    del data
    emb, ffn = 6144, 32768
    weight = torch.randint(-127, 128, (ffn, emb), dtype=torch.int8)
    projection = build_linear(weight, torch.full((1, ffn), 1e-3, dtype=torch.bfloat16), "int8", torch.bfloat16, "cpu")
    nbytes = weight.numel() + ffn * 2
    with torch.inference_mode():
        one = best_seconds(lambda: projection(torch.randn(1, emb, dtype=torch.bfloat16)))
        many = best_seconds(lambda: projection(torch.randn(64, emb, dtype=torch.bfloat16)))
    print(f"{torch.get_num_threads()} threads")
    print(f"RAM read (sum of 1 GiB float32): {ram / 1e9:.1f} GB/s")
    print(f"int8 projection {ffn}x{emb}, 1 token: {one * 1e3:.1f} ms = {nbytes / one / 1e9:.1f} GB/s of weights  -> --cpu-gbs {nbytes / one / 1e9:.0f}")
    print(f"int8 projection, 64 tokens: {many * 1e3:.1f} ms = {2 * 64 * weight.numel() / many / 1e12:.3f} TFLOP/s"
          f"  -> --cpu-tflops {2 * 64 * weight.numel() / many / 1e12:.2f}")


if __name__ == "__main__":
    main()
