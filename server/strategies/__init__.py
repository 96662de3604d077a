"""Aggregation strategies: one class per rule, all over one validating base.

==============  =====================  ======================================================
``strategy``    class                  rule
==============  =====================  ======================================================
``mean``        :class:`SignMean`      example-weighted mean of ``scale * sign`` (EF-signSGD)
``majority``    :class:`SignMajority`  ``majority_step * sign(sum of signs)`` (signSGD-MV)
``fedavg``      :class:`FedAvgBaseline`  Flower's float32 FedAvg (the baseline)
==============  =====================  ======================================================

Adding a rule is adding a class and one line in :data:`STRATEGIES`.
"""

from __future__ import annotations

from core.codec import ModelSpec
from core.config import ExperimentConfig
from core.names import StrategyName
from server.strategies.base import BitFedStrategy, Reply, ResumeState
from server.strategies.fedavg import FedAvgBaseline
from server.strategies.sign import SignMajority, SignMean, SignStrategy

__all__ = [
    "BitFedStrategy",
    "SignStrategy",
    "SignMean",
    "SignMajority",
    "FedAvgBaseline",
    "Reply",
    "ResumeState",
    "STRATEGIES",
    "build_strategy",
]

STRATEGIES: dict[StrategyName, type[BitFedStrategy]] = {
    StrategyName.MEAN: SignMean,
    StrategyName.MAJORITY: SignMajority,
    StrategyName.FEDAVG: FedAvgBaseline,
}
assert set(STRATEGIES) == set(StrategyName), "every strategy name needs its class"


def build_strategy(
    cfg: ExperimentConfig, spec: ModelSpec, *, lineage: str, resume: ResumeState | None = None
) -> BitFedStrategy:
    """Return the strategy class of ``cfg.strategy.name``, built for ``spec``."""
    return STRATEGIES[StrategyName(cfg.strategy.name)](cfg, spec, lineage=lineage, resume=resume)
