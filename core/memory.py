"""Measure what one BNN training step really costs in memory, and what the paper's model predicts.

Four views of the same step, from cheapest to most complete:

* :func:`analytical_memory` — the liveness-free, paper-style model of method.md §5, per category,
  from per-sample tensor sizes that :func:`trace_model` reads off a forward pass;
* :func:`count_saved_tensors` — bytes autograd keeps for backward, seen through
  ``torch.autograd.graph.saved_tensors_hooks`` (each storage once, parameters excluded);
* :func:`state_bytes` — latent weights + gradients + optimizer state + buffers;
* :func:`measure_step` — the whole-step peak from the dispatch-level
  ``torch.distributed._tools.mem_tracker.MemTracker`` (per category: Parameter, Gradient,
  Activation, Temp, Optstate, ...), cross-checked with the process high-water mark
  (:func:`reset_process_peak` / :func:`process_peak_rss_bytes`), plus the median step time.

The process figures are only meaningful when glibc hands large blocks back to the kernel at once:
run the measuring process with ``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0``
(:data:`MALLOC_ENV`; :func:`measure_recipe_isolated` does so in a fresh subprocess, and times the
steps in another one with stock glibc, since pinning makes every large tensor a fresh ``mmap``).

Method: Wang et al., "Enabling Binary Neural Network Training on the Edge", arXiv 2102.04270.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    # process-level peak memory (also used by the federated client)
    "MALLOC_ENV",
    "process_peak_rss_bytes",
    "process_rss_bytes",
    "reset_process_peak",
    # analytical model (method.md §5)
    "ModelShape",
    "trace_model",
    "analytical_memory",
    "ANALYTICAL_CATEGORIES",
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
    "measure_recipe_isolated",
    "GAP_TOLERANCE",
]

#: glibc settings under which freed tensors leave the resident set at once (man mallopt(3)).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}

#: Relative gap between the tracker's and the process's step peak above which a result is flagged.
GAP_TOLERANCE = 0.10

_PROC_STATUS = "/proc/self/status"
_PROC_CLEAR_REFS = "/proc/self/clear_refs"


# --------------------------------------------------------------------------------------------
# Process-level peak memory
# --------------------------------------------------------------------------------------------


def _proc_status_kib(field_name: str) -> int | None:
    try:
        with open(_PROC_STATUS) as f:
            match = re.search(rf"^{field_name}:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def process_rss_bytes() -> int:
    """Return the current resident set size of this process, in bytes (``VmRSS``)."""
    kib = _proc_status_kib("VmRSS")
    if kib is None:  # not Linux: no cheap current-RSS; fall back to the high-water mark
        return process_peak_rss_bytes()
    return kib * 1024


def process_peak_rss_bytes() -> int:
    """Return the resident-set high-water mark of this process, in bytes.

    Reads ``VmHWM`` from ``/proc/self/status`` (reset by :func:`reset_process_peak`); elsewhere
    falls back to ``getrusage(RUSAGE_SELF).ru_maxrss`` (never reset, KiB on Linux, bytes on macOS).
    """
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_process_peak() -> bool:
    """Reset the high-water mark to the current RSS; return whether the kernel allowed it.

    Writes ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0, ``Documentation/filesystems/proc``).
    Returns ``False`` where that is impossible, and :func:`process_peak_rss_bytes` then keeps
    reporting the peak since process start.
    """
    try:
        with open(_PROC_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Analytical model (method.md §5)
# --------------------------------------------------------------------------------------------

#: Categories of :func:`analytical_memory`, in the order of method.md §5.
ANALYTICAL_CATEGORIES = ("weights", "saved_inputs", "norm_saved", "grad_buffers")


@dataclass(frozen=True)
class ModelShape:
    """Per-sample tensor sizes (element counts) that the §5 memory model needs.

    Attributes
    ----------
    weights
        N_l, the weight count of each weight layer (dense or conv), in execution order.
    inputs
        in_l, the input elements per sample of each weight layer; ``inputs[0]`` is the data.
    norm_outputs
        bn_l, the output elements per sample of each normalisation layer, counted after a
        max-pool that directly follows it (the "post-pool size" of method.md §5).
    max_activation
        max_l act_l over the inputs and outputs of all weight layers (the data included).
    """

    weights: tuple[int, ...]
    inputs: tuple[int, ...]
    norm_outputs: tuple[int, ...]
    max_activation: int

    def __post_init__(self) -> None:
        if not self.weights or len(self.weights) != len(self.inputs):
            raise ValueError(
                f"ModelShape needs one input size per weight layer, got {len(self.weights)} "
                f"weight layers and {len(self.inputs)} inputs"
            )


def _layer_kind(module: nn.Module) -> str | None:
    """``"weight"``, ``"norm"``, ``"pool"`` or None for a leaf module (by type, never by shape)."""
    weight = getattr(module, "weight", None)
    name = type(module).__name__.lower()
    if isinstance(weight, Tensor) and weight.dim() >= 2:
        return "weight"  # dense or convolution, binary or not
    if isinstance(module, nn.modules.batchnorm._NormBase) or "norm" in name:
        return "norm"
    if "pool" in name:
        return "pool"
    return None


def _numel_per_sample(output: Any) -> int:
    if isinstance(output, Tensor):
        return output.numel() // max(output.shape[0], 1) if output.dim() else output.numel()
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return _numel_per_sample(output[0])
    return 0


def trace_model(model: nn.Module, in_shape: tuple[int, ...]) -> ModelShape:
    """Read the per-sample sizes of :class:`ModelShape` off one eval-mode forward pass.

    Weight layers are the leaf modules holding a ``weight`` of two or more dimensions (dense and
    convolution layers, binary or not); normalisation layers are leaves that subclass
    ``_NormBase`` or have ``Norm`` in their class name; pools have ``Pool`` in it. Nothing is
    recognised by its shape. The model's train/eval mode and its state are left unchanged
    (the pass runs in eval mode under ``torch.no_grad``).

    Parameters
    ----------
    model
        The network; its first weight layer to run is taken as the data layer (``in_1``).
    in_shape
        Shape of one sample, e.g. ``(1, 28, 28)``.
    """
    events: list[tuple[str, int, int, int]] = []  # (kind, numel_in, numel_out, weight_numel)
    handles = []

    def hook(kind: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            numel_in = _numel_per_sample(args[0]) if args else 0
            weight = getattr(module, "weight", None)
            n_weights = weight.numel() if kind == "weight" and weight is not None else 0
            events.append((kind, numel_in, _numel_per_sample(output), n_weights))

        return record

    for module in model.modules():
        kind = None if next(module.children(), None) is not None else _layer_kind(module)
        if kind is not None:
            handles.append(module.register_forward_hook(hook(kind)))
    modes = {module: module.training for module in model.modules()}
    sample = torch.rand((1, *in_shape), generator=torch.Generator().manual_seed(0)) * 2 - 1
    try:
        model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            model(sample.to(device))
    finally:
        for module, training in modes.items():
            module.training = training
        for handle in handles:
            handle.remove()

    weights = tuple(e[3] for e in events if e[0] == "weight")
    inputs = tuple(e[1] for e in events if e[0] == "weight")
    if not weights:
        raise ValueError(f"{type(model).__name__} has no dense or convolution layer to model")
    norm_outputs = []
    for i, (kind, _, numel_out, _) in enumerate(events):
        if kind != "norm":
            continue
        for later_kind, _, later_out, _ in events[i + 1 :]:
            if later_kind != "pool":  # the next weight or norm layer ends the block
                break
            numel_out = later_out  # a pool right after the norm: count the post-pool size
        norm_outputs.append(numel_out)
    max_activation = max(max(e[1], e[2]) for e in events if e[0] == "weight")
    return ModelShape(weights, inputs, tuple(norm_outputs), max_activation)


def analytical_memory(shape: ModelShape, recipe: str, batch_size: int) -> dict[str, int]:
    r"""Paper-style training memory per category, in bytes (method.md §5; liveness-free).

    With B the batch size, N_l the weights, in_l the saved inputs, bn_l the BN-side tensors and
    act the largest activation (all per sample), the model counts bits as

    ``standard``   : 128·ΣN_l + 32·B·Σin_l + 32·B·Σbn_l + 2·32·B·act
                     (fp32 W, ∂W, m, v; fp32 saved inputs incl. the image; fp32 BN input;
                     two fp32 gradient buffers)
    ``lowcost``    : 49·ΣN_l + 16·B·in_1 + 1·B·Σ_{l>1}in_l + 2·B·Σbn_l + 2·16·B·act
                     (fp16 W, m, v + 1-bit ∂W; fp16 image; sign(X); sign(ŷ) + STE mask;
                     two fp16 gradient buffers)
    ``lowcost-po2``: as ``lowcost`` with 5-bit power-of-two gradient buffers (2·5·B·act).

    It reproduces the savings of Wang et al. (arXiv 2102.04270, EMDL'21) to about 3 %
    (MLP 2.76×, CNV 4.04×, BinaryNet 3.75× at B = 100). Per-channel BN scalars are neglected.

    Returns
    -------
    dict
        ``{"weights", "saved_inputs", "norm_saved", "grad_buffers", "total"}``, bytes
        (each category rounded up to whole bytes).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    n, b = sum(shape.weights), batch_size
    if recipe == "standard":
        bits = {
            "weights": 128 * n,
            "saved_inputs": 32 * b * sum(shape.inputs),
            "norm_saved": 32 * b * sum(shape.norm_outputs),
            "grad_buffers": 2 * 32 * b * shape.max_activation,
        }
    elif recipe in ("lowcost", "lowcost-po2"):
        grad_bits = 5 if recipe == "lowcost-po2" else 16
        bits = {
            "weights": 49 * n,
            "saved_inputs": 16 * b * shape.inputs[0] + b * sum(shape.inputs[1:]),
            "norm_saved": 2 * b * sum(shape.norm_outputs),
            "grad_buffers": 2 * grad_bits * b * shape.max_activation,
        }
    else:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of standard, lowcost, lowcost-po2")
    out = {name: math.ceil(value / 8) for name, value in bits.items()}
    out["total"] = sum(out.values())
    return out


# --------------------------------------------------------------------------------------------
# Saved tensors and state
# --------------------------------------------------------------------------------------------


def _storage_key(t: Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


@dataclass
class SavedTensorCounter:
    """Storages autograd saved for backward while :func:`count_saved_tensors` was active.

    Attributes
    ----------
    storages
        ``data_ptr -> (nbytes, dtype name)`` of each distinct storage saved (views share one).
    excluded
        Data pointers never counted (parameters and buffers: they are state, not activations).
    num_saved
        Number of ``save_for_backward`` entries seen, views and parameters included.
    """

    storages: dict[int, tuple[int, str]] = field(default_factory=dict)
    excluded: set[int] = field(default_factory=set)
    num_saved: int = 0

    @property
    def total_bytes(self) -> int:
        """Bytes of the distinct non-parameter storages saved for backward."""
        return sum(nbytes for nbytes, _ in self.storages.values())

    def bytes_by_dtype(self) -> dict[str, int]:
        """Return saved bytes per dtype, e.g. ``{"uint8": ..., "float32": ...}``."""
        out: dict[str, int] = {}
        for nbytes, dtype in self.storages.values():
            out[dtype] = out.get(dtype, 0) + nbytes
        return dict(sorted(out.items()))

    def _pack(self, t: Tensor) -> Tensor:
        self.num_saved += 1
        try:
            ptr, nbytes = _storage_key(t)
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. sparse)
            return t
        if ptr not in self.excluded and nbytes > 0:
            previous = self.storages.get(ptr, (0, ""))[0]
            if nbytes >= previous:
                self.storages[ptr] = (nbytes, str(t.dtype).removeprefix("torch."))
        return t


@contextmanager
def count_saved_tensors(exclude: Iterable[Tensor] = ()) -> Iterator[SavedTensorCounter]:
    """Count the bytes autograd keeps for backward inside the ``with`` block.

    Every tensor saved by an autograd node (``ctx.save_for_backward`` included) passes through
    a ``torch.autograd.graph.saved_tensors_hooks`` pack hook; each distinct storage counts once
    at its full size, so views of one tensor are not counted twice, and storages of ``exclude``
    (pass ``model.parameters()`` and ``model.buffers()``) are not counted at all. Tensors
    stashed on ``ctx`` as attributes bypass the hook, which is why the training core never does
    that.

    Examples
    --------
    >>> lin = nn.Linear(4, 3, bias=False)
    >>> with count_saved_tensors(lin.parameters()) as saved:
    ...     lin(torch.ones(2, 4)).sum().backward()
    >>> saved.total_bytes  # the input (2, 4) in float32; the weight is state, not counted
    32
    """
    counter = SavedTensorCounter(excluded={_storage_key(t)[0] for t in exclude})
    with torch.autograd.graph.saved_tensors_hooks(counter._pack, lambda t: t):
        yield counter


def _unique_bytes(tensors: Iterable[Tensor], seen: set[int]) -> int:
    total = 0
    for t in tensors:
        ptr, nbytes = _storage_key(t)
        if ptr not in seen:
            seen.add(ptr)
            total += nbytes
    return total


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [
        value
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, Tensor)
    ]


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes held between steps: ``params + grads + optimizer + buffers`` (each storage once).

    Call it after ``optimizer.step()`` and before ``zero_grad`` so gradients exist. Packed
    1-bit gradients kept in module buffers count as ``buffers``.

    Returns
    -------
    dict
        ``{"params", "grads", "optimizer", "buffers", "total"}`` in bytes.
    """
    seen: set[int] = set()
    params = list(model.parameters())
    out = {
        "params": _unique_bytes(params, seen),
        "grads": _unique_bytes((p.grad for p in params if p.grad is not None), seen),
        "optimizer": _unique_bytes(_optimizer_tensors(optimizer) if optimizer else [], seen),
        "buffers": _unique_bytes(model.buffers(), seen),
    }
    out["total"] = sum(out.values())
    return out


# --------------------------------------------------------------------------------------------
# One training step, measured
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# One recipe of one model, in this process or in a fresh one
# --------------------------------------------------------------------------------------------

_DEFAULT_IN_SHAPES = {
    "mlp": (1, 28, 28),
    "cnv": (3, 32, 32),
    "binarynet": (3, 32, 32),
    "resnete18": (3, 224, 224),
    "resnete18-cifar": (3, 32, 32),
}


def default_in_shape(model_name: str) -> tuple[int, ...]:
    """Return the input shape a model is measured at (one sample, method.md §3).

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
    """Build ``model_name`` under ``recipe`` with :func:`core.build_model` and measure one step.

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
    :class:`StepMeasurement`. Run it in a fresh process (:func:`measure_recipe_isolated`) for
    process figures that belong to this recipe alone.
    """
    from core import build_model, build_optimizer, from_recipe  # the training core

    if phase not in ("all", "memory", "time"):
        raise ValueError(f"phase must be all, memory or time, got {phase!r}")
    shape = tuple(in_shape) if in_shape else default_in_shape(model_name)
    torch.manual_seed(seed)
    rec = from_recipe(recipe, po2_bias=po2_bias)
    model = build_model(model_name, rec, num_classes=num_classes, in_shape=shape)
    analytical = analytical_memory(trace_model(model, shape), recipe, batch_size)
    model = model.to(device)
    optimizer = build_optimizer(model, rec)
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


def measure_recipe_isolated(
    model_name: str,
    recipe: str,
    batch_size: int,
    *,
    in_shape: tuple[int, ...] | None = None,
    num_classes: int = 10,
    steps: int = 5,
    threads: int = 0,
    device: str = "cpu",
    po2_bias: int = 8,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run :func:`measure_recipe` in fresh Python processes: memory, then time.

    The memory phase runs with :data:`MALLOC_ENV` (so the process high-water mark follows the
    tensors); the ``steps`` timed steps run in a second fresh process with stock glibc settings,
    as an application would run. Each child is ``python -m core.cli.memory --worker ...`` and
    prints one JSON object; the result is :func:`measure_recipe`'s, with the second process's
    ``step_seconds``.

    Raises
    ------
    RuntimeError
        With the child's last error line when it fails or times out.
    """
    args = [
        "--model",
        model_name,
        "--recipes",
        recipe,
        "--batch-size",
        str(batch_size),
        "--num-classes",
        str(num_classes),
        "--steps",
        str(steps),
        "--threads",
        str(threads),
        "--device",
        device,
        "--po2-bias",
        str(po2_bias),
    ]
    if in_shape:
        args += ["--in-shape", ",".join(str(d) for d in in_shape)]
    what = f"{model_name}/{recipe} at batch {batch_size}"
    result = _run_worker([*args, "--phase", "memory"], MALLOC_ENV, what, timeout)
    if steps:
        timing = _run_worker([*args, "--phase", "time"], {}, what, timeout)
        result["step_seconds"] = result["measured"]["step_seconds"] = timing["step_seconds"]
        result["measured"]["step_seconds_all"] = timing["step_seconds_all"]
        result["measured"]["steps_timed"] = len(timing["step_seconds_all"])
    return result


def _run_worker(
    args: list[str], malloc_env: dict[str, str], what: str, timeout: float | None
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    env.update(malloc_env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "core.cli.memory", "--worker", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"measuring {what} took over {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit status {done.returncode}"
        raise RuntimeError(f"measuring {what} failed: {why}")
    return json.loads(done.stdout.strip().splitlines()[-1])
