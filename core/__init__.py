"""bitfed's training core: binary neural networks trained with 1-bit saved state (no Flower here).

Method: Wang et al., "Enabling Binary Neural Network Training on the Edge", arXiv 2102.04270.

The names below are imported lazily, so ``import core.config`` (used by light entry points)
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    # names (from core.config)
    "MODELS",
    "RECIPES",
    # recipes
    "Recipe",
    "RecipeName",
    "from_recipe",
    # models and optimizers
    "build_model",
    "build_optimizer",
    "count_weights",
    "LowCostAdam",
    # training loops
    "fit",
    "evaluate",
    "FitResult",
    "EvalResult",
]  # layers and autograd Functions are reachable as core.layers / core.autograd

_HOME = {
    "MODELS": "core.config",
    "RECIPES": "core.config",
    "Recipe": "core.recipes",
    "RecipeName": "core.recipes",
    "from_recipe": "core.recipes",
    "build_model": "core.models",
    "count_weights": "core.models",
    "build_optimizer": "core.optim",
    "LowCostAdam": "core.optim",
    "fit": "core.train",
    "evaluate": "core.train",
    "FitResult": "core.train",
    "EvalResult": "core.train",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
