"""Pure math of core.functional: signs, bit packing, PO2 quantizer, stochastic rounding."""

import math

import numpy as np
import pytest
import torch

from core.functional import (
    batch_slices,
    binary_sign,
    bits_to_signs,
    pack_bits,
    packed_size,
    po2_quantize,
    random_bits,
    stochastic_round,
    unpack_bits,
)


def real_values_with_zeros(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    x[::5] = 0.0
    x[1] = -0.0
    return x


class TestSign:
    def test_zero_maps_to_plus_one(self):
        x = torch.tensor([-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0])
        assert binary_sign(x).tolist() == [-1, -1, 1, 1, 1, 1]

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    def test_keeps_or_sets_dtype(self, dtype):
        x = real_values_with_zeros(50)
        assert binary_sign(x.to(dtype)).dtype == dtype
        assert binary_sign(x, torch.bfloat16).dtype == torch.bfloat16
        np.testing.assert_array_equal(binary_sign(x).numpy(), np.where(x.numpy() >= 0, 1, -1))


class TestPacking:
    @pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 100, 785])
    def test_round_trip_and_numpy_layout(self, n):
        g = torch.Generator().manual_seed(n)
        bits = torch.rand(3, n, generator=g) > 0.5
        packed = pack_bits(bits)
        assert packed.dtype == torch.uint8
        assert packed.shape == (3, packed_size(n)) == (3, math.ceil(n / 8))
        np.testing.assert_array_equal(packed.numpy(), np.packbits(bits.numpy(), axis=-1))
        assert torch.equal(unpack_bits(packed, n), bits)
        signs = bits_to_signs(packed, n, torch.float16)
        assert torch.equal(signs, torch.where(bits, 1.0, -1.0).half())

    def test_padding_bits_are_zero(self):
        packed = pack_bits(torch.ones(1, 9, dtype=torch.bool))
        assert packed.tolist() == [[255, 128]]

    def test_wrong_byte_count_is_rejected(self):
        with pytest.raises(ValueError, match="does not hold 17 bits"):
            unpack_bits(torch.zeros(2, dtype=torch.uint8), 17)
        with pytest.raises(ValueError, match="does not hold"):
            bits_to_signs(torch.zeros(2, dtype=torch.uint8), 17)


def po2_reference(g: np.ndarray, bias: int) -> np.ndarray:
    """docs/method.md §2e restated in numpy (float64)."""
    m = np.abs(g).max()
    b = -np.round(np.log2(m)) + bias
    with np.errstate(divide="ignore"):
        e = np.clip(np.round(np.log2(np.abs(g) * 2.0**b)), -8, 7)
    return np.where(g >= 0, 1.0, -1.0) * 2.0 ** (e - b)


class TestPO2:
    @pytest.mark.parametrize("bias", [6, 8])
    def test_matches_formula_including_zeros(self, bias):
        g = real_values_with_zeros(200, seed=bias) * 1e-3
        q = po2_quantize(g, bias)
        ref = po2_reference(g.double().numpy(), bias)
        np.testing.assert_allclose(q.double().numpy(), ref, rtol=1e-6)
        zeros = g == 0
        assert (q[zeros] > 0).all()  # sign(0) = +1: zeros become +2^(-8-b)
        mant, _ = np.frexp(np.abs(q.numpy()))
        assert np.all(mant == 0.5)  # every value is a power of two

    def test_chunked_max_gives_same_result(self):
        g = torch.randn(64)
        full = po2_quantize(g, 8)
        parts = torch.cat([po2_quantize(c, 8, max_abs=float(g.abs().max())) for c in g.split(16)])
        assert torch.equal(full, parts)

    def test_exponent_range_is_16_levels(self):
        g = torch.logspace(-12, 0, 400, base=2.0)
        q = po2_quantize(g, 8)
        assert len(torch.unique(q)) <= 16
        assert float(q.max()) == 0.5  # b_off = 8 halves the maximum (docs/method.md §2e)
        assert float(po2_quantize(g, 6).max()) == 1.0

    def test_all_zero_tensor_is_unchanged(self):
        assert torch.equal(po2_quantize(torch.zeros(5), 8), torch.zeros(5))

    def test_keeps_dtype(self):
        assert po2_quantize(torch.randn(10).half(), 8).dtype == torch.float16


class TestStochasticRounding:
    @pytest.mark.parametrize(("dtype", "ulp"), [(torch.float16, 2**-10), (torch.bfloat16, 2**-7)])
    def test_unbiased_between_neighbours(self, dtype, ulp):
        gen = torch.Generator().manual_seed(0)
        for base in (1.0, -1.0):
            x = torch.full((200_000,), base * (1 + 0.3 * ulp))
            r = stochastic_round(x, dtype, random_bits(x.shape, gen)).double()
            assert set(r.unique().tolist()) <= {base, base * (1 + ulp)}
            assert abs(float(r.mean()) - float(x[0])) < 0.01 * ulp

    def test_representable_values_are_exact(self):
        x = torch.tensor([0.5, -0.25, 1.0, 3.0, 0.0])
        noise = random_bits(x.shape, torch.Generator().manual_seed(1))
        assert torch.equal(stochastic_round(x, torch.float16, noise), x.half())

    def test_bad_dtypes_are_rejected(self):
        noise = torch.zeros(2, dtype=torch.int32)
        with pytest.raises(ValueError, match="float32 input"):
            stochastic_round(torch.zeros(2).half(), torch.float16, noise)
        with pytest.raises(ValueError, match="float16 or bfloat16"):
            stochastic_round(torch.zeros(2), torch.float64, noise)


def test_batch_slices_cover_the_batch():
    slices = batch_slices(10, 100, 300)
    assert [(s.start, s.stop) for s in slices] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert batch_slices(4, 1000, 10) == [slice(i, i + 1) for i in range(4)]
