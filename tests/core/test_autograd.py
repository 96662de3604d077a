"""The low-cost Functions against naive references restated in the test (docs/method.md §2)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.autograd import (
    AvgPool2dFn,
    BinaryConv2dFn,
    BinaryLinearFn,
    InputKind,
    L1BatchNormFn,
    MaxPool2dFn,
    ReLUFn,
    ScaledCastFn,
    SignSTEFn,
    load_data,
    save_data,
)
from core.functional import pack_bits, packed_size, po2_quantize, unpack_bits


def saved_storages(fn):
    """Run ``fn`` under saved-tensor hooks; return {storage ptr: (nbytes, dtype)} kept."""
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, kept


def new_bytes(kept, *state):
    """Saved bytes that are not references to already existing state tensors."""
    ptrs = {t.untyped_storage().data_ptr() for t in state}
    return sum(n for p, (n, _) in kept.items() if p not in ptrs)


def npy(t):
    return t.detach().double().numpy()


def sign_np(a):
    return np.where(a >= 0, 1.0, -1.0)


def grid(shape, seed=0):
    """Image-like data: k / 255 * 2 - 1 for integer k (what the loaders produce)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g).float() / 255 * 2 - 1


def int_grad(shape, seed=0, dtype=torch.float16):
    """Small-integer gradients: exact in fp16 and bf16, so products are exact too."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-4, 5, shape, generator=g).to(dtype)


def packed_layer_state(weight):
    rows, fan_in = weight.shape[0], weight[0].numel()
    bits = torch.zeros(rows, packed_size(fan_in), dtype=torch.uint8)
    return bits, torch.zeros((), dtype=torch.int64)


class TestSignSTE:
    def test_forward_and_gradient_with_edge_cases(self):
        x = torch.tensor([[-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0001, 3.0, -0.0]]).half()
        x.requires_grad_(True)
        y = SignSTEFn.apply(x)
        assert y.tolist() == [[-1, -1, -1, 1, 1, 1, 1, 1, 1]]
        g = torch.arange(1.0, 10.0).half().view(1, 9)
        y.backward(g)
        mask = (np.abs(x.detach().float().numpy()) <= 1).astype(np.float32)  # inclusive |x| == 1
        np.testing.assert_array_equal(npy(x.grad), npy(g) * mask)

    def test_saves_one_bit_per_element(self):
        x = torch.randn(6, 3, 5, 5, dtype=torch.float16, requires_grad=True)
        _, kept = saved_storages(lambda: SignSTEFn.apply(x))
        assert list(kept.values()) == [(6 * packed_size(75), torch.uint8)]


class TestBinaryLinear:
    def run(self, x, kind, po2_bias=None, binary_weight=True, seed=0):
        torch.manual_seed(seed)
        w = (torch.randn(12, x.shape[1]) * 0.5).half().requires_grad_(True)
        bits, count = packed_layer_state(w)
        y, kept = saved_storages(
            lambda: BinaryLinearFn.apply(x, w, bits, count, kind, binary_weight, po2_bias)
        )
        g = int_grad(y.shape, seed, y.dtype)
        y.backward(g)
        return w, bits, count, y, g, kept

    def test_binary_input_matches_formulas(self):
        x = torch.randn(5, 21).sign().half().requires_grad_(True)
        w, bits, count, y, g, kept = self.run(x, InputKind.BINARY)
        wb, xs, gn = sign_np(npy(w)), npy(x), npy(g)
        np.testing.assert_array_equal(npy(y), xs @ wb.T)
        np.testing.assert_array_equal(npy(x.grad), gn @ wb)  # dX = dY . sign(W)
        ref = np.packbits(gn.T @ xs >= 0, axis=-1)  # sign(G), G = dY^T sign(X), sign(0) = +1
        np.testing.assert_array_equal(bits.numpy(), ref)
        assert w.grad is None and int(count) == 1
        # saved: sign(X) bits (new) + references to W and the two buffers
        assert new_bytes(kept, w, bits, count) == 5 * packed_size(21)

    def test_data_input_saves_uint8_codes_and_uses_real_x(self):
        x = grid((4, 30))
        w, bits, _, y, g, kept = self.run(x, InputKind.DATA)
        xs = npy(x)
        wb = sign_np(w.detach().double().numpy())
        np.testing.assert_allclose(npy(y), xs @ wb.T, rtol=2e-3, atol=2e-3)
        gref = npy(g).T @ xs
        got = unpack_bits(bits, 30).numpy()
        clear = np.abs(gref) > 1e-4  # away from exact ties
        np.testing.assert_array_equal(got[clear], (gref >= 0)[clear])
        assert new_bytes(kept, w, bits) - 8 == 4 * 30  # uint8 codes (+ the int64 counter)

    def test_off_grid_data_is_saved_as_fp16(self):
        x = torch.rand(4, 30) * 2 - 1
        saved = save_data(x)
        assert saved.dtype == torch.float16
        assert torch.allclose(load_data(saved), x, atol=1e-3)
        exact = grid((4, 30))
        assert save_data(exact).dtype == torch.uint8
        assert torch.allclose(load_data(save_data(exact)), exact, atol=1e-7)

    def test_po2_quantizes_incoming_gradient(self):
        x = torch.randn(6, 16).sign().half().requires_grad_(True)
        torch.manual_seed(3)
        w = torch.randn(8, 16).half().requires_grad_(True)
        bits, count = packed_layer_state(w)
        y = BinaryLinearFn.apply(x, w, bits, count, InputKind.BINARY, True, 6)
        g = (torch.randn(y.shape) * 1e-2).to(y.dtype)
        y.backward(g)
        q = po2_quantize(g.float(), 6).double().numpy()
        wb = sign_np(w.detach().double().numpy())
        np.testing.assert_allclose(npy(x.grad), q @ wb, rtol=1e-2, atol=1e-6)

    def test_real_weights_use_the_latent_values(self):
        x = torch.randn(3, 9).half().requires_grad_(True)
        w, _, _, y, g, _ = self.run(x, InputKind.REAL, binary_weight=False)
        ref = x.detach().double() @ w.detach().double().T
        np.testing.assert_allclose(npy(y), ref.numpy(), rtol=1e-2, atol=1e-2)
        gx_ref = g.double() @ w.detach().double()
        np.testing.assert_allclose(npy(x.grad), gx_ref.numpy(), rtol=1e-2, atol=1e-2)


class TestBinaryConv2d:
    @pytest.mark.parametrize(("stride", "padding"), [(1, 0), (1, 1), (2, 1)])
    def test_matches_stock_convolution(self, stride, padding):
        torch.manual_seed(stride * 10 + padding)
        x = torch.randn(3, 4, 7, 7).sign().half().requires_grad_(True)
        w = torch.randn(5, 4, 3, 3).half().requires_grad_(True)
        bits, count = packed_layer_state(w)
        y, kept = saved_storages(
            lambda: BinaryConv2dFn.apply(
                x, w, bits, count, stride, padding, InputKind.BINARY, True, None
            )
        )
        xd, wb = x.detach().double(), w.detach().double().sign()
        np.testing.assert_array_equal(
            npy(y), F.conv2d(xd, wb, stride=stride, padding=padding).numpy()
        )
        g = int_grad(y.shape, 1, y.dtype)
        y.backward(g)
        gx = torch.nn.grad.conv2d_input(x.shape, wb, g.double(), stride=stride, padding=padding)
        np.testing.assert_array_equal(npy(x.grad), gx.numpy())
        gw = torch.nn.grad.conv2d_weight(xd, w.shape, g.double(), stride=stride, padding=padding)
        ref = np.packbits((gw >= 0).reshape(5, -1).numpy(), axis=-1)
        np.testing.assert_array_equal(bits.numpy(), ref)
        assert new_bytes(kept, w, bits, count) == 3 * packed_size(4 * 7 * 7)

    def test_data_layer_skips_input_gradient(self):
        x = grid((2, 3, 6, 6))
        w = torch.randn(4, 3, 3, 3).half().requires_grad_(True)
        bits, count = packed_layer_state(w)
        y = BinaryConv2dFn.apply(x, w, bits, count, 1, 1, InputKind.DATA, True, None)
        y.float().sum().backward()
        assert x.grad is None and int(count) == 1
        gw = torch.nn.grad.conv2d_weight(
            x.double(), w.shape, torch.ones(y.shape, dtype=torch.float64), padding=1
        )
        got = unpack_bits(bits, 27).numpy()
        clear = np.abs(gw.reshape(4, -1).numpy()) > 1e-3
        np.testing.assert_array_equal(got[clear], (gw.reshape(4, -1).numpy() >= 0)[clear])


def l1bn_reference(y, beta, gout):
    """docs/method.md §2d in numpy: forward with fp16 mu/sigma, the authors' 1-bit backward."""
    axes = (0,) + tuple(range(2, y.ndim))
    shape = (1, -1) + (1,) * (y.ndim - 2)
    n = y.size / y.shape[1]
    mu = np.float16(y.mean(axis=axes)).astype(np.float64)
    sigma = np.float16(np.abs(y - mu.reshape(shape)).mean(axis=axes)).astype(np.float64)
    yh = (y - mu.reshape(shape)) / sigma.reshape(shape)
    out = yh + beta.reshape(shape)
    s = np.abs(yh).mean(axis=axes)
    g = gout / sigma.reshape(shape)
    sgn = np.where(yh >= 0, 1.0, -1.0)
    mean_g = g.sum(axis=axes) / n
    mean_gs = (g * sgn).sum(axis=axes) / n * s
    dy = g - mean_g.reshape(shape) - sgn * mean_gs.reshape(shape)
    return out, dy, gout.sum(axis=axes), mu, sigma


class TestL1BatchNorm:
    @pytest.mark.parametrize("shape", [(7, 5), (3, 4, 5, 5)])
    def test_forward_backward_and_running_stats(self, shape):
        torch.manual_seed(0)
        y = (torch.randn(shape) * 3 + 1).half().requires_grad_(True)
        beta = (torch.randn(shape[1]) * 0.1).half().requires_grad_(True)
        rm, rs = torch.zeros(shape[1]).half(), torch.ones(shape[1]).half()
        out, kept = saved_storages(lambda: L1BatchNormFn.apply(y, beta, rm, rs, 0.1))
        gout = torch.randn(shape).half()
        out.backward(gout)
        ref_out, ref_dy, ref_db, mu, sigma = l1bn_reference(
            y.detach().double().numpy(), beta.detach().double().numpy(), npy(gout)
        )
        assert out.dtype == torch.float16
        np.testing.assert_allclose(npy(out), ref_out, rtol=5e-3, atol=5e-3)
        np.testing.assert_allclose(npy(y.grad), ref_dy, rtol=2e-2, atol=2e-3)
        np.testing.assert_allclose(npy(beta.grad), ref_db, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(npy(rm), 0.1 * mu, rtol=1e-2, atol=1e-3)
        np.testing.assert_allclose(npy(rs), 0.9 + 0.1 * sigma, rtol=1e-2)
        per_sample = math.prod(shape[1:])
        assert new_bytes(kept, y, beta) == shape[0] * packed_size(per_sample) + 2 * 2 * shape[1]

    def test_uses_actual_batch_size(self):
        beta = torch.zeros(3).half()
        y = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]).half()
        out = L1BatchNormFn.apply(y, beta, torch.zeros(3).half(), torch.ones(3).half(), 0.1)
        # N = 2: mu = 2 and sigma = 1 per channel (channel 1 is constant: sigma floored)
        assert out[:, 0].tolist() == [-1.0, 1.0]
        assert out[:, 2].tolist() == [1.0, -1.0]
        assert out[:, 1].tolist() == [0.0, 0.0]

    def test_constant_channel_passes_no_gradient(self):
        # a channel constant over the batch has y_hat = 0 for any y: dy must be 0, not dout/1e-4
        # (which overflowed fp16 gradients in federated clients whose last batch held 2 images)
        y = torch.tensor([[1.0, 5.0], [3.0, 5.0], [8.0, 5.0]]).half().requires_grad_(True)
        beta = torch.zeros(2).half().requires_grad_(True)
        out = L1BatchNormFn.apply(y, beta, torch.zeros(2).half(), torch.ones(2).half(), 0.1)
        out.backward(torch.tensor([[30000.0, 30000.0], [-1000.0, 2.0], [5.0, 7.0]]).half())
        assert torch.isfinite(y.grad).all()
        assert y.grad[:, 1].tolist() == [0.0, 0.0, 0.0]
        assert y.grad[:, 0].abs().sum() > 0


class TestPooling:
    @pytest.mark.parametrize(("k", "s", "p", "hw"), [(2, 2, 0, 6), (2, 2, 0, 5), (3, 2, 1, 8)])
    def test_maxpool_matches_stock(self, k, s, p, hw):
        torch.manual_seed(k + hw)
        x = torch.randn(2, 3, hw, hw).half()  # continuous values: no ties
        xa = x.clone().requires_grad_(True)
        xb = x.float().requires_grad_(True)
        ya, kept = saved_storages(lambda: MaxPool2dFn.apply(xa, k, s, p))
        yb = F.max_pool2d(xb, k, s, p)
        assert torch.equal(ya.float(), yb)
        g = torch.randn(yb.shape)
        ya.backward(g.half())
        yb.backward(g)
        np.testing.assert_allclose(npy(xa.grad), xb.grad.numpy(), atol=2e-3)
        planes = math.ceil(math.log2(k * k))
        assert new_bytes(kept, xa) == 2 * planes * packed_size(3 * yb.shape[2] * yb.shape[3])

    def test_relu_and_avgpool(self):
        x = torch.randn(2, 3, 6, 6).half().requires_grad_(True)
        xf = x.detach().float().requires_grad_(True)
        y, kept = saved_storages(lambda: ReLUFn.apply(x))
        y.backward(torch.ones_like(y))
        torch.relu(xf).backward(torch.ones_like(xf))
        assert torch.equal(x.grad.float(), xf.grad)
        assert new_bytes(kept) == 2 * packed_size(108)
        xa = x.detach().clone().requires_grad_(True)
        xb = xf.detach().clone().requires_grad_(True)
        ya, kept = saved_storages(lambda: AvgPool2dFn.apply(xa, 2))
        g = torch.randn(ya.shape)
        ya.backward(g.half())
        F.avg_pool2d(xb, 2).backward(g)
        np.testing.assert_allclose(npy(xa.grad), xb.grad.numpy(), atol=1e-3)
        assert kept == {}

    def test_scaled_cast(self):
        x = torch.randn(3, 4).half().requires_grad_(True)
        y = ScaledCastFn.apply(x, 1024.0)
        assert y.dtype == torch.float32
        y.backward(torch.full((3, 4), 0.5))
        assert x.grad.dtype == torch.float16 and torch.all(x.grad == 512)


def test_functions_store_no_float_activations():
    """Every Function's saved state is packed uint8 (plus references and per-channel scalars)."""
    x = torch.randn(4, 8, 6, 6).half().requires_grad_(True)
    w = torch.randn(8, 8, 3, 3).half().requires_grad_(True)
    bits, count = packed_layer_state(w)
    beta = torch.zeros(8).half().requires_grad_(True)

    def net():
        h = BinaryConv2dFn.apply(x, w, bits, count, 1, 1, InputKind.BINARY, True, None)
        h = MaxPool2dFn.apply(h, 2, 2, 0)
        h = L1BatchNormFn.apply(h, beta, torch.zeros(8).half(), torch.ones(8).half(), 0.1)
        return SignSTEFn.apply(h)

    _, kept = saved_storages(net)
    state = {t.untyped_storage().data_ptr() for t in (w, bits, count)}
    big = [(n, dt) for p, (n, dt) in kept.items() if p not in state and n > 64]
    assert big and all(dt == torch.uint8 for _, dt in big)
    assert pack_bits(torch.ones(1, 8, dtype=torch.bool)).item() == 255
