"""GPU figures: CUDA memory of one training step per recipe, and CNV training throughput.

Only where ``torch.cuda.is_available()``; elsewhere the benchmark records that it was skipped
and why. Memory: :func:`core.memory.measure_recipe` with ``device="cuda"`` for the
configurations of :mod:`benchmarks.memory` (``torch.cuda.max_memory_allocated`` of a warm
step). Throughput: CNV trained on CIFAR-10-shaped batches (3x32x32, batch 100, values in
[-1, 1]) for ``--seconds`` per recipe with :func:`core.memory.training_step`, synchronised
before the clock is read.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import MIB, SkipBenchmark, benchmark_parser, run_benchmark, save_figure
from benchmarks.memory import CONFIGS

__all__ = ["NAME", "build_parser", "measure", "plot", "main"]

NAME = "gpu"
RECIPES = ("standard", "lowcost", "lowcost-po2")


def cnv_throughput(recipe: str, seconds: float, batch: int = 100) -> dict[str, Any]:
    """Samples per second of CNV training under ``recipe`` on the GPU for ``seconds``."""
    import torch

    from core import build_model, build_optimizer
    from core.memory import training_step

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model("cnv", recipe, num_classes=10, in_shape=(3, 32, 32)).to(device)
    opt = build_optimizer(model, recipe)
    x = (torch.randint(0, 256, (batch, 3, 32, 32), device=device).float() / 255) * 2 - 1
    y = torch.randint(0, 10, (batch,), device=device)
    for _ in range(5):  # warm-up: kernels, optimizer state
        training_step(model, opt, x, y)
    torch.cuda.synchronize(device)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        training_step(model, opt, x, y)
        steps += 1
        if steps % 20 == 0:
            torch.cuda.synchronize(device)
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    return {
        "recipe": recipe,
        "steps": steps,
        "seconds": elapsed,
        "samples_per_second": steps * batch / elapsed,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """CUDA peak per configuration and recipe, then CNV throughput per recipe."""
    import torch

    from core.memory import measure_recipe

    if not torch.cuda.is_available():
        raise SkipBenchmark(
            "no CUDA device (torch.cuda.is_available() is False); run "
            "`python -m benchmarks.gpu` on a machine with an NVIDIA GPU and CUDA torch"
        )
    configs = CONFIGS[:1] if args.quick else CONFIGS
    memory = []
    for model_name, batch in configs:
        std = None
        for recipe in RECIPES:
            res = measure_recipe(model_name, recipe, batch, device="cuda", steps=2)
            peak = res["measured"]["cuda_max_allocated_bytes"]
            std = peak if recipe == "standard" else std
            memory.append(
                {
                    "model": model_name,
                    "batch": batch,
                    "recipe": recipe,
                    "cuda_max_allocated_bytes": peak,
                    "step_seconds": res["step_seconds"],
                    "reduction": (std / peak) if std and peak else None,
                }
            )
            print(f"{model_name} b{batch} {recipe}: {peak / MIB:.1f} MiB", flush=True)
            torch.cuda.empty_cache()
    seconds = args.seconds or (5.0 if args.quick else 60.0)
    throughput = [cnv_throughput(r, seconds) for r in RECIPES]
    base = throughput[0]["samples_per_second"]
    for t in throughput:
        t["relative"] = t["samples_per_second"] / base
    return {
        "config": {"configs": [list(c) for c in configs], "seconds_per_recipe": seconds},
        "device": torch.cuda.get_device_name(0),
        "memory": memory,
        "throughput": throughput,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Left: CUDA peak per configuration and recipe; right: CNV samples per second."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    configs = list(dict.fromkeys((r["model"], r["batch"]) for r in result["memory"]))
    width = 0.8 / len(RECIPES)
    for j, recipe in enumerate(RECIPES):
        vals = [
            next(
                r["cuda_max_allocated_bytes"]
                for r in result["memory"]
                if (r["model"], r["batch"]) == c and r["recipe"] == recipe
            )
            / MIB
            for c in configs
        ]
        a.bar([i + (j - 1) * width for i in range(len(configs))], vals, width, label=recipe)
    a.set_xticks(range(len(configs)), [f"{m}\nb{b_}" for m, b_ in configs], fontsize=7)
    a.set(yscale="log", ylabel="MiB", title=f"torch.cuda.max_memory_allocated ({result['device']})")
    a.legend(fontsize=8)
    t = result["throughput"]
    b.bar([x["recipe"] for x in t], [x["samples_per_second"] for x in t])
    b.set(ylabel="samples / s", title="CNV training throughput, CIFAR-10 shape, batch 100")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_figure(fig, path, result["machine"])


def build_parser() -> argparse.ArgumentParser:
    """Arguments: the common ones plus seconds of CNV training per recipe."""
    parser = benchmark_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="per recipe (60; quick 5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.gpu [--quick]``."""
    return run_benchmark(NAME, measure, plot, build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
