"""Simulation at scale: seconds per round, peak memory and disk per client, 1k to 100k clients.

Runs ``bitfed-sim``'s :func:`launch.sim.run` (Flower's Ray engine, one CPU per virtual client)
on MNIST with the MLP, once per population, each in a fresh subprocess:

==========  ==================  ===========================================
population  sampled per round   what it shows
==========  ==================  ===========================================
1,000       20                  every client holds 60 examples
10,000      100                 6 examples each
100,000     100                 60,000 examples: 40 % of the clients hold
                                none and answer ``empty`` when sampled
==========  ==================  ===========================================

with ``federation.compact_state=true`` (each client keeps its version and a float16 residual;
replicas are rebuilt from the server's published deltas, :mod:`core.replica_store`). Measured:

* **seconds per round**: from the per-round ``elapsed`` of ``metrics.json`` (the server's
  clock: sampling, the clients' work on the Ray actors, aggregation, evaluation of the global
  and broadcast models on the 10,000 test images, checkpoint), and the start-up (registering
  the virtual nodes, starting Ray) as the rest of the wall time;
* **peak RSS**: the whole process tree of the run (the simulation, Ray's raylet, GCS and
  workers), polled from ``/proc`` every 0.5 s: the largest sum of ``VmRSS`` seen, and the sum
  of every process's ``VmHWM`` (an upper bound: the peaks need not coincide);
* **disk per client that has taken part**: the size of the ``client-*.npz`` files divided by
  their number (clients that trained at least once), and apart from it what the server
  published for the rebuild (``replicas/``: grows with the rounds, not with the population).

Local training is capped at ``--max-batches`` batches of 100 (default 2): the point is the
machinery, not accuracy. ``--no-compact`` measures the float32 replica + residual instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    MIB,
    REPO_ROOT,
    RESULTS_DIR,
    SkipBenchmark,
    benchmark_parser,
    flower_env,
    mlp_federation,
    run_benchmark,
    save_figure,
    write_json,
)

__all__ = ["NAME", "POPULATIONS", "build_parser", "measure", "plot", "main", "tree_memory"]

NAME = "scale"
#: population -> (clients sampled per round, rounds)
POPULATIONS = {1_000: (20, 5), 10_000: (100, 3), 100_000: (100, 10)}
QUICK = {1_000: (20, 2)}
DEFAULT_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"
WORK_DIR = RESULTS_DIR / "tmp" / "scale"  # git-ignored run folders


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _status_bytes(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_memory(root: int) -> tuple[int, dict[int, int]]:
    """Return the summed ``VmRSS`` of ``root`` and its descendants, and each one's ``VmHWM``."""
    kids, pids, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += kids.get(pid, [])
    return sum(_status_bytes(p, "VmRSS:") for p in pids), {
        p: _status_bytes(p, "VmHWM:") for p in pids
    }


class TreePoller:
    """Poll a process tree's memory every ``period`` seconds in a thread until stopped."""

    def __init__(self, pid: int, period: float = 0.5) -> None:
        self.pid, self.period = pid, period
        self.peak_rss, self.hwm, self.processes = 0, {}, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, hwm = tree_memory(self.pid)
            self.peak_rss = max(self.peak_rss, rss)
            for pid, peak in hwm.items():
                self.hwm[pid] = max(self.hwm.get(pid, 0), peak)
            self._stop.wait(self.period)

    def stop(self) -> dict[str, float]:
        """Stop polling; return the peak summed RSS and the sum of the peaks, in MiB."""
        self._stop.set()
        self._thread.join()
        return {
            "peak_tree_rss_mib": self.peak_rss / MIB,
            "sum_of_process_peaks_mib": sum(self.hwm.values()) / MIB,
            "processes": len(self.hwm),
        }


def experiment(args: argparse.Namespace, population: int, per_round: int, rounds: int, run_dir):
    """The :class:`core.config.ExperimentConfig` of one population."""
    return mlp_federation(
        run_dir,
        recipe="lowcost",
        rule="mean",
        dataset="mnist",
        root=str(args.mnist_root),
        max_batches=args.max_batches,
        clients=population,
        clients_per_round=per_round,
        rounds=rounds,
        min_clients=1,
        compact_state=not args.no_compact,
    )


def _disk(state_dir: Path) -> dict[str, Any]:
    files = list(state_dir.glob("client-*.npz"))
    total = sum(f.stat().st_size for f in files)
    published = sum(f.stat().st_size for f in (state_dir / "replicas").rglob("*") if f.is_file())
    return {
        "clients_with_state": len(files),
        "client_state_bytes": total,
        "bytes_per_client": total / len(files) if files else None,
        "largest_client_file_bytes": max((f.stat().st_size for f in files), default=None),
        "server_published_bytes": published,
    }


def run_one(args: argparse.Namespace, population: int, per_round: int, rounds: int):
    """Run one population in a fresh process; return its timings, memory and disk."""
    from core.config import to_run_config

    run_dir = WORK_DIR / f"{population}"
    shutil.rmtree(run_dir, ignore_errors=True)  # our own scratch folder
    run_dir.mkdir(parents=True)
    cfg = experiment(args, population, per_round, rounds, run_dir)
    cfg_path = run_dir / "run_config.json"
    write_json(cfg_path, to_run_config(cfg))
    env = {**os.environ, **flower_env(run_dir / ".flwr"), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    started = time.perf_counter()
    with open(run_dir / "sim.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.scale", "--worker", str(cfg_path)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        poller = TreePoller(proc.pid)
        try:
            code = proc.wait(args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            raise RuntimeError(f"{population} clients took over {args.timeout:.0f} s") from None
        finally:
            memory = poller.stop()
    wall = time.perf_counter() - started
    metrics_path = run_dir / "metrics.json"
    if code != 0 or not metrics_path.exists():
        tail = (run_dir / "sim.log").read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"{population} clients failed ({code}): {' | '.join(tail)}")
    metrics = json.loads(metrics_path.read_text())
    return summarize(metrics, population, per_round, wall, memory, _disk(run_dir / "client-state"))


def summarize(metrics, population, per_round, wall, memory, disk) -> dict[str, Any]:
    """Seconds per round (from the server's per-round clock), replies, memory and disk."""
    rows = metrics["rounds"]
    times = [r["elapsed"] for r in rows]
    per = [b - a for a, b in zip(times, times[1:])]
    done = rows[1:]
    return {
        "population": population,
        "per_round": per_round,
        "rounds": len(done),
        "seconds_per_round": sum(per) / len(per) if per else None,
        "seconds_each_round": per,
        "startup_seconds": wall - metrics["seconds"],
        "wall_seconds": wall,
        "valid": [r.get("valid") for r in done],
        "empty": [r.get("empty") for r in done],
        "skipped": sum(int(r.get("skipped", 0)) for r in done),
        "client_handler_seconds": [r.get("train_time") for r in done],
        "client_peak_rss_mib": max((r.get("peak_memory") or 0) for r in done) / MIB,
        "final_accuracy": rows[-1]["accuracy"],
        "downlink_bytes": [r.get("downlink_bytes") for r in done],
        **memory,
        **disk,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Each population in turn (each run uses every CPU)."""
    args.mnist_root = Path(args.mnist_root).resolve()
    if (
        not (args.mnist_root / "train-labels-idx1-ubyte.gz").exists()
        and not (args.mnist_root / "train-labels-idx1-ubyte").exists()
    ):
        raise SkipBenchmark(f"MNIST not found at {args.mnist_root}; pass --mnist-root DIR")
    plan = QUICK if args.quick else POPULATIONS
    if args.populations:
        plan = {n: POPULATIONS.get(n, (min(100, n), 3)) for n in args.populations}
    if args.rounds:
        plan = {n: (k, args.rounds) for n, (k, _) in plan.items()}
    runs = []
    for population, (per_round, rounds) in plan.items():
        res = run_one(args, population, per_round, rounds)
        runs.append(res)
        print(
            f"{population:>7} clients, {per_round} per round: {res['seconds_per_round']:.1f} "
            f"s/round, start-up {res['startup_seconds']:.0f} s, peak RSS "
            f"{res['peak_tree_rss_mib']:.0f} MiB, {res['bytes_per_client'] or 0:,.0f} B/client "
            f"({res['clients_with_state']} clients)",
            flush=True,
        )
    return {
        "config": {
            "dataset": "mnist",
            "model": "mlp",
            "recipe": "lowcost",
            "strategy": "mean",
            "compact_state": not args.no_compact,
            "max_batches": args.max_batches,
            "batch_size": 100,
            "client_threads": 1,
            "plan": {str(n): {"per_round": k, "rounds": r} for n, (k, r) in plan.items()},
        },
        "runs": runs,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Seconds per round, peak RSS and disk per client against the population."""
    import matplotlib.pyplot as plt

    runs = result["runs"]
    x = [r["population"] for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = [
        ("seconds_per_round", "seconds per round", 1.0),
        ("peak_tree_rss_mib", "peak RSS of the process tree (MiB)", 1.0),
        ("bytes_per_client", "disk per client that took part (MiB)", 1 / MIB),
    ]
    for ax, (key, label, factor) in zip(axes, panels):
        ax.plot(x, [(r[key] or 0) * factor for r in runs], marker="o")
        ax.set(xscale="log", xlabel="clients", ylabel=label)
        ax.grid(alpha=0.3, which="both")
    axes[2].axhline(1e6 / MIB, color="C3", ls="--", lw=1, label="1 MB")
    axes[2].legend(fontsize=8)
    compact = "compact state" if result["config"]["compact_state"] else "float32 replica"
    fig.suptitle(f"bitfed-sim, MNIST MLP, {compact}", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    save_figure(fig, path, result["machine"])


def build_parser() -> argparse.ArgumentParser:
    """Arguments: the common ones plus dataset root, populations, rounds and local batches."""
    parser = benchmark_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--mnist-root", default=str(DEFAULT_MNIST), help="MNIST IDX folder")
    parser.add_argument(
        "--populations",
        type=lambda t: [int(n) for n in t.split(",")],
        default=None,
        help="comma-separated client counts (default 1000,10000,100000; quick 1000)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds for every population")
    parser.add_argument("--max-batches", type=int, default=2, help="local batches per round (2)")
    parser.add_argument("--no-compact", action="store_true", help="float32 replica + residual")
    parser.add_argument("--timeout", type=float, default=2400.0, help="seconds per run")
    parser.add_argument("--name", default=NAME, help=f"result name (default {NAME})")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def _worker(cfg_path: str) -> int:
    """Child process: rebuild the config and call bitfed-sim's run."""
    from core.config import from_run_config
    from launch.sim import run

    run(from_run_config(json.loads(Path(cfg_path).read_text())))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.scale [--quick] [--populations 1000,10000,100000]``."""
    args = build_parser().parse_args(argv)
    if args.worker:
        return _worker(args.worker)
    return run_benchmark(args.name, measure, plot, args, module=NAME)


if __name__ == "__main__":
    sys.exit(main())
