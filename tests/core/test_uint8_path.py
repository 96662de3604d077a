"""uint8 image batches end to end, the 16-bit l1-BN backward and the faster packing/rounding."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import build_model, build_optimizer
from core.autograd import BinaryLinearFn, InputKind, L1BatchNormFn
from core.data import ImageLoader
from core.data.dataset import ImageDataset
from core.data.loader import scale_to_unit
from core.functional import pack_bits, packed_size, stochastic_round_, unpack_bits
from core.layers import BinaryLinear
from core.memory import count_saved_tensors, measure_recipe
from core.recipes import from_recipe

from .test_autograd import l1bn_reference, npy, saved_storages


def codes(shape, seed=0):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).to(
        torch.uint8
    )


def as_float(k):
    """What core.data.ImageLoader yields for the codes ``k`` (float32 k / 127.5 - 1)."""
    return scale_to_unit(k.numpy())


def grads_of(model):
    out = {}
    for name, m in model.named_modules():
        if hasattr(m, "grad_bits"):
            out[name + ".grad_bits"] = m.grad_bits.clone()
    for name, p in model.named_parameters():
        if p.grad is not None:
            out[name] = p.grad.clone()
    return out


@pytest.mark.parametrize("recipe", ["standard", "lowcost", "lowcost-po2"])
@pytest.mark.parametrize(
    ("name", "in_shape"),
    [("mlp", (1, 28, 28)), ("cnv", (3, 32, 32)), ("resnete18-cifar", (3, 8, 8))],
)
def test_uint8_batch_gives_the_float_batch_forward_and_gradients(name, in_shape, recipe):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_model(name, recipe, in_shape=in_shape)
    k = codes((6, *in_shape))
    y = torch.arange(6) % 10
    results = []
    for x in (k, as_float(k)):
        model.zero_grad(set_to_none=True)
        logits = model(x)
        F.cross_entropy(logits, y).backward()
        results.append((logits.detach(), grads_of(model)))
    (la, ga), (lb, gb) = results
    # the int8 first-layer product rounds once, the float32 one per term: equal up to an fp16 ulp
    torch.testing.assert_close(la, lb, rtol=2e-3, atol=2e-3)
    assert ga.keys() == gb.keys() and ga
    for key in ga:
        if key.endswith("grad_bits"):  # 1-bit weight gradients: (almost) all signs agree
            same = unpack_bits(ga[key], ga[key].shape[1] * 8) == unpack_bits(
                gb[key], gb[key].shape[1] * 8
            )
            assert float(same.float().mean()) > 0.99, key
        else:
            torch.testing.assert_close(ga[key].float(), gb[key].float(), rtol=2e-2, atol=2e-2)
    with torch.no_grad():  # evaluation takes uint8 too
        model.eval()
        torch.testing.assert_close(model(k), model(as_float(k)), rtol=2e-3, atol=2e-3)


def test_lowcost_mlp_first_layer_outputs_match_float_path_exactly_on_most_values():
    torch.manual_seed(0)
    layer = BinaryLinear(784, 256, from_recipe("lowcost"), input_kind=InputKind.DATA)
    k = codes((50, 784), seed=3)
    a, b = layer(k), layer(as_float(k))
    assert a.dtype == b.dtype == torch.float16
    assert float((a == b).float().mean()) > 0.99
    torch.testing.assert_close(a.float(), b.float(), rtol=1e-3, atol=1e-3)


def test_uint8_batch_is_saved_as_is_without_a_copy():
    torch.manual_seed(0)
    w = torch.randn(16, 20).half().requires_grad_(True)
    bits = torch.zeros(16, packed_size(20), dtype=torch.uint8)
    count = torch.zeros((), dtype=torch.int64)
    k = codes((5, 20))
    with count_saved_tensors([w, bits, count]) as saved:
        BinaryLinearFn.apply(k, w, bits, count, InputKind.DATA, True, None)
    assert saved.bytes_by_dtype() == {"uint8": 5 * 20}  # the batch itself: 1 byte per value
    y, kept = saved_storages(
        lambda: BinaryLinearFn.apply(k, w, bits, count, InputKind.DATA, True, None)
    )
    assert k.untyped_storage().data_ptr() in kept  # no copy
    y.float().sum().backward()
    ref = as_float(k).double().T @ torch.ones(5, 16, dtype=torch.float64)  # G = X^T dY
    got = unpack_bits(bits, 20).numpy()
    clear = np.abs(ref.T.numpy()) > 1e-3
    np.testing.assert_array_equal(got[clear], (ref.T.numpy() >= 0)[clear])


@pytest.mark.parametrize("chunk", [1 << 20, 64])  # one slice, and five (2 rows each)
def test_real_weight_data_layer_takes_uint8_in_slices(monkeypatch, chunk):
    import core.autograd

    monkeypatch.setattr(core.autograd, "CHUNK_ELEMENTS", chunk)
    assert (len(core.autograd._slices(9, 30)) > 1) == (chunk < 1000)
    torch.manual_seed(0)
    layer = BinaryLinear(
        30, 7, from_recipe("lowcost"), input_kind=InputKind.DATA, binary_weight=False
    )
    k = codes((9, 30))
    # one slice: bit-identical; several: the same sums in another order, within 1 fp16 ulp
    tol = 0 if chunk > 1000 else 2**-10
    torch.testing.assert_close(layer(k), layer(as_float(k)), rtol=tol, atol=tol * 2**-4)


def test_multi_slice_backward_equals_one_slice(monkeypatch):
    """The sliced weight-gradient and input-gradient loops add up to the unsliced result."""
    import core.autograd

    def step(chunk):
        monkeypatch.setattr(core.autograd, "CHUNK_ELEMENTS", chunk)
        slices = len(core.autograd._slices(12, 40)), len(core.autograd._slices(24, 40))
        assert (min(slices) > 1) == (chunk < 1000)
        torch.manual_seed(0)
        layer = BinaryLinear(40, 24, from_recipe("lowcost"))
        x = (torch.rand(12, 40) * 2 - 1).half().requires_grad_()
        layer(x).float().pow(2).sum().backward()
        grads = {n: b.clone() for n, b in layer.named_buffers() if "grad" in n}
        return x.grad.clone(), grads

    one_dx, one_dw = step(1 << 20)
    many_dx, many_dw = step(64)
    torch.testing.assert_close(many_dx, one_dx, rtol=0, atol=0)
    assert one_dw and all(torch.equal(many_dw[n], one_dw[n]) for n in one_dw)


def test_uint8_into_a_hidden_layer_is_a_one_line_error():
    layer = BinaryLinear(8, 4, from_recipe("lowcost"))  # input_kind binary
    with pytest.raises(TypeError, match="only a model's first"):
        layer(codes((2, 8)))


def test_image_loader_raw_yields_the_codes():
    images = codes((7, 1, 4, 4)).numpy()
    ds = ImageDataset(images, (np.arange(7) % 3).astype(np.int64), 3, "toy")
    raw = list(ImageLoader(ds, batch_size=3, shuffle=False, raw=True))
    flt = list(ImageLoader(ds, batch_size=3, shuffle=False))
    assert [x.dtype for x, _ in raw] == [torch.uint8] * 3
    for (xr, yr), (xf, yf) in zip(raw, flt, strict=True):
        assert torch.equal(scale_to_unit(xr.numpy()), xf) and torch.equal(yr, yf)
    assert "raw=True" in repr(ImageLoader(ds, raw=True))


def test_measure_recipe_feeds_each_recipe_its_natural_input():
    common = dict(in_shape=(1, 8, 8), steps=0, phase="memory")
    std = measure_recipe("mlp", "standard", 8, **common)
    low = measure_recipe("mlp", "lowcost", 8, **common)
    assert std["input_dtype"] == "float32" and low["input_dtype"] == "uint8"
    # the low-cost first layer keeps the 8 x 64 batch itself as its saved input
    assert low["measured"]["saved_by_dtype"]["uint8"] >= 8 * 64
    assert "uint8" not in std["measured"]["saved_by_dtype"]


def test_lowcost_training_on_uint8_batches_decreases_the_loss():
    torch.manual_seed(0)
    model = build_model("mlp", "lowcost", in_shape=(1, 8, 8))
    opt = build_optimizer(model, "lowcost", lr=1e-2)
    k = codes((64, 1, 8, 8), seed=5)
    y = (k.float().mean((1, 2, 3)) > 127.5).long()  # learnable from the pixels
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.cross_entropy(model(k), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1


class TestL1BatchNormLowPrecisionBackward:
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
    def test_backward_matches_reference_in_every_gradient_dtype(self, dtype):
        # the output (hence its gradient) has beta's dtype: fp16 (the recipes), bf16 or fp32
        torch.manual_seed(1)
        y = (torch.randn(40, 6) * 3 + 1).half().requires_grad_(True)
        beta = torch.zeros(6, dtype=dtype).requires_grad_(True)
        rm, rs = torch.zeros(6, dtype=dtype), torch.ones(6, dtype=dtype)
        out = L1BatchNormFn.apply(y, beta, rm, rs, 0.1)
        gout = torch.randn(40, 6).to(dtype)
        out.backward(gout)
        ref = l1bn_reference(y.detach().double().numpy(), np.zeros(6), npy(gout))[1]
        assert y.grad.dtype == torch.float16
        np.testing.assert_allclose(npy(y.grad), ref, rtol=2e-2, atol=4e-3)

    def test_sums_that_overflow_fp16_fall_back_to_float32(self):
        y = torch.randn(200, 3).half().requires_grad_(True)
        beta = torch.zeros(3).half().requires_grad_(True)
        out = L1BatchNormFn.apply(y, beta, torch.zeros(3).half(), torch.ones(3).half(), 0.1)
        gout = torch.full((200, 3), 30000.0).half()  # sum 6e6: beyond fp16's 65504
        out.backward(gout)
        _, ref_dy, _, _, sigma = l1bn_reference(y.detach().double().numpy(), np.zeros(3), npy(gout))
        assert torch.isfinite(y.grad).all()
        # 16-bit arithmetic: within ~1 fp16 ulp of the largest term, dout / sigma (~4e4 here)
        ulp = 2.0**-10 * float(np.abs(npy(gout) / sigma).max())
        np.testing.assert_allclose(npy(y.grad), ref_dy, rtol=2e-2, atol=ulp)


@pytest.mark.parametrize("shape", [(3, 13), (2, 5, 7), (1, 1), (4, 64), (0, 9), (5, 0), (2, 3, 17)])
def test_pack_bits_matches_numpy_packbits(shape):
    x = torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(len(shape))).bool()
    ref = np.packbits(x.numpy(), axis=-1, bitorder="big")
    np.testing.assert_array_equal(pack_bits(x).numpy(), ref)
    np.testing.assert_array_equal(pack_bits(x.int()).numpy(), ref)
    if x.dim() > 1 and x.numel():  # non-contiguous input
        xt = x.transpose(0, -1).contiguous().transpose(0, -1)
        np.testing.assert_array_equal(pack_bits(xt).numpy(), ref)


class TestStochasticRoundInPlace:
    @pytest.mark.parametrize(("dtype", "ulp"), [(torch.float16, 2**-10), (torch.bfloat16, 2**-7)])
    def test_unbiased_between_neighbours(self, dtype, ulp):
        gen = torch.Generator().manual_seed(0)
        for base in (1.0, -1.0):
            x = torch.full((200_001,), base * (1 + 0.3 * ulp))
            r = stochastic_round_(x.clone(), dtype, gen).double()
            assert set(r.unique().tolist()) <= {base, base * (1 + ulp)}
            assert abs(float(r.mean()) - base * (1 + 0.3 * ulp)) < 0.01 * ulp

    def test_noise_fields_are_independent(self):
        # four 16-bit fields of one 64-bit draw feed four neighbours: their decisions must not
        # be correlated (each rounds up with probability 0.3, independently)
        x = torch.full((400_000,), 1 + 0.3 * 2**-10)
        up = (stochastic_round_(x, torch.float16, torch.Generator().manual_seed(2)) > 1).double()
        fields = up.view(-1, 4)
        assert abs(float(fields.mean()) - 0.3) < 0.005
        corr = np.corrcoef(fields.T.numpy())
        assert np.abs(corr - np.eye(4)).max() < 0.02

    def test_out_receives_the_rounded_values(self):
        x = torch.tensor([0.5, -0.25, 1.0, 3.0, 0.0])
        out = torch.empty(5, dtype=torch.float16)
        got = stochastic_round_(x.clone(), torch.float16, torch.Generator().manual_seed(1), out=out)
        assert got is out and torch.equal(out, x.half())
        with pytest.raises(ValueError, match="out has dtype"):
            stochastic_round_(x.clone(), torch.float16, None, out=torch.empty(5))
        with pytest.raises(ValueError, match="contiguous float32"):
            stochastic_round_(x.half(), torch.float16)
