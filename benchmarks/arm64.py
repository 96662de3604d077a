"""The same training on aarch64 and x86-64: digits accuracy per recipe and seed (issue 19).

``python -m benchmarks.arm64 [--epochs 10] [--seeds 0 1 2]`` trains the digits MLP centrally
(``benchmarks.arm64_compare.train_records``: one torch thread, batch 100, ``standard`` and
``lowcost``) twice with the same seeds: here on the host (x86-64, the project's torch) and in
the aarch64 environment of ``scripts/test-arm64.sh`` (Debian bookworm arm64 under qemu-user,
an emulated Cortex-A72 = Raspberry Pi 4, torch 2.9.1 from ``constraints-device-aarch64.txt``),
and writes both accuracy tables to ``benchmarks/results/arm64.json``. Emulation makes the
aarch64 side's seconds meaningless as a device's speed; its accuracies are the device's.

Needs root (the chroot's mounts) and qemu-user's binfmt; without them the result says skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.arm64_compare import RECIPES, train_records
from benchmarks.common import REPO_ROOT, SkipBenchmark, benchmark_parser, run_benchmark

__all__ = ["QEMU_CPU", "aarch64_records", "measure", "main"]

QEMU_CPU = os.environ.get("BITFED_QEMU_CPU", "cortex-a72")
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")


def aarch64_records(epochs: int, seeds: list[int], timeout: float = 7200.0) -> dict[str, Any]:
    """:func:`train_records` run in the aarch64 chroot (``scripts/test-arm64.sh --shell``)."""
    if os.geteuid() != 0:
        raise SkipBenchmark("the aarch64 chroot needs root (scripts/test-arm64.sh mounts)")
    if not BINFMT.exists() and shutil.which("update-binfmts") is None:
        raise SkipBenchmark("no qemu-aarch64 binfmt handler; run scripts/test-arm64.sh once")
    seed_args = " ".join(str(s) for s in seeds)
    cmd = [
        "bash",
        str(REPO_ROOT / "scripts" / "test-arm64.sh"),
        "--shell",
        f"python -m benchmarks.arm64_compare train --json --epochs {epochs} --seeds {seed_args}",
    ]
    started = time.perf_counter()
    proc = subprocess.run(
        cmd,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "BITFED_QEMU_CPU": QEMU_CPU, "PYTHON": sys.executable},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " ".join((proc.stderr or proc.stdout).split())[-600:]
        raise RuntimeError(f"the aarch64 run failed (exit {proc.returncode}): {tail}")
    records = json.loads(lines[-1])
    records["qemu_cpu"] = QEMU_CPU
    records["wall_seconds"] = round(time.perf_counter() - started, 1)
    return records


def measure(args: argparse.Namespace) -> dict[str, Any]:
    epochs, seeds = (2, [0]) if args.quick else (args.epochs, args.seeds)
    started = time.perf_counter()
    host = train_records(epochs, seeds)
    host["wall_seconds"] = round(time.perf_counter() - started, 1)
    device = aarch64_records(epochs, seeds)
    return {
        "config": {
            "model": "mlp",
            "dataset": "digits",
            "epochs": epochs,
            "seeds": seeds,
            "recipes": list(RECIPES),
            "batch": host["batch"],
            "threads": 1,
        },
        "platforms": {"x86_64": host, "aarch64": device},
    }


def _no_plot(result: dict[str, Any], path: Path) -> None:
    path.unlink(missing_ok=True)  # the table says it all


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("arm64", __doc__.split("\n", 1)[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    return run_benchmark("arm64", measure, _no_plot, args)


if __name__ == "__main__":
    raise SystemExit(main())
