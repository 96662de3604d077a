"""Training-step time per recipe, as ratios to ``standard`` measured in the same run.

Per model, the three recipes are built side by side (:func:`core.build_model`,
:func:`core.build_optimizer`) on one fixed batch (uniform noise in [-1, 1], random labels: the
arithmetic does not depend on the values). After warm-up steps, each *round* times one
:func:`core.memory.training_step` of every recipe, in an order that rotates from round to round
(standard first, then lowcost first, ...), so a slow spell of a shared machine hits every
recipe alike. Reported per recipe: the median step time, the median of the per-round ratios
``t_recipe / t_standard`` with its interquartile range, and samples per second. The torch
thread count is fixed (``--threads``) and stated.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import benchmark_parser, run_benchmark, save_figure

__all__ = ["NAME", "CONFIGS", "build_parser", "measure", "plot", "main"]

NAME = "speed"
RECIPES = ("standard", "lowcost", "lowcost-po2")
#: (model, batch, seconds of timed rounds per model) for the full run.
CONFIGS = (
    ("mlp", 100, 10.0),
    ("cnv", 100, 20.0),
    ("binarynet", 100, 30.0),
    ("resnete18", 32, 30.0),
)
QUICK_CONFIGS = (("mlp", 100, 4.0), ("cnv", 32, 6.0))
MIN_ROUNDS, MAX_ROUNDS = 3, 40


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    """25th, 50th and 75th percentile (inclusive method; exact for 3+ values)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def time_model(model_name: str, batch: int, budget_s: float, warmup: int = 2) -> dict[str, Any]:
    """Alternating timed rounds of every recipe of ``model_name`` on one batch."""
    import torch

    from core import build_model, build_optimizer
    from core.memory import default_in_shape, training_step

    shape = default_in_shape(model_name)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch, *shape), generator=gen) * 2 - 1
    y = torch.randint(0, 10, (batch,), generator=gen)
    variants = {}
    for recipe in RECIPES:
        torch.manual_seed(0)
        model = build_model(model_name, recipe, num_classes=10, in_shape=shape)
        variants[recipe] = (model, build_optimizer(model, recipe))
    warm: dict[str, float] = {}
    for recipe, (model, opt) in variants.items():
        for _ in range(warmup):
            t0 = time.perf_counter()
            training_step(model, opt, x, y)
            warm[recipe] = time.perf_counter() - t0
    rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, budget_s // max(sum(warm.values()), 1e-6))))
    times: dict[str, list[float]] = {r: [] for r in RECIPES}
    for i in range(rounds):
        order = RECIPES[i % len(RECIPES) :] + RECIPES[: i % len(RECIPES)]
        for recipe in order:
            model, opt = variants[recipe]
            t0 = time.perf_counter()
            training_step(model, opt, x, y)
            times[recipe].append(time.perf_counter() - t0)
    out: dict[str, Any] = {
        "model": model_name,
        "batch": batch,
        "in_shape": list(shape),
        "rounds": rounds,
        "warmup": warmup,
        "recipes": {},
    }
    for recipe in RECIPES:
        ratios = [t / s for t, s in zip(times[recipe], times["standard"])]
        q1, med, q3 = _quantiles(ratios)
        step = statistics.median(times[recipe])
        out["recipes"][recipe] = {
            "step_seconds": step,
            "samples_per_second": batch / step,
            "ratio_to_standard": med,
            "ratio_q1": q1,
            "ratio_q3": q3,
            "step_seconds_all": times[recipe],
        }
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Time every configured model; each one's recipes alternate within the same rounds."""
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    models = []
    for model_name, batch, budget in configs:
        res = time_model(model_name, batch, budget * args.budget_scale)
        models.append(res)
        line = ", ".join(
            f"{r} {v['step_seconds'] * 1e3:.0f} ms ({v['ratio_to_standard']:.2f}x)"
            for r, v in res["recipes"].items()
        )
        print(f"{model_name} b{batch}, {res['rounds']} rounds: {line}", flush=True)
    return {
        "config": {
            "configs": [list(c) for c in configs],
            "recipes": list(RECIPES),
            "budget_scale": args.budget_scale,
            "data": "uniform noise in [-1, 1]",
        },
        "models": models,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Per model, each recipe's step time relative to standard (median, interquartile bars)."""
    import matplotlib.pyplot as plt

    models = result["models"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(RECIPES)
    for j, recipe in enumerate(RECIPES):
        xs = [i + (j - 1) * width for i in range(len(models))]
        med = [m["recipes"][recipe]["ratio_to_standard"] for m in models]
        low = [m - m_["recipes"][recipe]["ratio_q1"] for m, m_ in zip(med, models)]
        high = [m_["recipes"][recipe]["ratio_q3"] - m for m, m_ in zip(med, models)]
        ax.bar(xs, med, width, yerr=[low, high], capsize=3, label=recipe)
        for x, v, h in zip(xs, med, high):
            ax.text(x, v + h, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="0.3", lw=0.8)
    ax.set_xticks(
        range(len(models)), [f"{m['model']}\nbatch {m['batch']}" for m in models], fontsize=8
    )
    ax.set(
        ylabel="step time / standard's (lower is faster)",
        title="Training-step time relative to standard, same run, alternating",
    )
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_figure(fig, path, result["machine"])


def build_parser() -> argparse.ArgumentParser:
    """Arguments: the common ones plus a scale on the per-model time budget."""
    parser = benchmark_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="multiply each model's timing budget (default 1)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.speed [--quick] [--threads N]``."""
    return run_benchmark(NAME, measure, plot, build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
