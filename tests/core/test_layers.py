"""Layers: the standard recipe is stock autograd; the low-cost one keeps fp16 state and bits."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.autograd import InputKind
from core.functional import packed_size
from core.layers import (
    BinaryConv2d,
    BinaryLinear,
    L1BatchNorm,
    MaxPool,
    SignActivation,
    batch_norm,
    ste_sign,
)
from core.recipes import from_recipe

STANDARD, LOWCOST, PO2 = (from_recipe(n) for n in ("standard", "lowcost", "lowcost-po2"))


def naive_ste_sign(x):
    """The textbook detach trick, written independently of core."""
    clipped = torch.clamp(x, -1, 1)
    return clipped + (torch.where(clipped >= 0, 1.0, -1.0) - clipped).detach()


class TestStandardIsStockAutograd:
    def test_ste_sign_forward_and_gradient(self):
        x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.3, 1.0, 2.0], requires_grad=True)
        y = ste_sign(x)
        assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]
        y.backward(torch.ones(7))
        assert x.grad.tolist() == [0, 1, 1, 1, 1, 1, 0]  # 1[|x| <= 1], inclusive

    def test_binary_linear_matches_naive_reference_exactly(self):
        torch.manual_seed(0)
        layer = BinaryLinear(10, 6, STANDARD)
        ref_w = layer.weight.detach().clone().requires_grad_(True)
        x = torch.randn(4, 10).sign().requires_grad_(True)
        xr = x.detach().clone().requires_grad_(True)
        y = layer(x)
        yr = F.linear(xr, naive_ste_sign(ref_w))
        assert torch.equal(y, yr)
        g = torch.randn(4, 6)
        y.backward(g)
        yr.backward(g)
        assert torch.equal(layer.weight.grad, ref_w.grad)
        assert torch.equal(x.grad, xr.grad)

    def test_binary_conv_matches_naive_reference_exactly(self):
        torch.manual_seed(1)
        layer = BinaryConv2d(3, 4, 3, STANDARD, padding=1)
        ref_w = layer.weight.detach().clone().requires_grad_(True)
        x = torch.randn(2, 3, 5, 5).sign()
        y = layer(x)
        yr = F.conv2d(x, naive_ste_sign(ref_w), padding=1)
        assert torch.equal(y, yr)
        y.sum().backward()
        yr.sum().backward()
        assert torch.equal(layer.weight.grad, ref_w.grad)

    def test_standard_modules_are_stock(self):
        assert isinstance(batch_norm(8, STANDARD, spatial=True), nn.BatchNorm2d)
        bn = batch_norm(8, STANDARD, spatial=False)
        assert isinstance(bn, nn.BatchNorm1d) and bn.eps == 1e-4 and bn.momentum == 0.1
        assert BinaryLinear(4, 3, STANDARD).weight.dtype == torch.float32
        assert not hasattr(BinaryLinear(4, 3, STANDARD), "grad_bits")


class TestLowCostLayers:
    def test_state_is_fp16_and_scratch_is_not_persisted(self):
        layer = BinaryConv2d(3, 8, 3, LOWCOST)
        assert layer.weight.dtype == torch.float16
        assert (
            layer.grad_bits.shape == (8, packed_size(27)) and layer.grad_bits.dtype == torch.uint8
        )
        assert set(layer.state_dict()) == {"weight"}
        bn = L1BatchNorm(8, LOWCOST)
        assert {k: v.dtype for k, v in bn.state_dict().items()} == {
            "beta": torch.float16,
            "running_mean": torch.float16,
            "running_sigma": torch.float16,
        }

    def test_init_is_normal_with_variance_one_over_fan_in(self):
        torch.manual_seed(0)
        layer = BinaryLinear(400, 300, LOWCOST)
        std = float(layer.weight.detach().float().std())
        assert abs(std - 400**-0.5) < 0.05 * 400**-0.5
        assert not L1BatchNorm(5, LOWCOST).beta.detach().any()

    def test_linear_writes_packed_gradient_not_dense(self):
        layer = BinaryLinear(16, 4, LOWCOST)
        x = torch.randn(3, 16).sign().half().requires_grad_(True)
        layer(x).float().sum().backward()
        assert layer.weight.grad is None
        assert int(layer.grad_count) == 1
        assert x.grad is not None and x.grad.dtype == torch.float16

    def test_bn_eval_uses_running_statistics(self):
        bn = L1BatchNorm(3, LOWCOST)
        with torch.no_grad():
            bn.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
            bn.running_sigma.copy_(torch.tensor([2.0, 2.0, 2.0]))
            bn.beta.fill_(0.5)
        bn.eval()
        y = torch.tensor([[3.0, 2.0, 1.0]]).half()
        assert bn(y).tolist() == [[1.5, 0.5, -0.5]]

    def test_repr_names_the_choices(self):
        layer = BinaryLinear(784, 256, PO2, input_kind=InputKind.DATA)
        assert "784, 256, w=sign, input=data, recipe=lowcost-po2(b=8)" in repr(layer)
        assert "recipe=lowcost" in repr(SignActivation(LOWCOST))

    def test_bad_input_kind_is_rejected(self):
        with pytest.raises(ValueError, match="unknown input_kind 'float'"):
            BinaryLinear(4, 4, LOWCOST, input_kind="float")

    def test_saved_state_is_far_below_standard(self):
        def saved_bytes(recipe):
            torch.manual_seed(0)
            net = nn.Sequential(
                BinaryConv2d(8, 16, 3, recipe, padding=1),
                MaxPool(2, recipe),
                batch_norm(16, recipe, spatial=True),
                SignActivation(recipe),
            )
            x = torch.randn(4, 8, 8, 8).sign().to(recipe.act_dtype).requires_grad_(True)
            state = {t.untyped_storage().data_ptr() for t in [*net.parameters(), *net.buffers()]}
            kept = {}

            def pack(t):
                p = t.untyped_storage().data_ptr()
                if p not in state:
                    kept[p] = t.untyped_storage().nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                net(x)
            return sum(kept.values())

        std, low = saved_bytes(STANDARD), saved_bytes(LOWCOST)
        assert low * 30 < std, (std, low)
