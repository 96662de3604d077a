"""What every benchmark shares: machine facts, fixed threads, atomic JSON/PNG, skip-with-reason.

A benchmark module defines ``NAME``, ``build_parser()``, ``measure(args) -> dict`` and
``plot(result, path)``, and its ``main`` is ``run_benchmark(NAME, measure, plot, args)``, which

1. fixes the torch thread count (``--threads``, stated in the result),
2. calls ``measure``; a :class:`SkipBenchmark` becomes ``{"skipped": reason}`` (exit 0), any
   other exception ``{"error": ...}`` (exit 1),
3. wraps the outcome in an envelope ``{"name", "quick", "machine", "started", "seconds", ...}``
   and writes ``<out>/<name>.json`` atomically, then ``<out>/<name>.png`` through ``plot``
   (each figure carries the machine line of :func:`machine_line`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import io
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "MIB",
    "REPO_ROOT",
    "RESULTS_DIR",
    "SkipBenchmark",
    "git_commit",
    "machine_info",
    "machine_line",
    "set_threads",
    "write_bytes",
    "write_json",
    "read_json",
    "save_figure",
    "benchmark_parser",
    "run_benchmark",
    "flower_env",
    "mlp_federation",
    "utc_now",
]

MIB = 2**20
REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


class SkipBenchmark(Exception):
    """A benchmark cannot run here (no dataset, no GPU); the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# Machine facts
# --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _mem_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def utc_now() -> str:
    """The current UTC time to the minute, as every result file states it."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def git_commit() -> str | None:
    """HEAD of the repository, ``+dirty`` when tracked files other than results have changes.

    Results (``benchmarks/results``, ``BENCHMARKS.md``) are what a run writes, not what it
    measures: a benchmark run after another one in the same checkout still names a clean HEAD.
    """
    try:
        head = _git("rev-parse", "--short", "HEAD")
        outputs = (":(exclude)benchmarks/results", ":(exclude)BENCHMARKS.md")
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *outputs)
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _git(*args: str) -> str:
    """Stdout of ``git args...`` in the repository (raises on failure)."""
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def machine_info() -> dict[str, Any]:
    """Facts a reader needs to compare a figure with their own machine.

    CPU model, logical and usable CPUs, torch intra-op/inter-op threads *as set now*, versions
    (python, torch, numpy, flwr), total memory, the 1-minute load average (the machine may be
    shared: a high load makes timings noisy), CUDA device if any, git commit and the UTC date.
    """
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "memory_bytes": _mem_total_bytes(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "flwr": _version("flwr"),
        "platform": platform.platform(),
        "cuda_device": cuda,
        "git": git_commit(),
        "date": utc_now(),
    }


def machine_line(machine: dict[str, Any]) -> str:
    """One line for a figure or a table caption: CPU, threads, torch, date."""
    return (
        f"{machine.get('cpu', '?')} ({machine.get('usable_cpus', '?')} CPUs), "
        f"{machine.get('threads', '?')} torch thread(s), torch {machine.get('torch', '?')}, "
        f"{machine.get('date', '?')}"
    )


def set_threads(threads: int) -> int:
    """Fix torch's intra-op thread count (``threads >= 1``) and return it."""
    import torch

    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def flower_env(home: Path) -> dict[str, str]:
    """Flower hygiene for a child process: no telemetry/update check/installs, a private home."""
    return {
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_HOME": str(home),
        "RAY_DEDUP_LOGS": "0",
    }


# --------------------------------------------------------------------------------------------
# Atomic files
# --------------------------------------------------------------------------------------------


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync of the folder)."""
    from core.atomic import atomic_write  # temp file + fsync + rename + fsync dir

    atomic_write(path, data)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically (temp file, fsync, rename)."""
    text = json.dumps(payload, indent=1, sort_keys=False, default=_jsonable) + "\n"
    write_bytes(path, text.encode())


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_json(path: Path) -> dict[str, Any]:
    """Read one result file; a broken file raises ``ValueError`` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read benchmark result {path}: {exc}") from None


def save_figure(fig: Any, path: Path, machine: dict[str, Any]) -> None:
    """Stamp ``fig`` with :func:`machine_line`, save it as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.text(0.005, 0.005, machine_line(machine), fontsize=7, color="0.35", ha="left", va="bottom")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------------
# Running one benchmark
# --------------------------------------------------------------------------------------------


def benchmark_parser(name: str, description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes: ``--quick``, ``--threads``, ``--out``."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    parser.add_argument("--quick", action="store_true", help="small settings (a minute or so)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads, fixed (default 1)"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help=f"result folder (default {RESULTS_DIR})"
    )
    return parser


Measure = Callable[[argparse.Namespace], dict[str, Any]]
Plot = Callable[[dict[str, Any], Path], None]


def run_benchmark(
    name: str, measure: Measure, plot: Plot, args: argparse.Namespace, module: str = ""
) -> int:
    """Run ``measure(args)``, write ``<out>/<name>.json`` and ``.png``; return an exit status.

    ``module``: the benchmark's module under ``benchmarks`` when it is not ``name`` (a result
    written under another name), for the command line recorded in the JSON.

    Returns 0 on success or a skip (the JSON then holds ``"skipped": reason``), 1 when
    ``measure`` failed (the JSON holds ``"error"`` and the traceback goes to stderr).
    """
    import matplotlib

    matplotlib.use("Agg")
    if args.threads < 1:
        print(f"{name}: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    set_threads(args.threads)
    started = time.perf_counter()
    envelope: dict[str, Any] = {
        "name": name,
        "quick": bool(args.quick),
        "command": " ".join(
            ["python", "-m", f"benchmarks.{module or name}", *sys.argv[1:]]
        ).replace(f"{REPO_ROOT}/", ""),
        "machine": machine_info(),
    }
    status = 0
    try:
        envelope |= measure(args)
    except SkipBenchmark as exc:
        envelope["skipped"] = str(exc)
        print(f"{name}: skipped: {exc}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - recorded in the JSON, then reported as failure
        envelope["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        status = 1
    envelope["seconds"] = round(time.perf_counter() - started, 1)
    envelope["machine"]["load_avg_1min_end"] = (
        os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    )
    out = Path(args.out)
    write_json(out / f"{name}.json", envelope)
    png = out / f"{name}.png"
    if "skipped" in envelope or "error" in envelope:
        png.unlink(missing_ok=True)  # no stale picture beside a result that has none
    else:
        plot(envelope, png)
    print(f"{name}: wrote {out / f'{name}.json'} in {envelope['seconds']:.0f} s", file=sys.stderr)
    return status


def mlp_federation(
    run_dir: Path,
    *,
    recipe: str,
    rule: str,
    dataset: str,
    root: str = "",
    partition: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    batch_size: int = 100,
    max_batches: int = 0,
    clients: int,
    rounds: int,
    **federation: Any,
):
    """The :class:`core.config.ExperimentConfig` of one benchmark federation of MLPs.

    ``clients`` clients, all sampled every round unless ``clients_per_round`` says otherwise,
    one local epoch (``max_batches`` caps it),
    one torch thread per client, no resume; the 1-bit rules with error feedback, ``fedavg``
    without. ``federation`` holds further :class:`core.config.FederationConfig` fields.
    """
    from core.config import (
        DatasetConfig,
        ExperimentConfig,
        FederationConfig,
        ModelConfig,
        PartitionConfig,
        RecipeConfig,
        StrategyConfig,
        TrainConfig,
    )

    return ExperimentConfig(
        model=ModelConfig(name="mlp"),
        recipe=RecipeConfig(name=recipe),
        dataset=DatasetConfig(name=dataset, root=str(root)),
        partition=PartitionConfig(kind=partition, alpha=alpha, seed=seed),
        train=TrainConfig(
            epochs=1, batch_size=batch_size, max_batches=max_batches, num_threads=1, seed=seed
        ),
        strategy=StrategyConfig(name=rule, error_feedback=rule != "fedavg"),
        federation=FederationConfig(
            num_clients=clients,
            clients_per_round=federation.pop("clients_per_round", clients),
            num_rounds=rounds,
            resume=False,
            **federation,
        ),
        seed=seed,
        output_dir=str(run_dir),
    )
