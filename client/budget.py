"""A device's training-memory budget: node config ``memory-budget=48MiB`` caps its batch.

A SuperNode started with ``--node-config "... memory-budget=48MiB"`` trains each round with
the largest batch ``b <= train.batch_size`` whose measured whole-step peak (MemTracker: every
tensor alive at the step's worst moment, model and optimizer state included) fits the budget,
found by :func:`core.planner.plan_for_config` under the run's model and recipe. When even the
smallest trainable batch (:data:`core.planner.MIN_TRAIN_BATCH`) does not fit, the device
refuses the round: it sends no update, only ``refused`` = 1, the budget, the measured need and
one line saying why, which the server counts and logs by node.

A plan is cached per configuration (model, recipe, input shape, classes, budget, ceiling, torch
version): in the process, and as ``memory-plan-<digest>.json`` in the device's state folder, so
the ClientApp process Flower starts for each round reads it instead of measuring again. The peak
is of tensors, not of the process: interpreter, libraries and allocator slack come on top.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from core.atomic import atomic_write_json
from core.config import ExperimentConfig
from core.planner import PlanResult, Probe, parse_bytes, plan_for_config

__all__ = ["NODE_KEY", "BatchChoice", "budget_of", "choose_batch"]

NODE_KEY = "memory-budget"  # node config key: bytes, or a size such as "48MiB"

_PLANS: dict[tuple, PlanResult] = {}
_LOCK = threading.Lock()  # MemTracker's module hooks are global: one plan at a time per process


@dataclass(frozen=True)
class BatchChoice:
    """The batch this device trains with this round (0: it refuses), and why."""

    batch: int
    budget_bytes: int
    plan: PlanResult

    @property
    def refused(self) -> bool:
        """No trainable batch fits the budget."""
        return self.batch < 1

    @property
    def need_bytes(self) -> int:
        """Measured peak at the smallest probed batch."""
        return min(self.plan.probes, key=lambda p: p.batch).peak_bytes

    @property
    def reason(self) -> str:
        """One line for the server's log (refusal) or the record (choice)."""
        if not self.refused:
            return self.plan.reason
        first = min(self.plan.probes, key=lambda p: p.batch)
        return (
            f"memory-budget {self.budget_bytes / 2**20:.2f} MiB is below the measured step peak "
            f"{first.peak_bytes / 2**20:.2f} MiB at the smallest batch {first.batch} "
            f"({self.plan.model}/{self.plan.recipe})"
        )


def budget_of(node_config: dict) -> int | None:
    """Return the node config's ``memory-budget`` in bytes (``None`` when not given).

    Raises ``ValueError`` naming the key and the fix when it is not a size.
    """
    raw = node_config.get(NODE_KEY)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        return parse_bytes(raw if isinstance(raw, int) else str(raw))
    except ValueError as err:
        raise ValueError(
            f"node config {NODE_KEY}={raw!r}: {err}; start the SuperNode with --node-config "
            f'"... {NODE_KEY}=48MiB" (or leave it out for no budget)'
        ) from None


def choose_batch(
    cfg: ExperimentConfig,
    budget_bytes: int,
    in_shape: tuple[int, ...],
    num_classes: int,
    examples: int,
    cache_dir: Path | None = None,
) -> BatchChoice:
    """Largest batch at most ``min(train.batch_size, examples)`` that fits ``budget_bytes``.

    Cached per process, and in ``cache_dir`` when given, for the same model, recipe, shape,
    classes, budget, ceiling and torch version.
    """
    top = max(1, min(cfg.train.batch_size, examples))
    key = (repr(cfg.model), repr(cfg.recipe), tuple(in_shape), num_classes, budget_bytes, top,
           torch.__version__)  # fmt: skip
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
    path = None if cache_dir is None else Path(cache_dir) / f"memory-plan-{digest}.json"
    with _LOCK:
        if key not in _PLANS and path is not None:
            _PLANS[key] = _load(path, repr(key))
        if _PLANS.get(key) is None:
            _PLANS[key] = plan_for_config(
                cfg, budget_bytes, tuple(in_shape), num_classes, max_batch=top
            )
            if path is not None:
                atomic_write_json(path, {"key": repr(key), "plan": _PLANS[key].as_dict()})
        plan = _PLANS[key]
    return BatchChoice(plan.batch, budget_bytes, plan)


def _load(path: Path, key: str) -> PlanResult | None:
    """Return the plan cached at ``path``; ``None`` when absent, unreadable or for another key."""
    try:
        saved = json.loads(path.read_text())
        if saved["key"] != key:
            return None
        plan = dict(saved["plan"])
        plan.pop("fits", None)
        probes = tuple(Probe(**p) for p in plan.pop("probes"))
        proof = plan.pop("proof")
        return PlanResult(**plan, proof=Probe(**proof) if proof else None, probes=probes)
    except (OSError, ValueError, KeyError, TypeError):
        return None
