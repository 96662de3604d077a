"""One warm training step, measured: saved bytes, state, MemTracker peak, process peak, time.

:func:`measure_step` takes the whole-step peak from the dispatch-level
``torch.distributed._tools.mem_tracker.MemTracker`` (per category: Parameter, Gradient,
Activation, Temp, Optstate, ...), cross-checks it with the process high-water mark
(:mod:`core.memory.process`), and reports the median step time.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.memory.process import process_peak_rss_bytes, process_rss_bytes, reset_process_peak
from core.memory.saved import _optimizer_tensors, count_saved_tensors, state_bytes

__all__ = [
    "GAP_TOLERANCE",
    "LossFn",
    "StepMeasurement",
    "training_step",
    "time_steps",
    "measure_step",
]

#: Relative gap between the tracker's and the process's step peak above which a result is flagged.
GAP_TOLERANCE = 0.10

LossFn = Callable[[Tensor, Tensor], Tensor]


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn = F.cross_entropy,
) -> float:
    """One step as a typical loop writes it: forward, loss, backward, ``optimizer.step()``.

    Gradients are released (``zero_grad(set_to_none=True)``) *before* the forward pass, so they
    are not alive while activations accumulate; they stay alive after the step.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@dataclass
class StepMeasurement:
    """Measured memory and time of one warm training step (all sizes in bytes).

    Attributes
    ----------
    saved_bytes
        Distinct storages autograd kept for backward (parameters excluded).
    saved_by_dtype
        ``saved_bytes`` split per dtype: a float activation in a 1-bit recipe shows up here.
    state
        :func:`state_bytes` after the step.
    peak_step_bytes
        Whole-step peak of the tensors MemTracker sees (state at the start of the step included).
    peak_categories
        MemTracker's breakdown at that peak (Parameter, Buffer, Gradient, Activation, Temp,
        Optstate, Other); tensors made inside ``optimizer.step()`` count as Optstate.
    peak_where
        The innermost module and pass running at that peak, or ``"optimizer step or loss"``.
    peak_phases
        Largest total MemTracker saw inside any module in ``forward`` and in ``backward``.
    step_start_bytes
        What MemTracker held when the step began (parameters, buffers, optimizer state, batch).
    peak_step_process_bytes
        ``step_start_bytes`` + rise of the process high-water mark over its RSS during one step.
    peak_gap
        ``|process - tracker| / tracker``; ``flagged`` when above :data:`GAP_TOLERANCE`.
    step_seconds
        Median wall time of ``steps_timed`` steps (None when none were timed). Steps timed
        under :data:`MALLOC_ENV` are slower (every large tensor is a fresh ``mmap``), which is
        why :func:`measure_recipe_isolated` times them in a second process with stock glibc.
    """

    saved_bytes: int
    saved_by_dtype: dict[str, int]
    state: dict[str, int]
    peak_step_bytes: int
    peak_categories: dict[str, int]
    peak_where: str
    peak_phases: dict[str, int]
    step_start_bytes: int
    peak_step_process_bytes: int | None
    peak_gap: float | None
    flagged: bool
    step_seconds: float | None
    steps_timed: int
    step_seconds_all: list[float]
    cuda_max_allocated_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def _tracker_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, loss_fn: LossFn
) -> tuple[int, int, dict[str, int], tuple[str, dict[str, int]]]:
    from torch.distributed._tools.mem_tracker import MemTracker

    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    tracker = MemTracker()
    external: list[Any] = [model, x, y]
    if isinstance(optimizer, torch.optim.Optimizer):
        external.append(optimizer)
    else:  # a duck-typed optimizer: track its state tensors as "Other"
        external.extend(_optimizer_tensors(optimizer))
    tracker.track_external(*external)
    start = tracker.get_tracker_snapshot("current").get(x.device, {})
    with tracker:
        training_step(model, optimizer, x, y, loss_fn)
    peak = tracker.get_tracker_snapshot("peak").get(x.device, {})
    categories = {getattr(k, "value", str(k)): int(v) for k, v in peak.items()}
    total = categories.pop("Total", sum(categories.values()))
    return (
        int(start.get("Total", 0)),
        int(total),
        categories,
        _locate_peak(tracker, x.device, total),
    )


def _locate_peak(tracker: Any, device: torch.device, peak: int) -> tuple[str, dict[str, int]]:
    """Name the innermost module (and pass) at which MemTracker saw the step's peak.

    Returns ``(where, phases)``: ``where`` like ``"backward of 3 (BinaryLinear)"``, or
    ``"optimizer step or loss"`` when no module was running; ``phases`` the largest total seen
    inside any module during ``forward`` and ``backward``.
    """
    from torch.distributed._tools.mem_tracker import _ModState

    best: tuple[int, str] | None = None
    phases = {"forward": 0, "backward": 0}
    for module, stats in tracker.memory_tracking.items():
        for state, phase in ((_ModState.PEAK_FW, "forward"), (_ModState.PEAK_BW, "backward")):
            for snap in stats.snapshots.get(state, []):
                total = int(snap.get(device, {}).get("Total", 0))
                phases[phase] = max(phases[phase], total)
                depth = stats.mod_fqn.count(".")
                if total == peak and (best is None or depth > best[0]):
                    name = stats.mod_fqn.split(".", 1)[-1] if depth else stats.mod_fqn
                    best = (depth, f"{phase} of {name} ({type(module).__name__})")
    return (best[1] if best else "optimizer step or loss"), phases


def _process_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, loss_fn: LossFn
) -> int | None:
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    before = process_rss_bytes()
    if not reset_process_peak():
        return None
    training_step(model, optimizer, x, y, loss_fn)
    return max(process_peak_rss_bytes() - before, 0)


def _cuda_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, loss_fn: LossFn
) -> int:
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    training_step(model, optimizer, x, y, loss_fn)
    torch.cuda.synchronize(x.device)
    return int(torch.cuda.max_memory_allocated(x.device))


def time_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    loss_fn: LossFn = F.cross_entropy,
    steps: int = 5,
    warmup: int = 1,
) -> list[float]:
    """Return the wall time of each of ``steps`` training steps, after ``warmup`` untimed ones.

    CUDA work is synchronised before and after each timed step.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    model.train()
    for _ in range(warmup):
        training_step(model, optimizer, x, y, loss_fn)
    on_cuda = x.device.type == "cuda"
    times = []
    for _ in range(steps):
        if on_cuda:
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        training_step(model, optimizer, x, y, loss_fn)
        if on_cuda:
            torch.cuda.synchronize(x.device)
        times.append(time.perf_counter() - t0)
    return times


def measure_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    loss_fn: LossFn = F.cross_entropy,
    steps: int = 5,
    warmup: int = 1,
) -> StepMeasurement:
    """Measure one warm training step of ``model`` on the batch ``(x, y)``.

    Runs ``warmup`` untracked steps (they create the optimizer state), one step under
    :func:`count_saved_tensors`, one under MemTracker, one between :func:`reset_process_peak`
    and :func:`process_peak_rss_bytes`, then ``steps`` timed steps (median reported; 0 skips
    timing). Every step is a real update. On CUDA tensors, MemTracker's figure is complemented
    by ``torch.cuda.max_memory_allocated`` and the process figure is skipped.
    """
    if steps < 0 or warmup < 1:
        raise ValueError(f"need steps >= 0 and warmup >= 1, got steps={steps}, warmup={warmup}")
    model.train()
    for _ in range(warmup):
        training_step(model, optimizer, x, y, loss_fn)

    optimizer.zero_grad(set_to_none=True)
    state_tensors = [*model.parameters(), *model.buffers()]
    with count_saved_tensors(state_tensors) as saved:
        loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    del loss
    state = state_bytes(model, optimizer)

    start, peak, categories, (where, phases) = _tracker_step(model, optimizer, x, y, loss_fn)
    on_cuda = x.device.type == "cuda"
    rise = None if on_cuda else _process_step(model, optimizer, x, y, loss_fn)
    process_peak = None if rise is None else start + rise
    gap = None if process_peak is None else abs(process_peak - peak) / max(peak, 1)
    cuda_peak = _cuda_step(model, optimizer, x, y, loss_fn) if on_cuda else None

    times = (
        time_steps(model, optimizer, x, y, loss_fn=loss_fn, steps=steps, warmup=0) if steps else []
    )
    return StepMeasurement(
        saved_bytes=saved.total_bytes,
        saved_by_dtype=saved.bytes_by_dtype(),
        state=state,
        peak_step_bytes=peak,
        peak_categories=categories,
        peak_where=where,
        peak_phases=phases,
        step_start_bytes=start,
        peak_step_process_bytes=process_peak,
        peak_gap=gap,
        flagged=gap is not None and gap > GAP_TOLERANCE,
        step_seconds=statistics.median(times) if times else None,
        steps_timed=steps,
        step_seconds_all=times,
        cuda_max_allocated_bytes=cuda_peak,
    )
