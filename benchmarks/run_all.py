"""Run every benchmark, then regenerate ``BENCHMARKS.md`` from their JSON files.

``python -m benchmarks.run_all [--quick] [--threads N] [--only a,b] [--report-only]``

Each benchmark runs as ``python -m benchmarks.<name>`` in its own process (a crash or a leak in
one cannot touch another) and writes ``<out>/<name>.json`` and ``.png``; a benchmark that fails
records its error in its JSON, the others still run, and the exit status is 1. Budget: about
30 minutes on a 2-core CPU for the full run, a few minutes with ``--quick``; that figure was
measured before ``bop`` (issue 16's latent-free recipe: memory and step time of MLP, CNV and
BinaryNet, ten MNIST MLP epochs under two recipes) joined the default run, which adds its own time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
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
    "hostile",
)
#: What runs on request only (``--only``): ``federation30`` (the federation issue's 30 rounds
#: of full local epochs, four runs, ~6 min) and ``hostile`` (30 rounds x 5 seeds x 6
#: federations). Their JSON, when present, is reported either way.
ON_REQUEST = ("federation30", "hostile")
DEFAULT = tuple(b for b in BENCHMARKS if b not in ON_REQUEST)


#: Written by every run (not by ``--report-only``): when it ran, how long each benchmark took.
RUN_LOG = "run_all.json"


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in BENCHMARKS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown benchmark(s) {bad}; choose from {BENCHMARKS}")
    return names


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks in sequence and write the report; 1 if any failed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced settings, a few minutes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
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

    failed = []
    timings: dict[str, dict[str, float | int]] = {}
    if not args.report_only:
        started, t_all = utc_now(), time.perf_counter()
        env = {**os.environ}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        for name in [n for n in args.only if n not in args.skip]:
            cmd = [
                sys.executable,
                "-m",
                f"benchmarks.{name}",
                "--threads",
                str(args.threads),
                "--out",
                str(args.out),
            ]
            if args.quick:
                cmd.append("--quick")
            if name in ("federation", "federation30") and args.mnist_root:
                cmd += ["--mnist-root", args.mnist_root]
            if name == "bop" and args.mnist_root:
                cmd += ["--mnist", args.mnist_root]
            print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
            t0 = time.perf_counter()
            status = subprocess.run(cmd, cwd=REPO_ROOT, env=env).returncode
            seconds = time.perf_counter() - t0
            print(f"== {name}: exit {status} after {seconds:.0f} s", flush=True)
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
                "benchmarks": timings,
            },
        )
    path = write_report(args.out, args.report)
    print(f"wrote {path}" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
