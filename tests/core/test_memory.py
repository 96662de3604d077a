"""core.memory: the §5 analytical model, saved-tensor and state counts, the measured step peak."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from core.memory import (
    MALLOC_ENV,
    ModelShape,
    analytical_memory,
    count_saved_tensors,
    measure_step,
    state_bytes,
    time_steps,
    trace_model,
)

REPO = Path(__file__).resolve().parents[2]
MIB = 2**20

# Per-sample shapes of the paper's models, written out by hand from docs/method.md §3.
MLP = ModelShape(
    weights=(784 * 256, 256 * 256, 256 * 256, 256 * 256, 256 * 10),
    inputs=(784, 256, 256, 256, 256),
    norm_outputs=(256, 256, 256, 256, 10),
    max_activation=784,
)
CNV = ModelShape(
    weights=tuple(k * 9 for k in (3 * 64, 64 * 64, 64 * 128, 128 * 128, 128 * 256, 256 * 256))
    + (256 * 512, 512 * 512, 512 * 10),
    inputs=(
        3072,
        64 * 30 * 30,
        64 * 14 * 14,
        128 * 12 * 12,
        128 * 5 * 5,
        256 * 3 * 3,
        256,
        512,
        512,
    ),
    # post-pool sizes: layer 2 pools 28 -> 14, layer 4 pools 10 -> 5
    norm_outputs=(
        64 * 30 * 30,
        64 * 14 * 14,
        128 * 12 * 12,
        128 * 5 * 5,
        256 * 3 * 3,
        256,
        512,
        512,
        10,
    ),
    max_activation=64 * 30 * 30,
)
BINARYNET = ModelShape(
    weights=tuple(k * 9 for k in (3 * 128, 128 * 128, 128 * 256, 256 * 256, 256 * 512, 512 * 512))
    + (8192 * 1024, 1024 * 1024, 1024 * 10),
    inputs=(
        3072,
        128 * 32 * 32,
        128 * 16 * 16,
        256 * 16 * 16,
        256 * 8 * 8,
        512 * 8 * 8,
        8192,
        1024,
        1024,
    ),
    norm_outputs=(
        128 * 32 * 32,
        128 * 16 * 16,
        256 * 16 * 16,
        256 * 8 * 8,
        512 * 8 * 8,
        8192,
        1024,
        1024,
        10,
    ),
    max_activation=128 * 32 * 32,
)


def cnv_standin() -> nn.Module:
    """CNV of docs/method.md §3 from stock modules (pool after the activation, valid padding)."""

    def block(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
        layers = [nn.Conv2d(c_in, c_out, 3, bias=False), nn.BatchNorm2d(c_out), nn.Hardtanh()]
        return layers + ([nn.MaxPool2d(2)] if pool else [])

    return nn.Sequential(
        *block(3, 64, False), *block(64, 64, True), *block(64, 128, False),
        *block(128, 128, True), *block(128, 256, False), *block(256, 256, False),
        nn.Flatten(),
        nn.Linear(256, 512, bias=False), nn.BatchNorm1d(512), nn.Hardtanh(),
        nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.Hardtanh(),
        nn.Linear(512, 10, bias=False), nn.BatchNorm1d(10),
    )  # fmt: skip


class TestAnalytical:
    @pytest.mark.parametrize(
        ("shape", "std_mib", "low_mib", "po2_ratio"),
        [(MLP, 7.78, 2.82, 2.98), (CNV, 141.42, 34.98, 7.12), (BINARYNET, 535.45, 142.82, 4.94)],
    )
    def test_reproduces_method_section5_table(self, shape, std_mib, low_mib, po2_ratio):
        std = analytical_memory(shape, "standard", 100)
        low = analytical_memory(shape, "lowcost", 100)
        po2 = analytical_memory(shape, "lowcost-po2", 100)
        assert std["total"] / MIB == pytest.approx(std_mib, abs=0.005)
        assert low["total"] / MIB == pytest.approx(low_mib, abs=0.005)
        assert std["total"] / po2["total"] == pytest.approx(po2_ratio, abs=0.005)
        assert std["total"] == sum(v for k, v in std.items() if k != "total")

    def test_binarynet_breakdown(self):
        std = analytical_memory(BINARYNET, "standard", 100)
        low = analytical_memory(BINARYNET, "lowcost", 100)
        got = {k: (round(std[k] / MIB, 2), round(low[k] / MIB, 2)) for k in std if k != "total"}
        assert got == {
            "weights": (213.96, 81.91),
            "saved_inputs": (111.33, 4.03),
            "norm_saved": (110.16, 6.89),
            "grad_buffers": (100.0, 50.0),
        }

    def test_formula_by_hand(self):
        shape = ModelShape(weights=(10, 6), inputs=(5, 2), norm_outputs=(2, 3), max_activation=5)
        std = analytical_memory(shape, "standard", 4)
        assert std == {
            "weights": 128 * 16 // 8,
            "saved_inputs": 32 * 4 * 7 // 8,
            "norm_saved": 32 * 4 * 5 // 8,
            "grad_buffers": 2 * 32 * 4 * 5 // 8,
            "total": 256 + 112 + 80 + 160,
        }
        low = analytical_memory(shape, "lowcost", 4)
        # 49*16 = 784 bits; 16*4*5 + 4*2 = 328 bits -> 41 B; 2*4*5 = 40 bits; 2*16*4*5 bits
        assert low["weights"] == 98 and low["saved_inputs"] == 41
        assert low["norm_saved"] == 5 and low["grad_buffers"] == 80

    def test_latent_free_weights_by_hand(self):
        # lowcost-bop: a packed binary weight costs 1 bit + a fp16 Bop moment + the 1-bit
        # gradient (18 bits); layers that stay latent (here the first) keep lowcost's 49 bits
        shape = ModelShape((10, 6), (5, 2), (2, 3), 5, packed=(False, True))
        bop = analytical_memory(shape, "lowcost-bop", 4)
        assert bop["weights"] == (49 * 10 + 18 * 6 + 7) // 8  # 598 bits -> 75 B
        low = analytical_memory(shape, "lowcost", 4)
        assert {k: v for k, v in bop.items() if k not in ("weights", "total")} == {
            k: v for k, v in low.items() if k not in ("weights", "total")
        }

    def test_trace_marks_the_packed_layers_of_a_latent_free_model(self):
        from core import build_model

        model = build_model("mlp", "lowcost-bop", num_classes=10, in_shape=(1, 28, 28))
        packed = trace_model(model, (1, 28, 28)).packed
        assert packed == (True,) * 5  # every MLP layer has binary weights
        assert not any(trace_model(build_model("mlp", "lowcost"), (1, 28, 28)).packed)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="unknown recipe 'fp8'"):
            analytical_memory(MLP, "fp8", 100)
        with pytest.raises(ValueError, match="batch_size"):
            analytical_memory(MLP, "standard", 0)
        with pytest.raises(ValueError, match="one input size per weight layer"):
            ModelShape(weights=(1, 2), inputs=(1,), norm_outputs=(), max_activation=1)


class TestTrace:
    def test_cnv_standin_matches_hand_shape(self):
        model = cnv_standin()
        model.train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        assert trace_model(model, (3, 32, 32)) == CNV
        assert model.training  # mode restored, running statistics untouched
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    def test_pool_before_norm_and_flattened_mlp(self):
        mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 256, bias=False), nn.BatchNorm1d(256), nn.Hardtanh(),
            *[m for _ in range(3)
              for m in (nn.Linear(256, 256, bias=False), nn.BatchNorm1d(256), nn.Hardtanh())],
            nn.Linear(256, 10, bias=False), nn.BatchNorm1d(10),
        )  # fmt: skip
        assert trace_model(mlp, (1, 28, 28)) == MLP
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.BatchNorm2d(8), nn.Flatten(),
            nn.Linear(8 * 4 * 4, 10),
        )  # fmt: skip
        shape = trace_model(net, (3, 8, 8))
        assert shape.norm_outputs == (8 * 4 * 4,)
        assert shape.inputs == (3 * 8 * 8, 128) and shape.max_activation == 8 * 8 * 8


@pytest.mark.parametrize(
    ("name", "recipe", "in_shape", "expected"),
    [
        ("mlp", "standard", (1, 28, 28), MLP),
        ("mlp", "lowcost", (1, 28, 28), MLP),
        ("cnv", "lowcost-po2", (3, 32, 32), CNV),
        ("binarynet", "lowcost", (3, 32, 32), BINARYNET),
    ],
)
def test_trace_of_the_real_models_matches_method_section3(name, recipe, in_shape, expected):
    from core import build_model

    model = build_model(name, recipe, in_shape=in_shape)
    assert trace_model(model, in_shape) == expected


class PackedSign(torch.autograd.Function):
    """Stand-in binary op: saves sign(x) as packed bits (uint8), like the lowcost layers."""

    @staticmethod
    def forward(ctx, x):
        bits = (x >= 0).flatten()
        padded = torch.cat([bits, bits.new_zeros((-bits.numel()) % 8)]).view(-1, 8)
        weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
        ctx.save_for_backward((padded.to(torch.uint8) * weights).sum(1, dtype=torch.uint8))
        ctx.shape = x.shape
        return torch.where(x >= 0, 1.0, -1.0)

    @staticmethod
    def backward(ctx, grad):
        return grad


class SavesTwoViews(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x[:, :2], x[:, 2:])  # two views of one storage
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


class TestSavedTensors:
    def test_linear_relu_exact_bytes_params_excluded(self):
        model = nn.Sequential(nn.Linear(16, 8, bias=False), nn.ReLU(), nn.Linear(8, 4, bias=False))
        x = torch.randn(5, 16)
        with count_saved_tensors(model.parameters()) as saved:
            out = model(x)
        out.sum().backward()
        # Linear1 saves x (5x16 fp32); ReLU saves its output, which Linear2 saves again (once).
        assert saved.total_bytes == 5 * 16 * 4 + 5 * 8 * 4
        assert saved.bytes_by_dtype() == {"float32": 5 * 16 * 4 + 5 * 8 * 4}
        assert saved.num_saved >= 4  # weights and the shared ReLU output were seen

    def test_packed_bits_counted_as_uint8(self):
        x = torch.randn(3, 13, requires_grad=True)
        with count_saved_tensors() as saved:
            PackedSign.apply(x).sum().backward()
        assert saved.bytes_by_dtype() == {"uint8": (3 * 13 + 7) // 8}

    def test_views_of_one_storage_count_once(self):
        x = torch.randn(4, 6, requires_grad=True)
        with count_saved_tensors([x]) as excluded, torch.no_grad():
            pass
        assert excluded.total_bytes == 0
        y = x * 1.0
        with count_saved_tensors() as saved:
            SavesTwoViews.apply(y).sum().backward()
        assert saved.total_bytes == 4 * 6 * 4


def test_state_bytes_adam():
    model = nn.Sequential(nn.Linear(10, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 10)).sum().backward()
    opt.step()
    params = list(model.parameters())
    p_bytes = sum(p.numel() * 4 for p in params)
    state = state_bytes(model, opt)
    assert state["params"] == p_bytes == state["grads"]
    assert state["optimizer"] == 2 * p_bytes + 4 * len(params)  # m, v and a float32 step each
    assert state["buffers"] == (6 + 6) * 4 + 8  # running mean/var + int64 num_batches_tracked
    assert state["total"] == sum(v for k, v in state.items() if k != "total")
    assert state_bytes(model)["optimizer"] == 0


_PEAK_PROBE = """
import torch
from core.memory import process_peak_rss_bytes, process_rss_bytes, reset_process_peak
assert reset_process_peak(), "clear_refs"
base = process_peak_rss_bytes()
blob = torch.ones(16 * 2**20 // 4)  # 16 MiB, touched
assert process_peak_rss_bytes() >= base + 15 * 2**20, (base, process_peak_rss_bytes())
del blob
assert reset_process_peak()
assert process_peak_rss_bytes() <= process_rss_bytes() + 2**20
"""


def test_process_peak_reset_and_rise():
    # A fresh process with glibc pinned (MALLOC_ENV): in this long-lived test process the blob
    # could reuse heap pages that are already resident and leave the high-water mark unmoved.
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("/proc/self/clear_refs is not writable here")
    env = {**os.environ, **MALLOC_ENV, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


class TestMeasureStep:
    def test_tracker_peak_brackets(self):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Hardtanh(),
                              nn.Linear(32, 10))  # fmt: skip
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x, y = torch.rand(16, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (16,))
        m = measure_step(model, opt, x, y, steps=2)
        state = m.state
        # The step starts with params, buffers, optimizer state and the batch; grads come later.
        start = state["params"] + state["buffers"] + state["optimizer"] + x.nbytes + y.nbytes
        assert m.step_start_bytes == start
        assert m.peak_step_bytes >= start + state["grads"]
        assert m.peak_step_bytes >= m.step_start_bytes + m.saved_bytes - 64  # activations alive
        assert sum(m.peak_categories.values()) == m.peak_step_bytes
        assert set(m.saved_by_dtype) <= {"float32", "int64"}
        assert len(m.step_seconds_all) == 2 and m.step_seconds > 0
        assert json.loads(json.dumps(m.as_dict()))["saved_bytes"] == m.saved_bytes

    def test_memory_only_and_time_only(self):
        model = nn.Linear(2, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)
        m = measure_step(model, opt, x, y, steps=0)
        assert m.step_seconds is None and m.step_seconds_all == [] and m.saved_bytes >= 3 * 2 * 4
        times = time_steps(model, opt, x, y, steps=3, warmup=0)
        assert len(times) == 3 and all(t > 0 for t in times)
        with pytest.raises(ValueError, match="steps"):
            measure_step(model, opt, x, y, steps=-1)
        with pytest.raises(ValueError, match="warmup"):
            measure_step(model, opt, x, y, warmup=0)
        with pytest.raises(ValueError, match="steps"):
            time_steps(model, opt, x, y, steps=0)


CROSS_CHECK = """
import json, torch
from torch import nn
from core.memory import measure_step
torch.set_num_threads(1); torch.manual_seed(0)
model = nn.Sequential(
    nn.Flatten(), nn.Linear(784, 512), nn.BatchNorm1d(512), nn.Hardtanh(),
    nn.Linear(512, 512), nn.BatchNorm1d(512), nn.Hardtanh(), nn.Linear(512, 10),
)
opt = torch.optim.Adam(model.parameters(), 1e-3, eps=1e-7)
x, y = torch.rand(128, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (128,))
print(json.dumps(measure_step(model, opt, x, y, steps=1).as_dict()))
"""


def test_tracker_agrees_with_process_high_water_mark():
    """With glibc pinned, the dispatch-level peak and the RSS peak agree within the 10 % flag."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs")
    env = {**os.environ, **MALLOC_ENV, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", CROSS_CHECK], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    m = json.loads(done.stdout)
    assert m["peak_step_process_bytes"] is not None
    assert m["peak_gap"] < 0.10 and not m["flagged"], m
    assert m["peak_step_bytes"] > 10 * MIB  # the 0.67 M-parameter model's state and Adam
