"""Largest training batch that fits a memory budget, per model and recipe, from measured peaks.

What a device owner wants to know: with 64 MiB, 256 MiB or 1 GiB for training tensors, how
large a batch can each recipe train? Every probe is a real, warm training step measured by
:func:`core.memory.measure_recipe` (the whole-step peak of every tensor alive: weights,
gradients, optimizer state, buffers, the batch itself, saved activations, temporaries; the
interpreter and torch's own code are not counted). The search is a bracketing secant search on
the batch size: the peak grows (piecewise) linearly with the batch, so each new probe aims at
the budget along the line through the nearest measured points, until the largest batch that
fits and the smallest that does not are within ``--tolerance`` of each other. A probe predicted
to take longer than ``--max-probe-seconds`` is not run; the budget's answer is then marked
``extrapolated`` (the secant prediction through the two largest measured batches). Probes grow
at most :data:`GROWTH`-fold per step, so an extrapolation starts from batches near the answer.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from benchmarks.common import MIB, benchmark_parser, run_benchmark, save_figure

__all__ = ["NAME", "BUDGETS", "build_parser", "search_max_batch", "measure", "plot", "main"]

NAME = "max_batch"
RECIPES = ("standard", "lowcost", "lowcost-po2")
BUDGETS = {"64 MiB": 64 * MIB, "256 MiB": 256 * MIB, "1 GiB": 1024 * MIB}
#: Model -> first probe batch (small enough to be cheap, large enough for a clear slope).
START = {"mlp": 64, "cnv": 8, "binarynet": 8, "resnete18": 2}
MAX_BATCH = 1 << 20
MIN_BATCH = 2  # batch norm needs two samples per channel to train
#: Largest step up from the largest fitting probe. 16 let CNV/lowcost jump from probes at batch
#: 8 and 32 (slope underestimated by ~3x) to an extrapolated ~802 where 223 is measured.
GROWTH = 4


def _secant(b1: int, p1: float, b2: int, p2: float, target: float) -> float | None:
    """Batch where the line through ``(b1, p1)`` and ``(b2, p2)`` reaches ``target``."""
    if b2 == b1 or p2 <= p1:
        return None
    return b1 + (target - p1) * (b2 - b1) / (p2 - p1)


def search_max_batch(
    probe: Any,
    budget: int,
    points: dict[int, dict[str, float]],
    *,
    tolerance: float,
    max_probe_seconds: float,
    max_probes: int = 8,
) -> dict[str, Any]:
    """Find the largest batch whose measured peak is ``<= budget``.

    Parameters
    ----------
    probe
        ``probe(batch) -> {"peak": bytes, "seconds": wall seconds}``; results go into ``points``.
    points
        Measured probes so far (shared between budgets of one model and recipe).

    Returns
    -------
    dict
        ``batch`` (largest measured batch that fits; 0 if none does), ``upper`` (smallest
        measured batch that does not; None if none), ``status`` (``bracketed``: the two are
        within ``tolerance``; ``none``: even batch 1 does not fit; ``extrapolated``: the next
        probe would have been too slow, ``estimate`` is the secant prediction; ``probe-limit``),
        ``probes`` (run for this budget).
    """
    probes = 0
    while True:
        fits = sorted(b for b, p in points.items() if p["peak"] <= budget)
        over = sorted(b for b, p in points.items() if p["peak"] > budget)
        lo, hi = (fits[-1] if fits else 0), (over[0] if over else None)
        out: dict[str, Any] = {"batch": lo, "upper": hi, "probes": probes}
        if lo:
            out["peak_at_batch"] = points[lo]["peak"]
        if hi is not None:
            out["peak_at_upper"] = points[hi]["peak"]
        if hi is not None and hi - lo <= max(1, math.floor(tolerance * lo)):
            return out | {"status": "none" if lo == 0 else "bracketed"}
        peak = {b: p["peak"] for b, p in points.items()}
        if lo and hi is not None:  # inside the bracket: aim just below the secant's answer
            guess = _secant(lo, peak[lo], hi, peak[hi], budget)
            cand = math.floor(guess * (1 - tolerance / 4)) if guess else (lo + hi) // 2
            margin = (hi - lo) // 10  # always cut the bracket by a tenth or more
            cand = min(max(cand, lo + 1 + margin), hi - 1 - margin)
        elif lo:  # everything measured fits: aim just above the line through the two largest
            if lo >= MAX_BATCH:
                return out | {"status": "probe-limit"}
            b1 = fits[-2] if len(fits) > 1 else None
            guess = _secant(b1, peak[b1], lo, peak[lo], budget) if b1 else None
            cand = 2 * lo if guess is None else math.ceil(guess * (1 + tolerance / 2))
            # At most GROWTH x the largest probe: small batches carry fixed temporaries (slices
            # sized in bytes), so a line through them underestimates the slope; growing
            # geometrically puts the next secant on probes close to the answer.
            cand = min(max(cand, lo + 1), GROWTH * lo, MAX_BATCH)
        else:  # nothing fits: go down towards batch 1
            assert hi is not None
            if MIN_BATCH in points:
                return out | {"status": "none"}
            b2 = over[1] if len(over) > 1 else None
            guess = _secant(hi, peak[hi], b2, peak[b2], budget) if b2 else None
            cand = math.floor(guess * (1 - tolerance / 4)) if guess is not None else hi // 4
            cand = min(max(cand, MIN_BATCH), hi - 1)
        predicted_s = _predict_seconds(points, cand)
        if predicted_s > max_probe_seconds:
            estimate = math.floor(guess) if guess is not None else cand
            if hi is not None:
                estimate = min(estimate, hi - 1)
            return out | {
                "status": "extrapolated",
                "estimate": max(estimate, lo),
                "estimate_probe_seconds": round(predicted_s, 1),
            }
        if probes >= max_probes:
            return out | {"status": "probe-limit"}
        points[cand] = probe(cand)
        probes += 1


def _predict_seconds(points: dict[int, dict[str, float]], batch: int) -> float:
    """Wall time of a probe at ``batch``: affine in the batch through the two largest probes."""
    (b1, p1), (b2, p2) = (
        sorted(points.items())[-2:] if len(points) > 1 else [(0, {"seconds": 0.0}), *points.items()]
    )
    if batch <= min(points):  # going down: no slower than the smallest probe
        return points[min(points)]["seconds"]
    slope = max((p2["seconds"] - p1["seconds"]) / max(b2 - b1, 1), 0.0)
    return p2["seconds"] + slope * max(batch - b2, 0)


def _prober(model_name: str, recipe: str) -> Any:
    from core.memory import measure_recipe

    def probe(batch: int) -> dict[str, float]:
        t0 = time.perf_counter()
        res = measure_recipe(model_name, recipe, batch, steps=1)
        seconds = time.perf_counter() - t0
        m = res["measured"]
        print(
            f"  {model_name}/{recipe} batch {batch}: peak {m['peak_step_bytes'] / MIB:.1f} MiB "
            f"({seconds:.1f} s)",
            flush=True,
        )
        return {"peak": m["peak_step_bytes"], "seconds": seconds, "where": m["peak_where"]}

    return probe


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Search every model x recipe x budget; probes are shared across a recipe's budgets."""
    models = ["mlp"] if args.quick else list(START)
    budgets = dict(list(BUDGETS.items())[:2]) if args.quick else BUDGETS
    tolerance = args.tolerance or (0.1 if args.quick else 0.03)
    max_s = args.max_probe_seconds or (10.0 if args.quick else 60.0)
    results = []
    for model_name in models:
        for recipe in RECIPES:
            probe = _prober(model_name, recipe)
            start = START[model_name]
            points = {start: probe(start), 4 * start: probe(4 * start)}
            entry: dict[str, Any] = {"model": model_name, "recipe": recipe, "budgets": {}}
            for label, budget in sorted(budgets.items(), key=lambda kv: kv[1]):
                found = search_max_batch(
                    probe, budget, points, tolerance=tolerance, max_probe_seconds=max_s
                )
                entry["budgets"][label] = found | {"budget_bytes": budget}
                est = f", estimate {found['estimate']}" if "estimate" in found else ""
                print(
                    f"{model_name}/{recipe} within {label}: batch {found['batch']} "
                    f"({found['status']}{est})",
                    flush=True,
                )
            entry["probes"] = [{"batch": b, **p} for b, p in sorted(points.items())]
            results.append(entry)
    return {
        "config": {
            "models": models,
            "recipes": list(RECIPES),
            "budgets": budgets,
            "tolerance": tolerance,
            "max_probe_seconds": max_s,
            "peak": "core.memory.measure_recipe peak_step_bytes (MemTracker)",
        },
        "results": results,
    }


def best_batch(found: dict[str, Any]) -> int:
    """The answer to report: the verified batch, or the estimate when extrapolated."""
    return int(
        found.get("estimate", found["batch"])
        if found["status"] == "extrapolated"
        else found["batch"]
    )


def plot(result: dict[str, Any], path: Path) -> None:
    """Grouped bars (log scale): largest batch per model and recipe, one panel per budget."""
    import matplotlib.pyplot as plt

    labels = list(result["config"]["budgets"])
    models = list(dict.fromkeys(r["model"] for r in result["results"]))
    fig, axes = plt.subplots(1, len(labels), figsize=(4.5 * len(labels), 4.5), squeeze=False)
    width = 0.8 / len(RECIPES)
    for ax, label in zip(axes[0], labels):
        for j, recipe in enumerate(RECIPES):
            for i, model in enumerate(models):
                found = next(
                    r for r in result["results"] if r["model"] == model and r["recipe"] == recipe
                )["budgets"][label]
                value = best_batch(found)
                x = i + (j - 1) * width
                extrapolated = found["status"] == "extrapolated"
                ax.bar(
                    x,
                    max(value, 0.8),
                    width,
                    color=f"C{j}",
                    hatch="//" if extrapolated else None,
                    label=recipe if i == 0 else None,
                    alpha=0.6 if extrapolated else 1.0,
                )
                ax.text(
                    x,
                    max(value, 0.8),
                    str(value) if value else "0",
                    ha="center",
                    va="bottom",
                    fontsize=6,
                )
        ax.set_yscale("log")
        ax.set_xticks(range(len(models)), models, fontsize=8)
        ax.set(title=f"budget {label}", ylabel="largest batch that fits")
        ax.grid(axis="y", alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(
        "Largest training batch within a memory budget (hatched: extrapolated from measured peaks)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    save_figure(fig, path, result["machine"])


def build_parser() -> argparse.ArgumentParser:
    """Arguments: the common ones plus tolerance and the per-probe time limit."""
    parser = benchmark_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="stop when (upper - batch) <= tolerance * batch (0.03; quick 0.1)",
    )
    parser.add_argument(
        "--max-probe-seconds",
        type=float,
        default=None,
        help="skip probes predicted to take longer (60; quick 10)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.max_batch [--quick]``."""
    return run_benchmark(NAME, measure, plot, build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
