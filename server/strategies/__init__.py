"""Aggregation strategies: one class per rule, all over one validating base.

==============  =======================  ====================================================
``strategy``    class                    rule
==============  =======================  ====================================================
``mean``        :class:`SignMean`        example-weighted mean of ``scale * sign`` (EF-signSGD)
``aligned``     :class:`SignAligned`     the same, each reply also weighted by its agreement
                                         with the majority vote (FLTrust-style trust score)
``majority``    :class:`SignMajority`    ``step * sign(sum of signs)`` (signSGD-MV), the step
                                         median scale x mean vote margin
``fedavg``      :class:`FedAvgBaseline`  Flower's float32 FedAvg (the baseline)
==============  =======================  ====================================================

Every rule sees the round's replies only after :meth:`BitFedStrategy.bound` has capped their
weights and clipped their scales (or float32 changes) and real-valued state relative to the
round's robust statistics, and aggregates the real-valued state by a trimmed mean
(:mod:`server.aggregate`).

Adding a rule is adding a class and one line in :data:`STRATEGIES`.
"""

from __future__ import annotations

from core.codec import ModelSpec
from core.config import ExperimentConfig
from core.names import StrategyName
from server.strategies.base import BitFedStrategy, Reply, ResumeState
from server.strategies.fedavg import FedAvgBaseline
from server.strategies.sign import SignAligned, SignMajority, SignMean, SignStrategy

__all__ = [
    "BitFedStrategy",
    "SignStrategy",
    "SignMean",
    "SignAligned",
    "SignMajority",
    "FedAvgBaseline",
    "Reply",
    "ResumeState",
    "STRATEGIES",
    "build_strategy",
]

STRATEGIES: dict[StrategyName, type[BitFedStrategy]] = {
    StrategyName.MEAN: SignMean,
    StrategyName.ALIGNED: SignAligned,
    StrategyName.MAJORITY: SignMajority,
    StrategyName.FEDAVG: FedAvgBaseline,
}
assert set(STRATEGIES) == set(StrategyName), "every strategy name needs its class"


def build_strategy(
    cfg: ExperimentConfig, spec: ModelSpec, *, lineage: str, resume: ResumeState | None = None
) -> BitFedStrategy:
    """Return the strategy class of ``cfg.strategy.name``, built for ``spec``."""
    return STRATEGIES[StrategyName(cfg.strategy.name)](cfg, spec, lineage=lineage, resume=resume)
