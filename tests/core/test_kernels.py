"""Float32 and bfloat16 kernels for +-1 products give the same training step (core.kernels)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import core.autograd
from core import build_model
from core.kernels import ENV_VAR, binary_product_dtype, cpu_has_native_bf16, dtype_from_env

X86_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c\n"
X86_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
ARM_A72 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
ARM_V86 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"), [(X86_AVX2, False), (X86_BF16, True), (ARM_A72, False), (ARM_V86, True)]
)
def test_native_bf16_is_read_from_cpu_features(cpuinfo, native):
    assert cpu_has_native_bf16(cpuinfo) is native


def test_env_names_the_product_dtype_or_says_how_to_fix_it(monkeypatch):
    assert dtype_from_env(" Float32 ") is torch.float32
    assert dtype_from_env("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match=f"{ENV_VAR}='fp8'.*bfloat16 or float32"):
        dtype_from_env("fp8")
    binary_product_dtype.cache_clear()
    monkeypatch.setenv(ENV_VAR, "bfloat16")
    try:
        assert binary_product_dtype() is torch.bfloat16
    finally:
        binary_product_dtype.cache_clear()


def _step_state(model_name, recipe, in_shape, batch, kernel, monkeypatch):
    """Loss, packed weight-gradient bits and real gradients of one step with ``kernel`` products."""
    monkeypatch.setattr(core.autograd, "binary_product_dtype", lambda: kernel)
    torch.manual_seed(0)
    model = build_model(model_name, recipe, num_classes=10, in_shape=in_shape)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (batch, *in_shape), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 10, (batch,), generator=gen)
    loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    loss = loss.detach()
    bits = {n: b.clone() for n, b in model.named_buffers() if n.endswith("grad_bits")}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert bits, "the model has no binary layer: the comparison would be empty"
    return float(loss), bits, grads


@pytest.mark.parametrize("recipe", ["lowcost", "lowcost-po2", "lowcost-bop"])
def test_dense_float32_kernels_train_exactly_like_bf16_ones(recipe, monkeypatch, one_torch_thread):
    """bf16 x +-1 matrix products are exact (float32 accumulation, one rounding) in both kernels.

    Where this CPU's bf16 matmul rounds partial sums (aarch64 cores with bf16 instructions, e.g.
    qemu ``-cpu max``: measured), :mod:`core.kernels` uses float32 kernels and the float64
    comparison below covers the dense layers instead.
    """
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(64, 784, generator=g) * 10).to(torch.bfloat16)
    s = torch.randint(0, 2, (784, 64), generator=g).float().mul_(2).sub_(1)
    if not torch.equal(a @ s.to(torch.bfloat16), (a.float() @ s).to(torch.bfloat16)):
        pytest.skip("this CPU's bf16 matmul rounds partial sums: nothing exact to compare with")
    a = _step_state("mlp", recipe, (1, 28, 28), 64, torch.bfloat16, monkeypatch)
    b = _step_state("mlp", recipe, (1, 28, 28), 64, torch.float32, monkeypatch)
    assert a[0] == b[0]
    for name in a[1]:
        differing = (a[1][name] != b[1][name]).float().mean().item()
        assert differing == 0.0, f"{name}: {differing:.2%} of the packed gradient bytes differ"
    for name in a[2]:
        torch.testing.assert_close(a[2][name], b[2][name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    ("model", "recipe", "in_shape", "batch"),
    [
        ("cnv", "lowcost", (3, 32, 32), 24),
        ("cnv", "lowcost-po2", (3, 32, 32), 24),
        ("mlp", "lowcost", (1, 28, 28), 64),
        ("mlp", "lowcost-bop", (1, 28, 28), 64),
    ],
)
def test_float32_kernels_match_the_exact_float64_step(
    model, recipe, in_shape, batch, monkeypatch, one_torch_thread
):
    """Float32 kernels give the exact (float64) result rounded to bf16, up to float32 sums.

    A CPU's bf16 convolution backward need not: on an AVX2-only x86 it rounds partial sums
    (59 % of dW values differ from the float64 result rounded to bf16, 0.1 % of signs; over
    this step 2.3 % of packed gradient bytes and 0.9 % in the beta gradients, against 0.02 %
    and 0.05 % for float32 kernels), so float32 kernels compute what a bf16 kernel is meant to.
    """
    exact = _step_state(model, recipe, in_shape, batch, torch.float64, monkeypatch)
    fast = _step_state(model, recipe, in_shape, batch, torch.float32, monkeypatch)
    assert fast[0] == pytest.approx(exact[0], rel=1e-6)
    for name in exact[1]:
        differing = (exact[1][name] != fast[1][name]).float().mean().item()
        assert differing <= 1e-3, f"{name}: {differing:.2%} of the packed gradient bytes differ"
    for name, want in exact[2].items():  # dY rounds to 16 bits between layers: relative to max
        error = (fast[2][name] - want).abs().max() / want.abs().max()
        assert error <= 2e-3, f"{name}: off by {error:.2e} of its largest value"


def test_exact_bf16_kernels_are_recognised_and_inexact_ones_refused(monkeypatch):
    from core import kernels

    exact = kernels.bf16_kernels_are_exact()
    assert exact in (True, False)  # this CPU's answer; the product below decides it either way
    binary_product_dtype.cache_clear()
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(kernels, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(kernels, "bf16_kernels_are_exact", lambda: False)
    try:
        assert binary_product_dtype() is torch.float32  # native but rounding partial sums
        binary_product_dtype.cache_clear()
        monkeypatch.setattr(kernels, "bf16_kernels_are_exact", lambda: True)
        assert binary_product_dtype() is torch.bfloat16
    finally:
        binary_product_dtype.cache_clear()
