"""lowcost-bop: packed 1-bit weights, Bop against a numpy restatement, training, saved tensors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import build_model, build_optimizer, evaluate, fit, from_recipe
from core.bop import BopConfig, LowCostBop, bop_flip_, popcount
from core.functional import pack_bits, packed_size
from core.layers import BinaryConv2d, BinaryLinear, PackedGradLayer, packed_layers
from core.memory import count_saved_tensors
from core.models import float_state, load_float_state_, weight_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPES = {
    "mlp": (1, 8, 8),
    "cnv": (3, 32, 32),
    "binarynet": (3, 8, 8),
    "resnete18": (3, 32, 32),
    "resnete18-cifar": (3, 8, 8),
}
BOP = "lowcost-bop"


def codes(batch, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, *shape), generator=g, dtype=torch.uint8)


def weight_layers(model):
    return [m for m in model.modules() if isinstance(m, BinaryLinear | BinaryConv2d)]


# --- storage: 1 bit per binary weight, no float latent weights --------------------------------


@pytest.mark.parametrize("name", list(SHAPES))
def test_binary_weights_are_packed_one_bit_each_and_nothing_float_remains(name):
    model = build_model(name, BOP, in_shape=SHAPES[name])
    layers = weight_layers(model)
    binary = [m for m in layers if m.binary_weight]
    assert binary and packed_layers(model) == binary
    for m in binary:
        rows, fan_in = m.weight.shape[0], m.weight[0].numel()
        assert m.weight_bits.dtype == torch.uint8
        assert m.weight_bits.nbytes == rows * packed_size(fan_in)  # each row starts on a byte
        assert m.weight_bits.nbytes <= packed_size(m.weight.numel()) + rows
        assert m.weight.device.type == "meta"  # shape only, no storage
    float_weight_params = [
        p for p in model.parameters() if p.is_floating_point() and p.dim() >= 2
    ]  # only full-precision layers (ResNetE stem, shortcuts, head) keep latent weights
    full_precision = sum(m.weight.numel() for m in layers if not m.binary_weight)
    assert sum(p.numel() for p in float_weight_params) == full_precision
    float_buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    bn = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 1)
    assert float_buffers <= 2 * bn  # running mean/sigma per BN channel, nothing per weight


def test_mlp_state_bytes_by_dtype():
    model = build_model("mlp", BOP, in_shape=(1, 28, 28))
    by_dtype = {}
    for t in [*model.parameters(), *model.buffers()]:
        by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + t.nbytes
    n = sum(m.weight.numel() for m in weight_layers(model))  # 784*256 + 3*256*256 + 256*10
    assert n == 399_872
    bits = sum(m.weight_bits.nbytes + m.grad_bits.nbytes for m in packed_layers(model))
    assert bits == 2 * n // 8  # weights + gradient: 2 bits per weight
    assert by_dtype[torch.float16] == 3 * (4 * 256 + 10) * 2  # BN beta, mean, sigma only


def test_packing_keeps_the_initial_function_of_lowcost():
    torch.manual_seed(3)
    ref = build_model("cnv", "lowcost", in_shape=(3, 32, 32))
    torch.manual_seed(3)
    model = build_model("cnv", BOP, in_shape=(3, 32, 32))
    x = codes(4, (3, 32, 32))
    assert torch.equal(ref(x), model(x))  # sign(W) of the same initial W
    with torch.no_grad():
        ref.eval(), model.eval()
        assert torch.equal(ref(x), model(x))


# --- the Bop rule ------------------------------------------------------------------------------


def numpy_flip(w, m, tau):
    """Helwegen et al. (arXiv 1906.02107) Alg. 1: flip where |m| > tau and sign(m) == sign(w)."""
    return np.where((np.abs(m) > tau) & (np.sign(m) == np.sign(w)), -w, w)


def test_flip_rule_matches_numpy_including_the_threshold_boundary():
    tau = 0.25
    rng = np.random.default_rng(0)
    w = rng.choice([-1.0, 1.0], size=(6, 21))
    m = rng.choice([-0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5], size=w.shape)  # exact in fp16
    bits = pack_bits(torch.from_numpy(w >= 0))
    flip = bop_flip_(bits, torch.from_numpy(m).half(), tau)
    got = np.unpackbits(bits.numpy(), axis=1, count=21).astype(np.float64) * 2 - 1
    expected = np.where((np.abs(m) > tau) & (np.sign(m) == np.sign(w)), -w, w)
    np.testing.assert_array_equal(got, expected)
    assert popcount(flip) == int((got != w).sum())
    at_boundary = np.abs(m) == tau
    assert at_boundary.any() and (got[at_boundary] == w[at_boundary]).all()  # |m| == tau: kept
    agree = (np.abs(m) > tau) & (np.sign(m) == np.sign(w))
    assert agree.any() and (got[agree] == -w[agree]).all()
    disagree = (np.abs(m) > tau) & (np.sign(m) != np.sign(w))
    assert disagree.any() and (got[disagree] == w[disagree]).all()
    assert (np.packbits(got >= 0, axis=1) == bits.numpy()).all()  # padding bits stay zero


def set_packed_grad(layer, g_sign):
    layer.grad_bits.copy_(pack_bits((g_sign >= 0).view(g_sign.shape[0], -1)))
    layer.grad_count.add_(1)


def test_optimizer_steps_match_numpy_bop():
    gamma, tau = 0.25, 0.3
    torch.manual_seed(0)
    layer = BinaryLinear(20, 6, from_recipe(BOP))
    layer.pack_weight_()
    opt = LowCostBop([], [], [layer], config=BopConfig(gamma, tau))
    w = layer.weight_signs().double().numpy()
    m = np.zeros_like(w)
    for step in range(8):
        g = torch.randn(6, 20).sign()
        g[:3] = 1.0 if step < 4 else -1.0  # consistent rows: all go to -1, then back to +1
        set_packed_grad(layer, g)
        opt.step()
        expected_m = (1 - gamma) * m + gamma * g.double().numpy()  # m <- (1-gamma) m + gamma g
        m = opt.state[layer.weight_bits]["moment"].double().numpy()
        np.testing.assert_allclose(m, expected_m, atol=2**-10)  # stochastic rounding to fp16
        prev, w = w, numpy_flip(w, m, tau)  # decided on the stored moment, as the optimizer
        np.testing.assert_array_equal(layer.weight_signs().double().numpy(), w)
        assert opt.state[layer.weight_bits]["flips"] == int((w != prev).sum())
        if step == 3:
            assert (w[:3] == -1).all()
    assert (w[:3] == 1).all()
    assert opt.state[layer.weight_bits]["moment"].dtype == torch.float16


def test_no_fresh_gradient_means_no_flip():
    layer = BinaryLinear(16, 4, from_recipe(BOP))
    layer.pack_weight_()
    opt = LowCostBop([], [], [layer], config=BopConfig(1.0, 0.0))  # any fresh gradient flips
    before = layer.weight_bits.clone()
    opt.step()
    assert torch.equal(layer.weight_bits, before)
    set_packed_grad(layer, layer.weight_signs())  # g == w everywhere: every weight flips
    opt.zero_grad()
    opt.step()
    assert torch.equal(layer.weight_bits, before)
    set_packed_grad(layer, layer.weight_signs())
    opt.step()
    assert torch.equal(layer.weight_bits, before.bitwise_not())


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="gamma"):
        BopConfig(gamma=0.0)
    with pytest.raises(ValueError, match="threshold"):
        BopConfig(threshold=1.0)


def test_optimizer_state_dict_round_trip_keeps_fp16_moments():
    torch.manual_seed(0)
    model = build_model("mlp", BOP, in_shape=(1, 8, 8))
    opt = build_optimizer(model, BOP)
    F.cross_entropy(model(codes(8, (1, 8, 8))), torch.arange(8)).backward()
    opt.step()
    fresh = build_optimizer(model, BOP)
    fresh.load_state_dict(opt.state_dict())
    bits = packed_layers(model)[1].weight_bits
    assert fresh.state[bits]["moment"].dtype == torch.float16
    assert torch.equal(fresh.state[bits]["moment"], opt.state[bits]["moment"])
    assert fresh.param_groups[-1]["gamma"] == BopConfig().gamma


def test_optimizer_refuses_a_model_of_another_recipe():
    model = build_model("mlp", "lowcost", in_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="same recipe"):
        build_optimizer(model, BOP)
    with pytest.raises(ValueError, match="same recipe"):
        build_optimizer(build_model("mlp", BOP, in_shape=(1, 8, 8)), "lowcost")


# --- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_model_trains_a_step(name):
    torch.manual_seed(0)
    shape = SHAPES[name]
    model = build_model(name, BOP, num_classes=5, in_shape=shape)
    opt = build_optimizer(model, BOP, bop=BopConfig(gamma=0.5, threshold=0.0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    F.cross_entropy(model(codes(3, shape)), torch.tensor([0, 3, 4])).backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    bits = {k for k in before if k.endswith("weight_bits")}
    assert bits and bits <= changed, sorted(bits - changed)  # tau 0: every layer flips some


def test_loss_decreases_over_50_steps_on_digits():
    from core.data import ImageLoader, load_dataset

    torch.manual_seed(0)
    ds = load_dataset("digits", None, "train")
    loader = ImageLoader(ds, None, batch_size=50, shuffle=True, seed=0, raw=True)
    model = build_model("mlp", BOP, in_shape=tuple(ds.images.shape[1:]))
    opt = build_optimizer(model, BOP, lr=1e-2)
    before = evaluate(model, loader)
    result = fit(model, opt, loader, epochs=2, max_batches=25)  # 50 steps
    after = evaluate(model, loader)
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    assert last < 0.8 * first, (first, last)
    assert after.loss < 0.7 * before.loss, (before, after)
    assert after.accuracy > 0.6, after


def test_saved_tensors_of_a_step_are_those_of_lowcost():
    saved = {}
    for recipe in ("lowcost", BOP):
        torch.manual_seed(0)
        model = build_model("cnv", recipe, in_shape=(3, 32, 32))
        with count_saved_tensors([*model.parameters(), *model.buffers()]) as counter:
            loss = F.cross_entropy(model(codes(4, (3, 32, 32))), torch.arange(4))
        loss.backward()
        saved[recipe] = (counter.total_bytes, counter.bytes_by_dtype(), counter.num_saved)
    assert saved[BOP] == saved["lowcost"]


# --- federation view: +-1 floats out, signs in ------------------------------------------------


def test_float_state_has_lowcost_names_and_loads_back_by_sign():
    torch.manual_seed(0)
    ref = build_model("cnv", "lowcost", in_shape=(3, 32, 32))
    torch.manual_seed(0)
    model = build_model("cnv", BOP, in_shape=(3, 32, 32))
    state, lowcost_state = float_state(model), ref.state_dict()
    assert list(state) == list(lowcost_state)
    assert all(state[k].shape == lowcost_state[k].shape for k in state)
    names = weight_names(model)
    assert names and all(k in state for k in names)
    for k in names:  # +-1 at the signs of lowcost's latent weights
        assert torch.equal(state[k], torch.where(lowcost_state[k] >= 0, 1.0, -1.0).half())
    replica = {k: v.float().clone() for k, v in state.items()}
    replica[names[1]] = -0.3 * replica[names[1]]  # a real-valued global model: re-binarized
    replica[names[1]].view(-1)[0] = 0.0  # sign(0) = +1
    load_float_state_(model, replica)
    after = float_state(model)
    expected = torch.where(replica[names[1]] >= 0, 1.0, -1.0).half()
    assert torch.equal(after[names[1]], expected) and after[names[1]].view(-1)[0] == 1
    with pytest.raises(KeyError, match="missing"):
        load_float_state_(model, {k: v for k, v in replica.items() if k != names[0]})


def test_load_weight_signs_rejects_wrong_shape():
    layer = BinaryLinear(16, 4, from_recipe(BOP))
    with pytest.raises(ValueError, match="pack_weight_"):
        layer.load_weight_signs_(torch.ones(4, 16))
    layer.pack_weight_()
    assert isinstance(layer, PackedGradLayer) and layer.packed_weight
    with pytest.raises(ValueError, match="shape"):
        layer.load_weight_signs_(torch.ones(16, 4))


def test_sign_update_of_a_binary_client_carries_its_weights():
    """Proposed federation semantics: the replica stays real, the client trains sign(replica),
    delta = local(+-1) - replica; where |replica| < 1 its sign is the client's weight itself."""
    from core.codec import ModelSpec, TensorSpec, compress

    torch.manual_seed(0)
    model = build_model("mlp", BOP, num_classes=4, in_shape=(1, 8, 8))
    names = weight_names(model)
    replica = {k: v.float() * 0.5 for k, v in float_state(model).items()}  # |w| = 0.5 < 1
    load_float_state_(model, replica)
    opt = build_optimizer(model, BOP, bop=BopConfig(gamma=0.5, threshold=0.0))
    F.cross_entropy(model(codes(8, (1, 8, 8))), torch.arange(8) % 4).backward()
    opt.step()
    local = float_state(model)
    assert any(not torch.equal(local[k], replica[k].sign().half()) for k in names)  # flips
    spec = ModelSpec(tuple(TensorSpec(k, tuple(local[k].shape), "sign") for k in names))
    delta = {k: (local[k].float() - replica[k]).numpy() for k in names}
    signs, scales, residual = compress(delta, None, spec)
    for k in names:
        sent = np.where(np.unpackbits(signs[k], count=local[k].numel()) == 1, -1.0, 1.0)
        np.testing.assert_array_equal(sent, local[k].float().numpy().ravel())  # the weights
        assert scales[k] == pytest.approx(float(np.abs(delta[k]).mean()), rel=1e-6)


def test_codec_spec_of_a_packed_model_is_lowcosts_with_binary_weights():
    from core.codec import model_spec

    torch.manual_seed(0)
    shape = SHAPES["cnv"]
    packed = model_spec(build_model("cnv", BOP, in_shape=shape))
    latent = model_spec(build_model("cnv", "lowcost", in_shape=shape))
    assert [(t.name, t.shape, t.kind) for t in packed.tensors] == [
        (t.name, t.shape, t.kind) for t in latent.tensors
    ]
    assert all(t.binary for t in packed.sign) and not any(t.binary for t in latent.sign)
    assert packed.digest != latent.digest  # a checkpoint of one never resumes the other


def test_a_binary_tensor_update_sets_the_replica_and_keeps_no_residual():
    from core.codec import BINARY_MAGNITUDE, ModelSpec, SignUpdate, TensorSpec, compress

    spec = ModelSpec((TensorSpec("w", (4,), "sign", binary=True), TensorSpec("v", (4,), "sign")))
    replica = {"w": np.float32([0.5, -0.5, 0.5, -0.5]), "v": np.float32([1, 2, 3, 4])}
    local = {"w": np.float32([1, 1, -1, -1]), "v": np.float32([1.5, 2, 2, 4])}
    delta = {k: local[k] - replica[k] for k in replica}
    residual = {"w": np.float32([9, 9, 9, 9]), "v": np.zeros(4, np.float32)}
    signs, scales, kept = compress(delta, residual, spec)
    update = SignUpdate(signs, scales, {})
    sent = update.dense(spec)
    np.testing.assert_array_equal(np.sign(sent["w"]), local["w"])  # the weights, residual unused
    assert scales["w"] == pytest.approx(np.abs(delta["w"]).mean())
    np.testing.assert_array_equal(kept["w"], np.zeros(4, np.float32))
    down = SignUpdate(signs, {"w": BINARY_MAGNITUDE, "v": scales["v"]}, {})
    down.apply(replica, spec)
    np.testing.assert_array_equal(replica["w"], 0.5 * local["w"])  # set, not added
    np.testing.assert_allclose(replica["v"], [1.375, 2.375, 2.625, 4.375])  # added: s = 0.375


def test_bop_moments_round_trip_and_bad_ones_are_skipped():
    from core.models import packed_weights_by_name

    torch.manual_seed(0)
    model = build_model("mlp", BOP, num_classes=4, in_shape=(1, 8, 8))
    layers = packed_weights_by_name(model)
    opt = build_optimizer(model, BOP, bop=BopConfig(gamma=0.5, threshold=0.5))
    assert opt.moments(layers) == {}  # nothing stepped yet
    F.cross_entropy(model(codes(8, (1, 8, 8))), torch.arange(8) % 4).backward()
    opt.step()
    moments = opt.moments(layers)
    assert set(moments) == set(layers) and all(m.abs().sum() > 0 for m in moments.values())
    fresh = build_optimizer(model, BOP, bop=BopConfig(gamma=0.5, threshold=0.5))
    first = next(iter(layers))
    bad = dict(moments) | {first: moments[first][:, :-1]}  # wrong shape: that layer is skipped
    assert fresh.load_moments_(layers, bad) == len(layers) - 1
    loaded = fresh.moments(layers)
    assert first not in loaded
    assert all(torch.equal(loaded[k], moments[k]) for k in loaded)


def test_fit_local_carries_bop_moments_from_round_to_round():
    """Default Bop flips after ~tau / gamma = 20 agreeing steps: two rounds of 12 steps flip
    weights only when the second starts from the first's moments."""
    from core import federated
    from core.config import from_run_config

    cfg = from_run_config(
        {"recipe.name": BOP, "train.batch_size": 50, "train.max_batches": 12, "train.epochs": 1,
         "train.num_threads": 1, "federation.num_clients": 1, "federation.clients_per_round": 1,
         "federation.min_clients": 1}
    )  # fmt: skip
    test = federated.load_split(cfg, "test")
    data = federated.local_data(cfg, {"partition-id": 0, "num-partitions": 1})
    flips = {}
    for carry in (False, True):
        model = federated.new_model(cfg, test)
        start = float_state(model)
        moments: dict = {}
        for server_round in (1, 2):
            federated.fit_local(model, data, cfg, server_round, moments if carry else None)
        after = float_state(model)
        flips[carry] = sum(int((after[k] != start[k]).sum()) for k in weight_names(model))
        assert bool(moments) == carry
    assert flips[False] == 0 < flips[True], flips


def test_loaded_moments_that_would_flip_the_current_weight_at_once_are_forgotten():
    """The federation's weight overrules a client's moment: w m > tau -> m = 0, the rest kept."""
    from core.functional import bits_to_signs
    from core.models import packed_weights_by_name

    torch.manual_seed(0)
    model = build_model("mlp", BOP, num_classes=4, in_shape=(1, 8, 8))
    layers = packed_weights_by_name(model)
    opt = build_optimizer(model, BOP, bop=BopConfig(gamma=0.5, threshold=0.25))
    moments, expected = {}, {}
    for name, layer in layers.items():
        rows, fan_in = layer.weight_bits.shape[0], layer.weight[0].numel()
        w = bits_to_signs(layer.weight_bits, fan_in, torch.float32)
        m = (torch.rand(rows, fan_in) * 2 - 1).to(torch.float16)
        moments[name] = m.numpy()
        expected[name] = torch.where(w * m.float() > 0.25, torch.zeros_like(m), m)
        assert 0 < int((w * m.float() > 0.25).sum()) < m.numel()  # some of each
    assert opt.load_moments_(layers, moments) == len(layers)
    loaded = opt.moments(layers)
    assert all(torch.equal(loaded[k], expected[k]) for k in layers)
