"""One full-size MLP projection (4096 -> 14336, 160 rows: a batch of windows at prefill) on CPU in every placement:
fp32, bf16, `fbgemm-int8` and bitsandbytes nf4 / int8: seconds (best of 3) and relative error against fp32. The
kernel-level comparison behind the choice of `--quantize` formats (docs/quantization.md); a measurement, not a test.

    ./run python bench/bench_projection.py
"""

import time

import bitsandbytes as bnb
import torch
from torch import nn

from naturelm.quantization import Int8Linear

IN_FEATURES, OUT_FEATURES, ROWS = 4096, 14336, 160


def _time(name: str, layer: nn.Module, inputs: torch.Tensor, exact: torch.Tensor) -> None:
    with torch.inference_mode():
        layer(inputs)
        times = []
        for _ in range(3):
            started = time.perf_counter()
            output = layer(inputs)
            times.append(time.perf_counter() - started)
    error = float((output.float() - exact).norm() / exact.norm())
    print(f"{name:12s} {min(times):.3f} s  relative error {error:.4f}", flush=True)


def main() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(IN_FEATURES, OUT_FEATURES, bias=False).requires_grad_(False)
    inputs = torch.randn(ROWS, IN_FEATURES)
    exact = linear(inputs)
    weight = linear.weight.to(torch.bfloat16)
    _time("fp32", linear, inputs, exact)
    bf16 = nn.Linear(IN_FEATURES, OUT_FEATURES, bias=False, dtype=torch.bfloat16).requires_grad_(False)
    bf16.weight.copy_(weight)
    _time("bf16", bf16, inputs.bfloat16(), exact)
    _time("fbgemm-int8", Int8Linear(linear), inputs.bfloat16(), exact)
    nf4 = bnb.nn.Linear4bit(IN_FEATURES, OUT_FEATURES, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    nf4.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    _time("nf4", nf4.to("cpu"), inputs.bfloat16(), exact)
    int8 = bnb.nn.Linear8bitLt(IN_FEATURES, OUT_FEATURES, bias=False, has_fp16_weights=False)
    int8.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    _time("int8", int8.to("cpu"), inputs.bfloat16(), exact)


if __name__ == "__main__":
    main()
