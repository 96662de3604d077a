"""fit / evaluate: the loop, its results, its errors, and a lowcost training smoke test."""

import pytest
import torch

from core import EvalResult, FitResult, build_model, build_optimizer, evaluate, fit


def blobs(n=400, batch=50, seed=0):
    """Four well-separated classes of 1x8x8 images on the uint8 grid, in fixed batches."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randint(0, 256, (4, 1, 8, 8), generator=g).float()
    y = torch.randint(0, 4, (n,), generator=g)
    x = (centers[y] + torch.randn(n, 1, 8, 8, generator=g) * 30).clamp(0, 255).round()
    x = x / 255 * 2 - 1
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("recipe", ["standard", "lowcost", "lowcost-po2"])
def test_loss_decreases_and_data_is_learned(recipe):
    torch.manual_seed(0)
    data = blobs()
    model = build_model("mlp", recipe, num_classes=4, in_shape=(1, 8, 8))
    opt = build_optimizer(model, recipe, lr=1e-2)
    before = evaluate(model, data)
    result = fit(model, opt, data, epochs=4)
    after = evaluate(model, data)
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    assert last < 0.6 * first, (first, last)
    assert after.loss < before.loss
    assert after.accuracy >= 0.9, after


def test_fit_result_fields_and_progress():
    data = blobs(n=200, batch=20)
    model = build_model("mlp", "lowcost", num_classes=4, in_shape=(1, 8, 8))
    seen = []
    result = fit(
        model,
        build_optimizer(model, "lowcost"),
        data,
        epochs=2,
        max_batches=3,
        progress=seen.append,
    )
    assert isinstance(result, FitResult)
    assert result.num_examples == 60 and len(result.history) == 2
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert 0.0 <= result.accuracy <= 1.0 and result.loss > 0 and result.seconds > 0
    assert len(seen) == 6 and seen[-1]["examples"] == 60 and seen[-1]["batch"] == 3


def test_progress_true_prints_epoch_lines(capsys):
    data = blobs(n=100, batch=50)
    model = build_model("mlp", "standard", num_classes=4, in_shape=(1, 8, 8))
    fit(model, build_optimizer(model, "standard"), data, epochs=1, progress=True)
    assert "epoch 1/1: loss" in capsys.readouterr().err


def test_evaluate_restores_mode_and_counts():
    data = blobs(n=120, batch=40)
    model = build_model("mlp", "lowcost", num_classes=4, in_shape=(1, 8, 8))
    model.train()
    result = evaluate(model, data, max_batches=2)
    assert isinstance(result, EvalResult) and result.num_examples == 80
    assert model.training


def test_errors_are_one_line_and_name_the_fix():
    model = build_model("mlp", "lowcost", num_classes=4, in_shape=(1, 8, 8))
    opt = build_optimizer(model, "lowcost")
    with pytest.raises(ValueError, match="loader yielded no batches"):
        fit(model, opt, [])
    with pytest.raises(ValueError, match="loader yielded no batches"):
        evaluate(model, [])
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        fit(model, opt, blobs(), epochs=0)
    bad = [(torch.full((4, 1, 8, 8), float("nan")), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(build_model("mlp", "standard", 4, (1, 8, 8)), opt, bad)
