"""LowCostAdam against Adam restated in numpy on the 1-bit gradient (docs/method.md §2b, §2f)."""

import numpy as np
import torch

from core import build_model, build_optimizer
from core.functional import pack_bits
from core.layers import BinaryLinear, L1BatchNorm
from core.optim import LowCostAdam
from core.recipes import LOWCOST_GRAD_SCALE, from_recipe

LOWCOST = from_recipe("lowcost")


def set_packed_grad(layer, g_sign):
    """What a backward writes: sign(G) bits, and one more count."""
    layer.grad_bits.copy_(pack_bits((g_sign >= 0).view(g_sign.shape[0], -1)))
    layer.grad_count.add_(1)


def adam_reference(w, grads, lr, eps=1e-7, b1=0.9, b2=0.999):
    """Plain float64 Adam (Kingma & Ba) on the given gradient sequence."""
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return w


def make(rows=16, cols=24, lr=1e-2, seed=0):
    torch.manual_seed(seed)
    layer = BinaryLinear(cols, rows, LOWCOST)
    opt = LowCostAdam(layer.parameters(), [layer], lr=lr, grad_scale=LOWCOST_GRAD_SCALE)
    return layer, opt


class TestPackedStep:
    def test_matches_adam_on_scaled_sign_gradient_with_ste_mask(self):
        layer, opt = make()
        with torch.no_grad():
            layer.weight[0, :4] = torch.tensor([1.5, -1.25, 1.0, -1.0]).half()  # two frozen
        w0 = layer.weight.detach().double().numpy().copy()
        n = w0.size
        signs = [torch.randn(16, 24).sign() for _ in range(3)]
        for s in signs:  # |W| == 1 is inside the mask; these gradients move those weights inward
            s[0, 2], s[0, 3] = 1.0, -1.0
        w = w0.copy()
        grads = []
        for s in signs:
            # docs/method.md §2b: dW = sign(G) / sqrt(N) * 1[|W| <= 1], with W before the step
            grads.append(s.double().numpy() / np.sqrt(n) * (np.abs(w) <= 1))
            w = adam_reference(w0, grads, 1e-2)
        for s in signs:
            set_packed_grad(layer, s)
            opt.step()
        got = layer.weight.detach().double().numpy()
        ulp = np.spacing(np.abs(w).astype(np.float16)).astype(np.float64)
        # fp16 moments (round-to-nearest) and stochastic weight rounding: <1 % of a step, 3 ulps
        bad = np.abs(got - w) > 3 * ulp + 0.01 * 1e-2 * len(signs)
        assert not bad.any(), (got[bad], w[bad], ulp[bad])
        assert got[0, 0] == 1.5 and got[0, 1] == -1.25  # frozen beyond +-1 (§9 item 1)
        assert layer.weight.grad is None

    def test_moments_and_weights_stay_16_bit(self):
        layer, opt = make()
        set_packed_grad(layer, torch.randn(16, 24))
        opt.step()
        state = opt.state[layer.weight]
        assert state["exp_avg"].dtype == torch.float16
        assert state["exp_avg_sq"].dtype == torch.float16
        assert layer.weight.dtype == torch.float16

    def test_no_fresh_gradient_means_no_step(self):
        layer, opt = make()
        w0 = layer.weight.detach().clone()
        opt.step()  # no backward yet
        assert torch.equal(layer.weight, w0)
        set_packed_grad(layer, torch.randn(16, 24))
        opt.zero_grad()  # marks the packed gradient stale without writing to the buffers
        opt.step()
        assert torch.equal(layer.weight, w0)
        set_packed_grad(layer, torch.randn(16, 24))
        opt.step()
        assert not torch.equal(layer.weight, w0)

    def test_stochastic_rounding_keeps_sub_ulp_steps(self):
        # lr 1e-5 is 1/50 of an fp16 ulp at 0.5: round-to-nearest would never move the weight
        layer, opt = make(rows=64, cols=64, lr=1e-5)
        with torch.no_grad():
            layer.weight.fill_(0.5)
        for _ in range(100):
            set_packed_grad(layer, torch.ones(64, 64))
            opt.step()
        drift = 0.5 - float(layer.weight.detach().double().mean())
        assert abs(drift - 100 * 1e-5) < 0.15 * 100 * 1e-5, drift

    def test_state_dict_round_trip_keeps_moment_dtypes(self):
        layer, opt = make()
        bn = L1BatchNorm(16, LOWCOST)
        opt = LowCostAdam([*layer.parameters(), *bn.parameters()], [layer], lr=1e-3)
        set_packed_grad(layer, torch.randn(16, 24))
        bn.beta.grad = torch.randn(16).half()
        opt.step()
        fresh = LowCostAdam([*layer.parameters(), *bn.parameters()], [layer], lr=1e-3)
        fresh.load_state_dict(opt.state_dict())
        assert fresh.state[layer.weight]["exp_avg"].dtype == torch.float16
        assert fresh.state[bn.beta]["exp_avg_sq"].dtype == torch.bfloat16


def test_dense_parameters_get_adam_on_unscaled_gradient():
    bn = L1BatchNorm(8, LOWCOST)
    opt = LowCostAdam(bn.parameters(), [], lr=1e-2, grad_scale=1024.0)
    grads = [torch.randn(8) * 1e-3 for _ in range(3)]
    for g in grads:
        bn.beta.grad = (g * 1024).half()
        opt.step()
    ref = adam_reference(
        np.zeros(8), [(g * 1024).half().double().numpy() / 1024 for g in grads], 1e-2
    )
    np.testing.assert_allclose(bn.beta.detach().double().numpy(), ref, atol=2e-4)
    assert opt.state[bn.beta]["exp_avg"].dtype == torch.bfloat16


def test_build_optimizer_per_recipe():
    std = build_optimizer(build_model("mlp", "standard", 10, (1, 8, 8)), "standard", lr=3e-3)
    assert type(std) is torch.optim.Adam
    assert std.defaults["eps"] == 1e-7 and std.defaults["lr"] == 3e-3
    low = build_optimizer(build_model("mlp", "lowcost", 10, (1, 8, 8)), "lowcost")
    assert isinstance(low, LowCostAdam) and low.grad_scale == LOWCOST_GRAD_SCALE


def test_low_cost_training_does_not_import_torch_dynamo():
    """A process that trains a low-cost recipe stays free of torch._dynamo (~800 modules,
    +66 MiB, ~2.7 s in every fresh ClientApp process): core.optim marks torch.optim's wrappers
    as disabled. (torch.optim.Adam.step of the float32 `standard` baseline still imports it.)"""
    import subprocess
    import sys

    code = (
        "import sys, torch, torch.nn.functional as F\n"
        "from core.models import build_model\n"
        "from core.optim import build_optimizer\n"
        "for recipe in ('lowcost', 'lowcost-bop'):\n"
        "    m = build_model('mlp', recipe, 10, (1, 8, 8))\n"
        "    o = build_optimizer(m, recipe)\n"
        "    o.zero_grad()\n"
        "    F.cross_entropy(m(torch.rand(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()\n"
        "    o.step(); o.state_dict()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
