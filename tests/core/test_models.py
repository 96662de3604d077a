"""Every model builds with the paper's sizes and trains one step under every recipe."""

import pytest
import torch
import torch.nn.functional as F

from core import MODELS, RECIPES, build_model, build_optimizer, count_weights, from_recipe
from core.autograd import InputKind
from core.layers import BinaryConv2d, BinaryLinear

# cheap shapes: the conv nets accept smaller images than their datasets' 32x32
SHAPES = {
    "mlp": (1, 8, 8),
    "cnv": (3, 32, 32),
    "binarynet": (3, 8, 8),
    "resnete18": (3, 32, 32),
    "resnete18-cifar": (3, 8, 8),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# a full step for the cheap models and for the ResNet block types; big ones are forward-checked
FULL_STEP = [(n, r) for n in ("mlp", "cnv") for r in RECIPES] + [("resnete18-cifar", "lowcost")]


@pytest.mark.parametrize(("name", "recipe"), FULL_STEP)
def test_one_training_step(name, recipe):
    torch.manual_seed(0)
    shape = SHAPES[name]
    model = build_model(name, recipe, num_classes=5, in_shape=shape)
    opt = build_optimizer(model, recipe)
    x = torch.randint(0, 256, (3, *shape)).float() / 255 * 2 - 1
    y = torch.tensor([0, 3, 4])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits = model(x)
    assert logits.shape == (3, 5) and logits.dtype == torch.float32
    F.cross_entropy(logits, y).backward()
    opt.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    weights = [k for k in before if k.endswith("weight") and before[k].dim() > 1]
    assert set(weights) <= set(changed), sorted(set(weights) - set(changed))
    dtype = from_recipe(recipe).weight_dtype
    assert all(p.dtype == dtype for p in model.parameters())


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("name", MODELS)
def test_train_mode_uses_batch_statistics_and_eval_mode_does_not(name, recipe):
    """Train mode normalizes with the batch's statistics (a sample's output depends on the
    others in its batch); eval mode with the running ones (each sample on its own)."""
    torch.manual_seed(0)
    model = build_model(name, recipe, num_classes=7, in_shape=SHAPES[name])
    x = torch.rand(3, *SHAPES[name]) * 2 - 1
    other = x.clone()
    other[1:] = torch.rand(2, *SHAPES[name]) * 2 - 1  # same first sample, different batchmates
    with torch.no_grad():
        train_a, train_b = model(x), model(other)
        model.eval()
        eval_a, eval_b, alone = model(x), model(other), model(x[:1])
    for out in (train_a, eval_a):
        assert out.shape == (3, 7) and out.dtype == torch.float32 and out.isfinite().all()
    assert not torch.equal(train_a[0], train_b[0])
    torch.testing.assert_close(eval_a[0], eval_b[0])
    torch.testing.assert_close(eval_a[:1], alone)


@pytest.mark.parametrize(
    ("name", "shape", "weights"),
    [
        ("mlp", (1, 28, 28), 399_872),
        ("cnv", (3, 32, 32), 1_542_848),
        ("binarynet", (3, 32, 32), 14_022_016),
    ],
)
def test_paper_weight_counts(name, shape, weights):
    assert count_weights(build_model(name, "lowcost", 10, shape)) == weights  # docs/method.md §3


def test_resnete18_layout():
    model = build_model("resnete18", "lowcost", 1000, (3, 224, 224))
    convs = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert sum(m.binary_weight for m in convs) == 16  # 16 binary 3x3 convs
    assert model.stem[0].kernel_size == (7, 7) and model.stem[0].stride == (2, 2)
    assert model.fc.out_features == 1000 and model.fc.bias is not None
    with torch.no_grad():
        model.eval()
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize("name", MODELS)
def test_first_layer_is_named_by_the_definition(name):
    model = build_model(name, "lowcost", 10, SHAPES[name])
    layers = [m for m in model.modules() if isinstance(m, BinaryLinear | BinaryConv2d)]
    data = [m for m in layers if m.input_kind == InputKind.DATA]
    assert data == [layers[0]]


@pytest.mark.parametrize("name", ["cnv", "resnete18-cifar"])
def test_no_grad_path_matches_the_training_functions(name):
    torch.manual_seed(0)
    model = build_model(name, "lowcost", 10, SHAPES[name]).eval()
    x = torch.randint(0, 256, (2, *SHAPES[name])).float() / 255 * 2 - 1
    with torch.no_grad():
        fast = model(x)
    assert torch.equal(fast, model(x).detach())


def test_mlp_flattens_any_shape():
    model = build_model("mlp", "standard", 10, (1, 8, 8))
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_eval_mode_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    model = build_model("cnv", "lowcost", 10, (3, 32, 32))
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    model.eval()
    with torch.no_grad():
        full = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(4)])
    assert torch.allclose(full, single)


def test_bad_arguments_give_one_line_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg'; choose one of mlp"):
        build_model("vgg", "lowcost")
    with pytest.raises(ValueError, match="unknown recipe 'fast'; choose one of standard"):
        build_model("mlp", "fast")
    with pytest.raises(ValueError, match=r"cnv needs in_shape \(C, H, W\)"):
        build_model("cnv", "lowcost", 10, (784,))
    with pytest.raises(ValueError, match="at least 32x32"):
        build_model("cnv", "lowcost", 10, (3, 16, 16))
    with pytest.raises(ValueError, match="same recipe"):
        build_optimizer(build_model("mlp", "standard"), "lowcost")
