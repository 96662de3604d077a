"""Which dtype the low-cost recipe multiplies ``+-1`` operands in, on this CPU.

A product of two ``+-1`` tensors (a binary layer's input times ``sign(W)``), or of ``+-1``
signs and a bfloat16 gradient, is exact in float32, and every operand is exact in bfloat16; a
bf16 kernel is meant to accumulate in float32 and round once to bf16. CPUs with native bfloat16
arithmetic (x86 ``avx512_bf16`` / ``amx_bf16``, Arm ``bf16``) run such products ~3x faster in
bfloat16 than in float32; CPUs without it (AVX2-only x86, the Cortex-A72/A76 of Raspberry Pi
4/5) emulate bfloat16 and run them 2-10x *slower* than float32 (measured on an AVX2 EPYC:
MNIST-MLP lowcost step 78 -> 42 ms, CNV 14.5 -> 1.5 s at batch 100, one thread). There the
products run in float32 kernels on bf16 operand values, each result rounded once to bf16
(:func:`core.autograd._product`), on slices of the same bytes as the 16-bit ones; so do CPUs
whose native bf16 kernels do not round like that (:func:`bf16_kernels_are_exact`):

- dense layers: the same bits as the bf16 kernel (tests/core/test_kernels.py);
- convolutions: the exact (float64) result rounded to bf16, which the emulated bf16 convolution
  backward is not (it rounds partial sums: 0.1 % of dW signs differ from the exact ones).
``BITFED_BINARY_PRODUCTS=bfloat16|float32`` overrides the detection (e.g. to reproduce a
measurement made on another CPU); the pre-BN output ``Y`` and its gradient stay bfloat16
whichever kernel computed them.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch

ENV_VAR = "BITFED_BINARY_PRODUCTS"
_CHOICES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 flags / Arm features


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether ``/proc/cpuinfo`` (or ``cpuinfo``) lists a native bfloat16 arithmetic feature."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
        except OSError:  # not Linux: assume no native bf16 (float32 is exact and never slow)
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and _NATIVE_BF16_FLAGS & set(value.split()):
            return True
    return False


def dtype_from_env(value: str) -> torch.dtype:
    """Return the dtype ``BITFED_BINARY_PRODUCTS`` names, or raise a one-line error with the fix."""
    try:
        return _CHOICES[value.strip().lower()]
    except KeyError:
        raise ValueError(
            f"{ENV_VAR}={value!r} is not a product dtype: set it to bfloat16 or float32, or unset "
            "it to choose by CPU"
        ) from None


def bf16_kernels_are_exact() -> bool:
    """Whether bf16 matmul and convolution backward here equal float32 ones rounded once.

    Not every native bf16 kernel accumulates in float32: on aarch64 cores with bf16
    instructions torch's matrix product rounds partial sums for ``K >= 256`` (one bf16 ulp in
    ~30 % of a 256-wide layer's activation gradients, tests/core/test_cross_platform.py). A
    small product and a small convolution backward of bf16 values by +-1 settle it (a few ms).
    """
    gen = torch.Generator().manual_seed(0)
    g = (torch.randn(64, 784, generator=gen) * 10).to(torch.bfloat16)
    s = torch.randint(0, 2, (784, 64), generator=gen).float().mul_(2).sub_(1)
    if not torch.equal(g @ s.to(torch.bfloat16), (g.float() @ s).to(torch.bfloat16)):
        return False
    gy = torch.randn(4, 32, 8, 8, generator=gen).to(torch.bfloat16)
    x = torch.randint(0, 2, (4, 32, 8, 8), generator=gen).float().mul_(2).sub_(1)
    w = torch.randint(0, 2, (32, 32, 3, 3), generator=gen).float().mul_(2).sub_(1)

    def backward(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        gx, gw, _ = torch.ops.aten.convolution_backward(
            gy.to(dtype), x.to(dtype), w.to(dtype), None, [1, 1], [1, 1], [1, 1], False,
            [0, 0], 1, [True, True, False],
        )  # fmt: skip
        return gx.to(torch.bfloat16), gw.to(torch.bfloat16)

    return all(map(torch.equal, backward(torch.bfloat16), backward(torch.float32)))


@cache
def binary_product_dtype() -> torch.dtype:
    """Return bfloat16 where native bf16 kernels are exact (or the env says so), else float32."""
    value = os.environ.get(ENV_VAR)
    if value:
        return dtype_from_env(value)
    native = cpu_has_native_bf16() and bf16_kernels_are_exact()
    return torch.bfloat16 if native else torch.float32
