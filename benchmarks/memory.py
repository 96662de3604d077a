"""Memory of one training step per model x batch x recipe: modelled, measured, and the paper's.

For every configuration this calls ``bitfed-memory``'s library: the analytical model of
docs/method.md §5 (:func:`core.memory.analytical_memory` over :func:`core.memory.trace_model`) and,
each recipe in a fresh subprocess with glibc pinned (:func:`core.memory.measure_recipe_isolated`),
the measured figures of :func:`core.memory.measure_step`: bytes autograd saved for backward,
state bytes, the whole-step peak of tensors (MemTracker, with its per-category breakdown at the
peak) and the process high-water mark. Ratios ``standard / recipe`` come from
:func:`launch.memory.compute_ratios` and stand beside the reductions Wang et al. report
(arXiv 2102.04270: MLP 2.78x, CNV 4.17x, BinaryNet 3.71x at batch 100; ResNetE-18 3.78x at
batch 4096, all *modelled*).

``--quick`` measures MLP at batch 100 only; the analytical model covers every
configuration in both modes (it costs one forward pass of one sample).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.common import MIB, benchmark_parser, run_benchmark, save_figure

__all__ = ["NAME", "CONFIGS", "PAPER_RATIOS", "build_parser", "measure", "plot", "main"]

NAME = "memory"
RECIPES = ("standard", "lowcost", "lowcost-po2")
#: (model, batch) pairs of issue 8; ResNetE-18 at ImageNet's 224x224.
CONFIGS = (
    ("mlp", 100),
    ("mlp", 256),
    ("cnv", 100),
    ("cnv", 256),
    ("binarynet", 100),
    ("binarynet", 256),
    ("resnete18", 32),
    ("resnete18", 64),
)
QUICK_MEASURED = (("mlp", 100),)
#: Memory reductions reported by Wang et al. (README of the authors' code; modelled, not measured).
PAPER_RATIOS = {
    "mlp": {"ratio": 2.78, "batch": 100},
    "cnv": {"ratio": 4.17, "batch": 100},
    "binarynet": {"ratio": 3.71, "batch": 100},
    "resnete18": {"ratio": 3.78, "batch": 4096},
}
TRACKER_CATEGORIES = ("Parameter", "Buffer", "Gradient", "Optstate", "Activation", "Temp", "Other")
ANALYTICAL = ("weights", "saved_inputs", "norm_saved", "grad_buffers")
_SHORT = {"standard": "std", "lowcost": "low", "lowcost-po2": "po2"}


def analytical_only(model_name: str, recipe: str, batch: int) -> dict[str, Any]:
    """The §5 model of ``model_name`` under ``recipe`` (no training step is run)."""
    from core import build_model
    from core.memory import analytical_memory, default_in_shape, trace_model

    shape = default_in_shape(model_name)
    model = build_model(model_name, recipe, num_classes=10, in_shape=shape)
    return {
        "analytical": analytical_memory(trace_model(model, shape), recipe, batch),
        "in_shape": list(shape),
        "num_params": sum(p.numel() for p in model.parameters()),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Analytical model for every configuration, measurements for the chosen ones."""
    from launch.memory import compute_ratios, measure_recipe_isolated

    to_measure = set(QUICK_MEASURED if args.quick else CONFIGS)
    rows, ratios = [], []
    for model_name, batch in CONFIGS:
        results = {}
        for recipe in RECIPES:
            row: dict[str, Any] = {"model": model_name, "batch": batch, "recipe": recipe}
            res = None
            if (model_name, batch) in to_measure:
                try:
                    res = measure_recipe_isolated(
                        model_name,
                        recipe,
                        batch,
                        steps=args.steps,
                        threads=args.threads,
                        device="cpu",
                        timeout=args.timeout,
                    )
                except RuntimeError as err:  # recorded; the other configurations still run
                    row["error"] = str(err)
                    print(f"{model_name} b{batch} {recipe}: FAILED: {err}", flush=True)
            if res is not None:
                row |= res
                m = res["measured"]
                analytic, peak = res["analytical"]["total"] / MIB, m["peak_step_bytes"] / MIB
                print(
                    f"{model_name} b{batch} {recipe}: analytical {analytic:.1f} MiB, peak "
                    f"{peak:.1f} MiB (at {m['peak_where']}), saved {m['saved_bytes'] / MIB:.2f}",
                    flush=True,
                )
            else:
                row |= analytical_only(model_name, recipe, batch)
                row["measured"] = None
            results[recipe] = row
            rows.append(row)
        measured = all(r["measured"] is not None for r in results.values())
        if measured:
            per_recipe = compute_ratios(results)
        else:  # analytical ratios only
            std = results["standard"]["analytical"]["total"]
            per_recipe = {
                r: {"analytical": std / results[r]["analytical"]["total"]}
                for r in RECIPES
                if r != "standard"
            }
        paper = PAPER_RATIOS[model_name]
        for recipe, values in per_recipe.items():
            ratios.append(
                {
                    "model": model_name,
                    "batch": batch,
                    "recipe": recipe,
                    "paper": paper["ratio"],
                    "paper_batch": paper["batch"],
                    **values,
                }
            )
    return {
        "config": {
            "configs": [list(c) for c in CONFIGS],
            "recipes": list(RECIPES),
            "measured": [list(c) for c in CONFIGS if c in to_measure],
            "steps": args.steps,
            "device": "cpu",
        },
        "paper_ratios": PAPER_RATIOS,
        "rows": rows,
        "ratios": ratios,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Stacked bars of where the memory goes: per model, modelled vs measured, per recipe."""
    import matplotlib.pyplot as plt

    rows = result["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 5), squeeze=False)
    cmap_a, cmap_m = plt.get_cmap("Blues"), plt.get_cmap("Oranges")
    colors_a = {c: cmap_a(0.35 + 0.6 * i / len(ANALYTICAL)) for i, c in enumerate(ANALYTICAL)}
    colors_m = {
        c: cmap_m(0.25 + 0.7 * i / len(TRACKER_CATEGORIES))
        for i, c in enumerate(TRACKER_CATEGORIES)
    }
    seen_labels: set[str] = set()
    for ax, model in zip(axes[0], models):
        batch = min(r["batch"] for r in rows if r["model"] == model)
        picked = [r for r in rows if r["model"] == model and r["batch"] == batch]
        ticks, labels = [], []
        for i, row in enumerate(picked):
            x = 3 * i
            bottom = 0.0
            for cat in ANALYTICAL:
                value = row["analytical"][cat] / MIB
                label = f"model: {cat}"
                ax.bar(
                    x,
                    value,
                    bottom=bottom,
                    color=colors_a[cat],
                    label=None if label in seen_labels else label,
                )
                seen_labels.add(label)
                bottom += value
            ticks.append(x)
            labels.append(f"{_SHORT[row['recipe']]}\nmodel")
            if row["measured"]:
                bottom = 0.0
                cats = row["measured"]["peak_categories"]
                for cat in TRACKER_CATEGORIES:
                    value = cats.get(cat, 0) / MIB
                    label = f"measured: {cat}"
                    ax.bar(
                        x + 1,
                        value,
                        bottom=bottom,
                        color=colors_m[cat],
                        label=None if label in seen_labels else label,
                    )
                    seen_labels.add(label)
                    bottom += value
                ticks.append(x + 1)
                labels.append(f"{_SHORT[row['recipe']]}\nmeas.")
        ax.set_xticks(ticks, labels, fontsize=7, rotation=0)
        ax.set(ylabel="MiB", title=f"{model}, batch {batch}")
        ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="upper center", ncol=6, fontsize=7, frameon=False)
    fig.suptitle(
        "Where one training step's memory goes (model = docs/method.md §5; measured = "
        "MemTracker at the step's peak)",
        y=0.9,
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 0.86))
    save_figure(fig, path, result["machine"])


def build_parser() -> argparse.ArgumentParser:
    """Arguments: the common ones plus timed steps and a per-recipe timeout."""
    parser = benchmark_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1, help="timed steps per recipe (median)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per recipe")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.memory [--quick]``."""
    return run_benchmark(NAME, measure, plot, build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
