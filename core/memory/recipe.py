"""One recipe of one model, built through :mod:`core.experiment` and measured in this process.

Run it in a fresh process (``launch.memory.measure_recipe_isolated``) for process figures that
belong to this recipe alone.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from core.memory.analytical import analytical_memory, trace_model
from core.memory.step import measure_step, time_steps

__all__ = ["default_in_shape", "measure_recipe"]

_DEFAULT_IN_SHAPES = {
    "mlp": (1, 28, 28),
    "cnv": (3, 32, 32),
    "binarynet": (3, 32, 32),
    "resnete18": (3, 224, 224),
    "resnete18-cifar": (3, 32, 32),
}


def default_in_shape(model_name: str) -> tuple[int, ...]:
    """Return the input shape a model is measured at (one sample, docs/method.md §3).

    MNIST 1×28×28 for ``mlp``, CIFAR 3×32×32 for CNV/BinaryNet, ImageNet 3×224×224 for
    ``resnete18``.
    """
    try:
        return _DEFAULT_IN_SHAPES[model_name]
    except KeyError:
        choices = ", ".join(_DEFAULT_IN_SHAPES)
        raise ValueError(f"unknown model {model_name!r}; choose one of {choices}") from None


def measure_recipe(
    model_name: str,
    recipe: str,
    batch_size: int,
    *,
    in_shape: tuple[int, ...] | None = None,
    num_classes: int = 10,
    steps: int = 5,
    seed: int = 0,
    device: str = "cpu",
    po2_bias: int = 8,
    phase: str = "all",
) -> dict[str, Any]:
    """Build ``model_name`` under ``recipe`` (:mod:`core.experiment`) and measure one step.

    ``phase`` is ``"memory"`` (no timing), ``"time"`` (only ``step_seconds`` and
    ``step_seconds_all``) or ``"all"``.

    The batch is random 8-bit pixels with random labels (memory and time do not depend on the
    values), fed in each recipe's natural input dtype (``input_dtype`` in the result):
    ``standard`` gets them scaled to float32 ``k / 127.5 - 1``, what a typical PyTorch user feeds
    (:class:`core.data.ImageLoader`'s default); the low-cost recipes get the uint8 codes
    themselves (``ImageLoader(..., raw=True)``), which their first layer keeps as its 1-byte
    saved input without a float copy of the batch ("keep the data as compact as the data
    allows", issue 3). Both batches hold the same images.

    Returns ``{"analytical": {...}, "measured": {...}, "step_seconds": float, "in_shape": [...],
    "input_dtype": str, "num_params": int, "device": str}``; ``measured`` holds the fields of
    :class:`StepMeasurement`. Run it in a fresh process (``launch.memory``) for process figures
    that belong to this recipe alone.
    """
    from core.config import ExperimentConfig, ModelConfig, RecipeConfig
    from core.experiment import build_model_for, build_optimizer_for, recipe_of

    if phase not in ("all", "memory", "time"):
        raise ValueError(f"phase must be all, memory or time, got {phase!r}")
    shape = tuple(in_shape) if in_shape else default_in_shape(model_name)
    cfg = ExperimentConfig(
        model=ModelConfig(model_name), recipe=RecipeConfig(recipe, po2_bias=po2_bias), seed=seed
    )
    rec = recipe_of(cfg)
    model = build_model_for(cfg, shape, num_classes)
    analytical = analytical_memory(trace_model(model, shape), recipe, batch_size)
    model = model.to(device)
    optimizer = build_optimizer_for(cfg, model)
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch_size, *shape), generator=gen, dtype=torch.uint8)
    if rec.lowcost:
        x = pixels.to(device)  # (B, C, H, W) uint8 codes k, meaning k / 127.5 - 1
    else:
        x = pixels.float().div_(127.5).sub_(1.0).to(device)  # (B, C, H, W) in [-1, 1]
    del pixels
    y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)
    info = {
        "in_shape": list(shape),
        "input_dtype": str(x.dtype).removeprefix("torch."),
        "device": device,
    }
    if phase == "time":
        times = time_steps(model, optimizer, x, y, steps=steps)
        return {"step_seconds": statistics.median(times), "step_seconds_all": times, **info}
    measured = measure_step(model, optimizer, x, y, steps=0 if phase == "memory" else steps)
    return {
        "analytical": analytical,
        "measured": measured.as_dict(),
        "step_seconds": measured.step_seconds,
        "in_shape": list(shape),
        "num_params": sum(p.numel() for p in model.parameters()),
        **info,
    }
