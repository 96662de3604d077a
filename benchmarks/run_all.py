"""Run every benchmark, then regenerate ``BENCHMARKS.md`` from their JSON files.

``python -m benchmarks.run_all [--quick] [--threads N] [--jobs J] [--only a,b] [--report-only]``

Each benchmark runs as ``python -m benchmarks.<name>`` in its own process (a crash or a leak in
one cannot touch another) and writes ``<out>/<name>.json`` and ``.png``; a benchmark that fails
records its error in its JSON, the others still run, and the exit status is 1. ``--jobs J`` runs
up to J benchmarks at once, each with ``--threads`` torch threads, started in the listed order;
on a 2-core machine ``--threads 1 --jobs 2`` about halves the wall time, and each timed figure
is then taken beside another busy benchmark: read them as the ratios within one benchmark (its
variants run in one process, under the same load). Budget on a 2-core CPU, one at a time: about
2.5 hours for the default set (memory ~1 h, bop ~45 min, server_cost ~30 min), a few minutes
with ``--quick``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import REPO_ROOT, RESULTS_DIR, utc_now, write_json
from benchmarks.report import write_report

__all__ = ["BENCHMARKS", "DEFAULT", "ON_REQUEST", "RUN_LOG", "main"]

#: Run order: cheap and self-contained first, the federation (Ray, dataset) near the end.
BENCHMARKS = (
    "memory",
    "speed",
    "max_batch",
    "bop",
    "server_cost",
    "federation",
    "gpu",
    "federation30",
    "wire",
    "hostile",
    "scale",
    "arm64",
    "arm64_compose",
)
#: What runs on request only (``--only``): ``federation30`` (the federation issue's 30 rounds
#: of full local epochs, four runs, ~40 min on 2 cores), ``wire`` (two real deployments on
#: loopback, three SuperNodes each, ~10 min), ``hostile`` (30 rounds x 5 seeds x 6
#: federations), ``scale`` (1,000 to 100,000 clients, ~5 min), ``arm64`` (the aarch64 chroot
#: under qemu: root) and ``arm64_compose`` (Docker, the arm64 image: ~30 min to build once).
#: Their JSON, when present, is reported either way.
ON_REQUEST = ("federation30", "wire", "hostile", "scale", "arm64", "arm64_compose")
DEFAULT = tuple(b for b in BENCHMARKS if b not in ON_REQUEST)


#: Written by every run (not by ``--report-only``): when it ran, how long each benchmark took.
RUN_LOG = "run_all.json"


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in BENCHMARKS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown benchmark(s) {bad}; choose from {BENCHMARKS}")
    return names


def _command(name: str, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--threads", str(args.threads)]
    cmd += ["--out", str(args.out)] + (["--quick"] if args.quick else [])
    if name in ("federation", "federation30", "scale") and args.mnist_root:
        cmd += ["--mnist-root", args.mnist_root]
    if name == "bop" and args.mnist_root:
        cmd += ["--mnist", args.mnist_root]
    return cmd


def _run_queue(names: list[str], args: argparse.Namespace) -> Iterator[tuple[str, int, float]]:
    """Run ``names`` in order, up to ``args.jobs`` at once; yield ``(name, exit, seconds)``."""
    env = {**os.environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    waiting, running = list(names), {}
    while waiting or running:
        while waiting and len(running) < args.jobs:
            name = waiting.pop(0)
            cmd = _command(name, args)
            print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
            running[name] = (subprocess.Popen(cmd, cwd=REPO_ROOT, env=env), time.perf_counter())
        time.sleep(0.2)
        for name, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                seconds = time.perf_counter() - t0
                print(f"== {name}: exit {proc.returncode} after {seconds:.0f} s", flush=True)
                del running[name]
                yield name, proc.returncode, seconds


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks in sequence and write the report; 1 if any failed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced settings, a few minutes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="benchmarks run at once (default 1; 2 on 2 cores)"
    )
    parser.add_argument(
        "--only", type=_names, default=list(DEFAULT), help=f"comma-separated, of {BENCHMARKS}"
    )
    parser.add_argument("--skip", type=_names, default=[], help="comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="result folder")
    parser.add_argument("--report", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    parser.add_argument("--report-only", action="store_true", help="only regenerate the report")
    parser.add_argument(
        "--mnist-root", default=None, help="MNIST folder for federation(30) and bop"
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")

    failed: list[str] = []
    timings: dict[str, dict[str, float | int]] = {}
    if not args.report_only:
        started, t_all = utc_now(), time.perf_counter()
        names = [n for n in args.only if n not in args.skip]
        for name, status, seconds in _run_queue(names, args):
            timings[name] = {"seconds": round(seconds, 1), "exit": status}
            if status != 0:
                failed.append(name)
        write_json(
            args.out / RUN_LOG,
            {
                "started": started,
                "finished": utc_now(),
                "seconds": round(time.perf_counter() - t_all, 1),
                "quick": bool(args.quick),
                "threads": args.threads,
                "jobs": args.jobs,
                "benchmarks": {n: timings[n] for n in names},
            },
        )
    path = write_report(args.out, args.report)
    print(f"wrote {path}" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
