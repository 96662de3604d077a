"""The largest training batch that fits a memory budget, found by measuring real steps.

:func:`largest_batch` probes the whole-step peak (:func:`core.memory.measure_step`'s
``peak_step_bytes``: every tensor alive at the step's worst moment, the model's state included)
at growing batch sizes, then narrows the bracket between the last batch that fitted and the
first that did not::

    1. b = ``min_batch`` (1; 2 for a model with batch norm, which cannot train on one sample):
       if peak(b) > budget, nothing fits (batch 0, the reason says so);
    2. exponential: b = 2b, 4b, 8b, ... until peak(b) > budget (or b reaches ``max_probe_batch``);
    3. bracket [lo, hi): next probe where the line through the two measured peaks meets the
       budget (clamped inside the bracket), or at the midpoint when the previous probe did not
       halve the bracket (so the worst case is a binary search), until ``hi - lo <=
       max(1, resolution * lo)``; the answer is ``lo`` and the probe at ``lo`` proves it.

Peaks grow about linearly with the batch (per-sample activations and gradients on top of fixed
state), so the interpolation usually lands on the answer and 1-3 probes follow the exponential
phase. When every probe up to ``max_probe_batch`` fits, the answer lies beyond the
probed range: it is extrapolated from the last two measured points, ``peak(b) = a + s b``, and
labelled ``extrapolated`` (no probe proves it).

A probe is any ``callable(batch) -> peak_bytes``; the default, :func:`measured_peak`, measures one
warm step in this process, exactly as :func:`core.memory.measure_recipe` builds it (a launcher may
pass one that measures in a fresh subprocess instead). Probes are cached per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from core.config import ExperimentConfig

__all__ = [
    "MIN_TRAIN_BATCH",
    "Probe",
    "PlanResult",
    "largest_batch",
    "measured_peak",
    "config_peak",
    "plan_for_config",
    "parse_bytes",
]

ProbeFn = Callable[[int], int]

#: Smallest batch a bitfed model trains on: its batch norms need two samples (a deviation), which
#: is also why :func:`core.experiment.train_loader` drops a last batch of one.
MIN_TRAIN_BATCH = 2

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
          "g": 1e9, "gb": 1e9, "gib": 2**30}  # fmt: skip


@dataclass(frozen=True)
class Probe:
    """One measured step: its batch, whole-step peak (bytes) and whether it fits the budget."""

    batch: int
    peak_bytes: int
    fits: bool


@dataclass(frozen=True)
class PlanResult:
    """Answer of :func:`largest_batch`.

    Attributes
    ----------
    model, recipe : str
        What was planned.
    budget_bytes : int
        The budget.
    batch : int
        Largest batch whose whole-step peak fits (0: not even ``min_batch`` fits).
    peak_bytes : int
        Peak at ``batch``: measured, or predicted when ``extrapolated`` (0 when ``batch`` is 0).
    extrapolated : bool
        ``batch`` lies beyond the largest probed batch; ``peak_bytes`` is the linear fit's.
    proof : Probe or None
        The measured probe at ``batch`` (None when extrapolated or nothing fits).
    probes : tuple of Probe
        Every probe, in the order they ran.
    reason : str
        One line saying how the answer was found, or why nothing fits.
    """

    model: str
    recipe: str
    budget_bytes: int
    batch: int
    peak_bytes: int
    extrapolated: bool
    proof: Probe | None
    probes: tuple[Probe, ...] = field(default_factory=tuple)
    reason: str = ""

    @property
    def fits(self) -> bool:
        """Whether some batch (>= 1) fits the budget."""
        return self.batch >= 1

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {**asdict(self), "fits": self.fits}


def parse_bytes(text: str | int) -> int:
    """``"64MiB"`` -> 67108864; ``"48MB"`` -> 48000000; a bare number is bytes.

    >>> parse_bytes("64MiB"), parse_bytes("1.5 GiB"), parse_bytes(4096)
    (67108864, 1610612736, 4096)
    """
    if isinstance(text, int):
        value = text
    else:
        s = text.strip().lower().replace(" ", "")
        digits = s.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = s[len(digits) :]
        if unit not in _UNITS or not digits:
            raise ValueError(f"memory size {text!r} is not like 64MiB, 48MB or 1.5GiB")
        value = int(float(digits) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"memory size must be > 0 bytes, got {text!r}")
    return value


def measured_peak(
    model_name: str,
    recipe: str,
    batch: int,
    *,
    in_shape: tuple[int, ...] | None = None,
    num_classes: int = 10,
    seed: int = 0,
    po2_bias: int = 8,
) -> int:
    """Whole-step peak (bytes) of one warm training step at ``batch``, measured in this process.

    The model, optimizer and batch are built as :func:`core.memory.measure_recipe` builds them
    (random 8-bit pixels: uint8 codes for low-cost recipes, float32 for ``standard``;
    ``po2_bias`` is ``lowcost-po2``'s ``b_off``), and the
    figure is :func:`core.memory.measure_step`'s ``peak_step_bytes`` (MemTracker: tensors, so
    other probes in this process do not disturb it).
    """
    from core import build_model, build_optimizer, from_recipe
    from core.memory import default_in_shape, measure_step

    shape = tuple(in_shape) if in_shape else default_in_shape(model_name)
    torch.manual_seed(seed)
    rec = from_recipe(recipe, po2_bias=po2_bias)
    model = build_model(model_name, rec, num_classes=num_classes, in_shape=shape)
    optimizer = build_optimizer(model, rec)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, *shape), generator=gen, dtype=torch.uint8)
    if not rec.lowcost:
        x = x.float().div_(127.5).sub_(1.0)  # (B, C, H, W) in [-1, 1]
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    return int(measure_step(model, optimizer, x, y, steps=0).peak_step_bytes)


def config_peak(
    cfg: ExperimentConfig, batch: int, in_shape: tuple[int, ...], num_classes: int
) -> int:
    """Whole-step peak (bytes) of one warm step at ``batch`` of the run ``cfg`` trains.

    As :func:`measured_peak`, but the model and optimizer come from
    :mod:`core.experiment` (``build_model_for``/``build_optimizer_for``): every recipe key of
    the run (``po2_bias``, ...) reaches the probe as it reaches training. ``in_shape`` and
    ``num_classes`` are the local dataset's.
    """
    from core.experiment import build_model_for, build_optimizer_for, recipe_of
    from core.memory import measure_step

    model = build_model_for(cfg, in_shape, num_classes)
    optimizer = build_optimizer_for(cfg, model)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randint(0, 256, (batch, *in_shape), generator=gen, dtype=torch.uint8)
    if not recipe_of(cfg).lowcost:
        x = x.float().div_(127.5).sub_(1.0)  # (B, C, H, W) in [-1, 1], as the loader feeds it
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    return int(measure_step(model, optimizer, x, y, steps=0).peak_step_bytes)


def plan_for_config(
    cfg: ExperimentConfig,
    budget_bytes: int | str,
    in_shape: tuple[int, ...],
    num_classes: int,
    *,
    max_batch: int | None = None,
) -> PlanResult:
    """Largest batch, at most ``max_batch`` (default ``train.batch_size``), that fits the budget.

    The configured batch is the ceiling: a budget only ever makes the batch smaller. Probes
    start at :data:`MIN_TRAIN_BATCH` and are measured with :func:`config_peak`; the answer is
    exact (``resolution`` 0) below the ceiling, and the probe at the ceiling proves it when the
    whole configured batch fits.
    """
    top = max(MIN_TRAIN_BATCH, cfg.train.batch_size if max_batch is None else max_batch)
    plan = largest_batch(
        cfg.model.name, cfg.recipe.name, budget_bytes, in_shape=tuple(in_shape),
        num_classes=num_classes, max_probe_batch=top, resolution=0.0, min_batch=MIN_TRAIN_BATCH,
        probe=lambda b: config_peak(cfg, b, tuple(in_shape), num_classes),
    )  # fmt: skip
    if plan.batch <= top:
        return plan
    proof = next(p for p in plan.probes if p.batch == top)  # measured, and it fits
    why = f"measured: the configured batch {top} fits (train.batch_size is the ceiling)"
    return PlanResult(
        plan.model, plan.recipe, plan.budget_bytes, top, proof.peak_bytes, False, proof,
        plan.probes, why,
    )  # fmt: skip


def largest_batch(
    model_name: str,
    recipe: str,
    budget_bytes: int | str,
    *,
    in_shape: tuple[int, ...] | None = None,
    num_classes: int = 10,
    probe: ProbeFn | None = None,
    max_probe_batch: int = 4096,
    resolution: float = 0.02,
    min_batch: int = 1,
) -> PlanResult:
    """Find the largest batch whose measured whole-step peak fits ``budget_bytes``.

    Parameters
    ----------
    model_name, recipe : str
        Model and recipe (as for :func:`core.build_model`).
    budget_bytes : int or str
        Memory budget: bytes, or a size such as ``"64MiB"`` (:func:`parse_bytes`).
    in_shape, num_classes
        Input shape of one sample (default: the model's dataset) and number of classes.
    probe : callable, optional
        ``probe(batch) -> peak_bytes``; default :func:`measured_peak` for this model/recipe.
    max_probe_batch : int
        Largest batch measured; beyond it the answer is extrapolated (and labelled so).
    resolution : float
        Stop when the bracket ``(lo, hi)`` is at most ``max(1, resolution * lo)`` wide: the
        answer is then within that fraction of the largest fitting batch (0 = exact).
    min_batch : int
        Smallest batch worth training (first probe): 2 where batch norm needs two samples.

    Returns
    -------
    PlanResult
    """
    budget = parse_bytes(budget_bytes)
    if not 1 <= min_batch <= max_probe_batch:
        raise ValueError(
            f"need 1 <= min_batch <= max_probe_batch, got {min_batch} and {max_probe_batch}"
        )
    if not 0.0 <= resolution < 1.0:
        raise ValueError(f"resolution must be in [0, 1), got {resolution}")
    if probe is None:

        def probe(b: int) -> int:
            return measured_peak(model_name, recipe, b, in_shape=in_shape, num_classes=num_classes)

    probes: list[Probe] = []
    cache: dict[int, Probe] = {}

    def measure(b: int) -> Probe:
        if b not in cache:
            peak = int(probe(b))
            cache[b] = Probe(b, peak, peak <= budget)
            probes.append(cache[b])
        return cache[b]

    def result(batch: int, peak: int, extrapolated: bool, proof: Probe | None, why: str):
        return PlanResult(
            model_name, str(recipe), budget, batch, peak, extrapolated, proof, tuple(probes), why
        )

    first = measure(min_batch)
    if not first.fits:
        why = (
            f"batch {min_batch} needs {first.peak_bytes} bytes, over the budget of {budget} "
            "bytes: nothing fits"
        )
        return result(0, 0, False, None, why)
    lo, hi = first, None
    while hi is None and lo.batch < max_probe_batch:  # exponential phase
        p = measure(min(2 * lo.batch, max_probe_batch))
        lo, hi = (p, None) if p.fits else (lo, p)
    if hi is None:  # everything probed fits: extrapolate from the last two points
        return _extrapolate(probes, budget, result)
    bisect = False
    while hi.batch - lo.batch > max(1, math.floor(resolution * lo.batch)):  # narrow the bracket
        width = hi.batch - lo.batch
        p = measure(lo.batch + width // 2 if bisect else _interpolate(lo, hi, budget))
        lo, hi = (p, hi) if p.fits else (lo, p)
        bisect = hi.batch - lo.batch > width / 2  # interpolation too slow here: bisect next
    why = f"measured: batch {lo.batch} fits, batch {hi.batch} does not"
    return result(lo.batch, lo.peak_bytes, False, lo, why)


def _interpolate(lo: Probe, hi: Probe, budget: int) -> int:
    """Largest batch under the budget on the line through ``lo`` and ``hi``, inside ``(lo, hi)``."""
    width = hi.batch - lo.batch
    slope = (hi.peak_bytes - lo.peak_bytes) / width
    guess = lo.batch + (budget - lo.peak_bytes) / slope if slope > 0 else lo.batch + width / 2
    return int(min(max(math.floor(guess), lo.batch + 1), hi.batch - 1))


def _extrapolate(probes: list[Probe], budget: int, result: Callable[..., PlanResult]):
    last = max(probes, key=lambda p: p.batch)
    prev = max((p for p in probes if p.batch < last.batch), key=lambda p: p.batch, default=None)
    if prev is None or last.peak_bytes <= prev.peak_bytes:
        why = (
            f"measured: batch {last.batch} (max_probe_batch) fits; no growing pair of probes "
            "to extrapolate from"
        )
        return result(last.batch, last.peak_bytes, False, last, why)
    slope = (last.peak_bytes - prev.peak_bytes) / (last.batch - prev.batch)
    batch = last.batch + int((budget - last.peak_bytes) // slope)
    peak = int(round(last.peak_bytes + slope * (batch - last.batch)))
    why = (
        f"extrapolated: batch {last.batch} (largest probed) fits; peak grows "
        f"{slope:.0f} bytes/sample between batches {prev.batch} and {last.batch}"
    )
    return result(batch, peak, True, None, why)
