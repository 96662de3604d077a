"""lowcost-bop against standard and lowcost: step memory per category, step time, MNIST accuracy.

Issue 16. For MLP, CNV and BinaryNet at batch 100, each recipe is measured in a fresh
subprocess with glibc pinned (:data:`core.memory.MALLOC_ENV`) by :func:`core.memory.measure_step`
(whole-step peak of tensors from MemTracker with its per-category breakdown, the process
high-water mark, saved bytes, state bytes); the model, optimizer and batch are built as
:func:`core.memory.measure_recipe` builds them (:func:`core.planner.measured_peak`'s recipe:
random 8-bit pixels, uint8 codes for the low-cost recipes). Step time: ``--rounds`` fresh
subprocesses per recipe with stock glibc, lowcost and lowcost-bop interleaved (a shared machine's
load then hits both alike), each timing ``--steps`` steps with :func:`core.memory.time_steps`
(wall clock) and ``--steps`` more by ``time.process_time`` (CPU time, robust to other
processes on a shared machine); the figures are medians over all timed steps. Accuracy: the
MNIST MLP trained centrally for ``--epochs`` epochs (batch 100, lr 1e-3, seed 0) with
:func:`core.train.fit` under lowcost and lowcost-bop (two concurrent subprocesses), test
accuracy by :func:`core.train.evaluate` after every epoch (MNIST from ``--mnist``, default
``../shared/data/mnist``).

``--quick``: MLP only, 2 timing rounds, 1 epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    MIB,
    REPO_ROOT,
    SkipBenchmark,
    benchmark_parser,
    run_benchmark,
    save_figure,
)

__all__ = ["NAME", "MODELS", "RECIPES", "TARGETS", "build_parser", "measure", "plot", "main"]

NAME = "bop"
MODELS = ("mlp", "cnv", "binarynet")
RECIPES = ("standard", "lowcost", "lowcost-bop")
BATCH = 100
#: Issue 16's targets: whole-step peak ratio standard / lowcost-bop at batch 100.
TARGETS = {"mlp": 4.0, "cnv": 8.0, "binarynet": 6.0}
CATEGORIES = ("Parameter", "Buffer", "Gradient", "Optstate", "Activation", "Temp", "Other")
DEFAULT_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"


# --- one measurement in a fresh process --------------------------------------------------------


def _build(model_name: str, recipe: str, batch: int, seed: int = 0):
    """Model, optimizer and batch as :func:`core.memory.measure_recipe` builds them."""
    import torch

    from core import build_model, build_optimizer, from_recipe
    from core.memory import default_in_shape

    shape = default_in_shape(model_name)
    torch.manual_seed(seed)
    rec = from_recipe(recipe)
    model = build_model(model_name, rec, num_classes=10, in_shape=shape)
    optimizer = build_optimizer(model, rec)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, *shape), generator=gen, dtype=torch.uint8)
    if not rec.lowcost:
        x = x.float().div_(127.5).sub_(1.0)  # standard: float32 in [-1, 1]
    y = torch.randint(0, 10, (batch,), generator=gen)
    return model, optimizer, x, y


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one phase (``memory``, ``time`` or ``accuracy``) in this (fresh) process."""
    import torch

    from core.memory import measure_step, time_steps, training_step

    if spec["phase"] == "accuracy":
        return train_mnist(spec["recipe"], spec["root"], int(spec["epochs"]), int(spec["threads"]))
    torch.set_num_threads(int(spec["threads"]))
    model, optimizer, x, y = _build(spec["model"], spec["recipe"], int(spec["batch"]))
    if spec["phase"] == "time":  # wall time (the project's time_steps), then CPU time
        wall = time_steps(model, optimizer, x, y, steps=int(spec["steps"]))
        cpu = []
        for _ in range(int(spec["steps"])):
            t0 = time.process_time()
            training_step(model, optimizer, x, y)
            cpu.append(time.process_time() - t0)
        return {"step_seconds_all": wall, "cpu_seconds_all": cpu}
    return measure_step(model, optimizer, x, y, steps=0).as_dict()


def _run_worker(spec: dict[str, Any], pinned: bool, timeout: float) -> dict[str, Any]:
    from core.memory import MALLOC_ENV

    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    if pinned:
        env.update(MALLOC_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = str(spec["threads"])
    cmd = [sys.executable, "-m", "benchmarks.bop", "--worker", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise RuntimeError(f"{spec}: {lines[-1] if lines else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the three measurements -----------------------------------------------------------------


def measure_memory(models: tuple[str, ...], threads: int, timeout: float) -> list[dict[str, Any]]:
    """Whole-step peak, categories, saved and state bytes per model and recipe (batch 100)."""
    rows = []
    for model_name in models:
        for recipe in RECIPES:
            spec = {"model": model_name, "recipe": recipe, "batch": BATCH, "phase": "memory",
                    "threads": threads}  # fmt: skip
            m = _run_worker(spec, pinned=True, timeout=timeout)
            rows.append({"model": model_name, "recipe": recipe, "batch": BATCH, "measured": m})
            print(
                f"{model_name} {recipe}: peak {m['peak_step_bytes'] / MIB:.2f} MiB at "
                f"{m['peak_where']}, state {m['state']['total'] / MIB:.2f} MiB",
                flush=True,
            )
    return rows


def measure_time(
    models: tuple[str, ...], threads: int, rounds: int, steps: int, timeout: float
) -> list[dict[str, Any]]:
    """Median step time of lowcost and lowcost-bop, fresh processes interleaved per round."""
    rows = []
    for model_name in models:
        times: dict[str, list[float]] = {"lowcost": [], "lowcost-bop": []}
        cpu: dict[str, list[float]] = {"lowcost": [], "lowcost-bop": []}
        for _ in range(rounds):
            for recipe in times:
                spec = {"model": model_name, "recipe": recipe, "batch": BATCH, "phase": "time",
                        "threads": threads, "steps": steps}  # fmt: skip
                got = _run_worker(spec, pinned=False, timeout=timeout)
                times[recipe] += got["step_seconds_all"]
                cpu[recipe] += got["cpu_seconds_all"]
        wall = {r: statistics.median(t) for r, t in times.items()}
        cpu_med = {r: statistics.median(t) for r, t in cpu.items()}
        row = {
            "model": model_name,
            "batch": BATCH,
            "step_seconds": wall,
            "cpu_seconds": cpu_med,
            "step_seconds_all": times,
            "cpu_seconds_all": cpu,
            "time_ratio_bop_over_lowcost": wall["lowcost-bop"] / wall["lowcost"],
            "cpu_ratio_bop_over_lowcost": cpu_med["lowcost-bop"] / cpu_med["lowcost"],
        }
        rows.append(row)
        ratio_wall, ratio_cpu = (
            row["time_ratio_bop_over_lowcost"],
            row["cpu_ratio_bop_over_lowcost"],
        )
        print(
            f"{model_name}: median step wall {wall}, CPU {cpu_med}; lowcost-bop / lowcost: "
            f"wall {ratio_wall:.3f}, CPU {ratio_cpu:.3f}",
            flush=True,
        )
    return rows


def train_mnist(recipe: str, root: str, epochs: int, threads: int) -> dict[str, Any]:
    """Central MNIST MLP under ``recipe``: test accuracy after every epoch (one process)."""
    import torch

    from core import build_model, build_optimizer, evaluate, fit
    from core.bop import BopConfig
    from core.data import ImageLoader, load_dataset

    torch.set_num_threads(threads)
    train, test = load_dataset("mnist", root, "train"), load_dataset("mnist", root, "test")
    torch.manual_seed(0)
    model = build_model("mlp", recipe, in_shape=(1, 28, 28))
    optimizer = build_optimizer(model, recipe, 1e-3)
    loader = ImageLoader(train, None, batch_size=BATCH, shuffle=True, seed=0, raw=True)
    test_loader = ImageLoader(test, None, batch_size=1000, shuffle=False, raw=True)
    history, t0 = [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        fitted = fit(model, optimizer, loader, epochs=1)
        acc = evaluate(model, test_loader).accuracy
        flips = sum(s.get("flips", 0) for s in optimizer.state.values())
        history.append({"epoch": epoch, "train_accuracy": fitted.accuracy,
                        "test_accuracy": acc, "last_step_flips": flips})  # fmt: skip
        print(f"mnist mlp {recipe} epoch {epoch}: test {acc:.4f}", file=sys.stderr, flush=True)
    row = {"recipe": recipe, "epochs": epochs, "test_accuracy": history[-1]["test_accuracy"],
           "history": history, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    if recipe == "lowcost-bop":
        cfg = BopConfig()
        row["bop"] = {"gamma": cfg.gamma, "threshold": cfg.threshold}
    return row


class _Training:
    """The two concurrent MNIST runs of :func:`measure_accuracy`."""

    def __init__(self, procs: list[subprocess.Popen], timeout: float) -> None:
        self.procs, self.timeout = procs, timeout

    def wait(self) -> list[dict[str, Any]]:
        """Wait for both runs; return their results (lowcost first)."""
        rows = []
        for proc in self.procs:
            out, _ = proc.communicate(timeout=self.timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"MNIST training failed with exit status {proc.returncode}")
            rows.append(json.loads(out.strip().splitlines()[-1]))
        return rows

    def cancel(self) -> None:
        """Stop both runs (the benchmark failed elsewhere)."""
        for proc in self.procs:
            proc.kill()
            proc.wait()


def measure_accuracy(root: Path, epochs: int, threads: int, timeout: float) -> _Training:
    """Start :func:`train_mnist` for lowcost and lowcost-bop as two concurrent subprocesses."""
    if not (root / "train-images-idx3-ubyte.gz").exists():
        raise SkipBenchmark(f"MNIST not found at {root}; pass --mnist DIR")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    procs = []
    for recipe in ("lowcost", "lowcost-bop"):
        spec = {"phase": "accuracy", "recipe": recipe, "root": str(root), "epochs": epochs,
                "threads": threads}  # fmt: skip
        cmd = [sys.executable, "-m", "benchmarks.bop", "--worker", json.dumps(spec)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env))
    return _Training(procs, timeout)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Memory, time and accuracy (see the module docstring)."""
    models = ("mlp",) if args.quick else MODELS
    rounds, epochs = (2, 1) if args.quick else (args.rounds, args.epochs)
    training = None  # the MNIST runs train while memory (MemTracker: load-independent) is measured
    if not args.skip_accuracy:
        training = measure_accuracy(args.mnist, epochs, args.threads, args.timeout * epochs)
    try:
        memory = measure_memory(models, args.threads, args.timeout)
    except BaseException:
        if training is not None:
            training.cancel()
        raise
    accuracy = [] if training is None else training.wait()
    timing = measure_time(models, args.threads, rounds, args.steps, args.timeout)  # machine quiet
    by = {(r["model"], r["recipe"]): r["measured"] for r in memory}
    ratios = []
    for model_name in models:
        std = by[(model_name, "standard")]
        for recipe in ("lowcost", "lowcost-bop"):
            m = by[(model_name, recipe)]
            ratios.append(
                {
                    "model": model_name,
                    "recipe": recipe,
                    "peak_step": std["peak_step_bytes"] / m["peak_step_bytes"],
                    "peak_step_process": (std["peak_step_process_bytes"] or 0)
                    / max(m["peak_step_process_bytes"] or 1, 1),
                    "state": std["state"]["total"] / m["state"]["total"],
                    "saved": std["saved_bytes"] / m["saved_bytes"],
                    "target": TARGETS[model_name] if recipe == "lowcost-bop" else None,
                }
            )
    return {
        "config": {
            "models": list(models),
            "recipes": list(RECIPES),
            "batch": BATCH,
            "rounds": rounds,
            "steps": args.steps,
            "epochs": epochs,
            "targets": TARGETS,
        },  # fmt: skip
        "memory": memory,
        "ratios": ratios,
        "timing": timing,
        "accuracy": accuracy,
    }


def plot(envelope: dict[str, Any], path: Path) -> None:
    """Stacked MemTracker categories at the step peak, one bar per model x recipe."""
    import matplotlib.pyplot as plt

    rows = envelope["memory"]
    models = envelope["config"]["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 4), squeeze=False)
    for ax, model_name in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r["model"] == model_name]
        bottom = [0.0] * len(mine)
        for cat in CATEGORIES:
            vals = [r["measured"]["peak_categories"].get(cat, 0) / MIB for r in mine]
            ax.bar([r["recipe"] for r in mine], vals, bottom=bottom, label=cat)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_yscale("log")
        ax.set_title(f"{model_name}, batch {BATCH}: step peak (MiB)")
        ax.tick_params(axis="x", labelsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    save_figure(fig, path, envelope["machine"])


def build_parser() -> argparse.ArgumentParser:
    """``python -m benchmarks.bop`` arguments."""
    parser = benchmark_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timing processes per recipe")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
    parser.add_argument("--epochs", type=int, default=10, help="MNIST MLP epochs")
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="MNIST IDX folder")
    parser.add_argument("--skip-accuracy", action="store_true", help="memory and time only")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per subprocess")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    return run_benchmark(NAME, measure, plot, args)


if __name__ == "__main__":
    raise SystemExit(main())
