"""The one list of every name a config may choose: models, recipes, datasets, rules, schedules.

Each is a ``StrEnum``, so a member compares equal to its config string (``RecipeName.LOWCOST ==
"lowcost"``). Config validation, the model and recipe factories, the data loaders, the server's
strategy registry, the command lines and the benchmarks all read these enums; nothing else keeps
a tuple of names. No torch import here, so light entry points stay light.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ModelName",
    "RecipeName",
    "DatasetName",
    "PartitionKind",
    "StrategyName",
    "VoteKind",
    "LRSchedule",
    "AttackName",
    "choices",
]


class ModelName(StrEnum):
    """Networks of docs/method.md §3."""

    MLP = "mlp"
    CNV = "cnv"
    BINARYNET = "binarynet"
    RESNETE18 = "resnete18"
    RESNETE18_CIFAR = "resnete18-cifar"


class RecipeName(StrEnum):
    """Ways of training a model (docs/method.md §1a, §2g)."""

    STANDARD = "standard"
    LOWCOST = "lowcost"
    LOWCOST_PO2 = "lowcost-po2"
    LOWCOST_BOP = "lowcost-bop"  # latent-free: packed binary weights trained by Bop (issue 16)

    def short_str(self) -> str:
        """Name as written in configs."""
        return self.value


class DatasetName(StrEnum):
    """Datasets :mod:`core.data` reads from their standard files (``digits`` ships in sklearn)."""

    DIGITS = "digits"
    MNIST = "mnist"
    FASHION_MNIST = "fashion-mnist"
    CIFAR10 = "cifar10"
    SVHN = "svhn"


class PartitionKind(StrEnum):
    """How a training set is split across federated clients (:mod:`core.data.partition`)."""

    IID = "iid"
    DIRICHLET = "dirichlet"
    SHARDS = "shards"


class StrategyName(StrEnum):
    """Server aggregation rules (:mod:`server.strategies`)."""

    MEAN = "mean"
    ALIGNED = "aligned"
    MAJORITY = "majority"
    FEDAVG = "fedavg"


class VoteKind(StrEnum):
    """How ``majority`` turns the votes into a step (:func:`server.aggregate.majority_vote`)."""

    MARGIN = "margin"  # each coordinate moves by step x the vote margin (for - against) / n
    SIGN = "sign"  # every coordinate moves by the same step in the majority's direction


class LRSchedule(StrEnum):
    """Clients' learning rate over the rounds (:meth:`core.config.FederationConfig.round_lr`)."""

    CONSTANT = "constant"
    COSINE = "cosine"


class AttackName(StrEnum):
    """Attacks a hostile device can make on its reply (``federation.attack``, client/hostile.py)."""

    NONE = "none"  # an honest device
    FLIP = "flip"  # every sign inverted (float32: the local change negated)
    SCALE = "scale"  # honest signs, every scale x 1000 (float32: the change x 1000)
    REAL = "real"  # honest update, every real-valued state value set to 6e4
    EXAMPLES = "examples"  # sign-flipped update claiming 10^5 examples
    RANDOM = "random"  # uniformly random signs, honest scales
    ALIE = "alie"  # colluding "a little is enough": agreed coordinates pushed, scales at the bound
    ABSENT = "absent"  # a reference, not an attack: no update at all, as a perfect rule would see


def choices(enum: type[StrEnum]) -> tuple[str, ...]:
    """Config strings of ``enum``, in declaration order: ``choices(PartitionKind)[0] == "iid"``."""
    return tuple(member.value for member in enum)
