"""The federation issue's setting on MNIST: 30 rounds of one local epoch, 1-bit vs float32 FedAvg.

``python -m benchmarks.federation30 [--quick] [--mnist-root DIR]`` is
:mod:`benchmarks.federation` with its settings fixed to the acceptance test of the federation
issue: MLP, 10 clients all sampled, one full local epoch (batch 100) per round, 30 rounds,
seed 0, ``lowcost`` + the default rule ``aligned`` against float32 ``fedavg`` (recipe
``standard``), IID and Dirichlet(0.5), the clients' learning rate following the default
per-round cosine schedule. Four runs (a lowcost one is ~20 CPU-minutes on an AVX2-only x86-64
CPU, where float16/bfloat16 arithmetic is emulated); ``run_all`` runs it only on request
(``--only federation30``).
Extra arguments are passed on (later ones win, e.g. ``--rounds 10``); ``--quick`` keeps
:mod:`benchmarks.federation`'s quick settings.
"""

from __future__ import annotations

import sys

from benchmarks import federation

__all__ = ["NAME", "SETTING", "main"]

NAME = "federation30"
SETTING = ["--name", NAME, "--rounds", "30", "--clients", "10", "--max-batches", "0"]


def main(argv: list[str] | None = None) -> int:
    """Run :func:`benchmarks.federation.main` with the issue's setting."""
    extra = list(sys.argv[1:] if argv is None else argv)
    setting = ["--name", NAME] if "--quick" in extra else SETTING  # quick: federation's own
    return federation.main([*setting, "--variants", "aligned,fedavg", *extra], module=NAME)


if __name__ == "__main__":
    raise SystemExit(main())
