"""Measure what one BNN training step really costs in memory, and what the paper's model predicts.

Four views of the same step, from cheapest to most complete, one module each:

* :mod:`core.memory.analytical` — the liveness-free, paper-style model of docs/method.md §5, per
  category, from per-sample tensor sizes that :func:`trace_model` reads off a forward pass;
* :mod:`core.memory.saved` — bytes autograd keeps for backward, seen through
  ``torch.autograd.graph.saved_tensors_hooks`` (each storage once, parameters excluded), and the
  state bytes (latent weights + gradients + optimizer state + buffers);
* :mod:`core.memory.step` — the whole-step peak from PyTorch's ``MemTracker`` cross-checked with
  the process high-water mark (:mod:`core.memory.process`, no torch), plus the median step time;
* :mod:`core.memory.recipe` — one recipe of one model, built through :mod:`core.experiment`.

Measuring each recipe in a fresh subprocess is a launcher's job: ``launch.memory``
(``bitfed-memory``). Names are imported lazily, so ``core.memory.process`` stays light.

Method: Wang et al., "Enabling Binary Neural Network Training on the Edge", arXiv 2102.04270.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    # process-level peak memory (also used by the federated client)
    "MALLOC_ENV",
    "process_peak_rss_bytes",
    "process_rss_bytes",
    "reset_process_peak",
    # analytical model (docs/method.md §5)
    "ModelShape",
    "trace_model",
    "analytical_memory",
    # measurements
    "SavedTensorCounter",
    "count_saved_tensors",
    "state_bytes",
    "StepMeasurement",
    "training_step",
    "time_steps",
    "measure_step",
    "default_in_shape",
    "measure_recipe",
    "GAP_TOLERANCE",
]

_HOME = {
    **dict.fromkeys(
        ["MALLOC_ENV", "process_peak_rss_bytes", "process_rss_bytes", "reset_process_peak"],
        "core.memory.process",
    ),
    **dict.fromkeys(
        ["ModelShape", "trace_model", "analytical_memory"],
        "core.memory.analytical",
    ),
    **dict.fromkeys(
        ["SavedTensorCounter", "count_saved_tensors", "state_bytes"], "core.memory.saved"
    ),
    **dict.fromkeys(
        ["StepMeasurement", "training_step", "time_steps", "measure_step", "GAP_TOLERANCE"],
        "core.memory.step",
    ),
    **dict.fromkeys(["default_in_shape", "measure_recipe"], "core.memory.recipe"),
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'core.memory' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
