"""Federation on MNIST: accuracy vs round and vs bytes, 1-bit rules vs float32 FedAvg.

Runs ``bitfed-sim``'s :func:`launch.sim.run` (Flower's simulation engine, one CPU per virtual
client) once per variant and partition, each in a fresh subprocess:

* ``lowcost + aligned`` (the default rule): low-memory training, 1-bit updates both ways, the
  mean of scale·sign weighted by each reply's agreement with the majority vote;
* ``lowcost + mean``: the same with the example-weighted mean of scale·sign (EF-signSGD);
* ``lowcost + majority``: the same with the signSGD majority vote;
* ``float32 fedavg``: stock float32 BNN training (recipe ``standard``) and Flower's float32
  FedAvg (the baseline a user would otherwise deploy);
* ``lowcost-bop + mean`` (on request, ``--variants bop``): the latent-free recipe, whose
  replies carry its binary weights' bits (docs/method.md §2h), with the rule ``mean``;

on an IID split and on a Dirichlet(0.5) label-skewed split of the real MNIST training set,
evaluating the global model on the MNIST test set after every round. Bytes are what bitfed's
strategy measured on the wire (Flower's serialized ``ArrayRecord`` s): uplink per reply plus
downlink per sampled client, summed over rounds. The dataset comes from ``--mnist-root``
(default ``../shared/data/mnist`` beside the repository); without it the benchmark is skipped.
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

__all__ = [
    "NAME",
    "VARIANTS",
    "VARIANT_KEYS",
    "DEFAULT_VARIANTS",
    "PARTITIONS",
    "build_parser",
    "measure",
    "plot",
    "main",
]

NAME = "federation"
#: label -> (recipe, strategy)
VARIANTS = {
    "lowcost + aligned": ("lowcost", "aligned"),
    "lowcost + mean": ("lowcost", "mean"),
    "lowcost + majority": ("lowcost", "majority"),
    "float32 fedavg": ("standard", "fedavg"),
    "lowcost-bop + mean": ("lowcost-bop", "mean"),
}
#: --variants keys -> labels (a key also names the variant's run folder)
VARIANT_KEYS = {
    "aligned": "lowcost + aligned",
    "mean": "lowcost + mean",
    "majority": "lowcost + majority",
    "fedavg": "float32 fedavg",
    "bop": "lowcost-bop + mean",
}
#: what runs without --variants
DEFAULT_VARIANTS = ["aligned", "mean", "majority", "fedavg"]
#: label -> (partition kind, Dirichlet alpha)
PARTITIONS = {"IID": ("iid", 0.5), "Dirichlet(0.5)": ("dirichlet", 0.5)}
DEFAULT_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"
WORK_DIR = RESULTS_DIR / "tmp" / "federation"  # git-ignored run folders


def _check_mnist(root: Path) -> None:
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte")
    missing = [n for n in names if not any(root.glob(f"{n}*"))]
    if not root.is_dir() or missing:
        raise SkipBenchmark(
            f"MNIST not found at {root} (missing {', '.join(missing) or 'the folder'}); "
            "pass --mnist-root DIR holding the IDX files (bitfed-data can download them)"
        )


def experiment(args: argparse.Namespace, variant: str, partition: str, run_dir: Path):
    """The :class:`core.config.ExperimentConfig` of one run (the paper's MNIST model)."""
    from core.config import from_run_config, to_run_config

    recipe, rule = VARIANTS[variant]
    kind, alpha = PARTITIONS[partition]
    per_round = args.per_round or args.clients
    cfg = mlp_federation(
        run_dir,
        recipe=recipe,
        rule=rule,
        dataset="mnist",
        root=str(args.mnist_root),
        partition=kind,
        alpha=alpha,
        max_batches=args.max_batches,
        clients=args.clients,
        clients_per_round=per_round,
        rounds=args.rounds,
        min_clients=min(2, per_round),
    )
    if rule == "fedavg" or not args.set:
        return cfg
    return from_run_config(to_run_config(cfg) | dict(args.set))  # the 1-bit variants' options


def run_one(args: argparse.Namespace, variant: str, partition: str) -> dict[str, Any]:
    """Run one federation in a fresh process; return its per-round table and totals."""
    from core.config import to_run_config

    key = next(k for k, label in VARIANT_KEYS.items() if label == variant)
    slug = f"{PARTITIONS[partition][0]}-{key}"
    run_dir = WORK_DIR / args.name / slug
    shutil.rmtree(run_dir, ignore_errors=True)  # our own scratch folder, from a previous run
    run_dir.mkdir(parents=True)
    cfg = experiment(args, variant, partition, run_dir)
    cfg_path = run_dir / "run_config.json"
    write_json(cfg_path, to_run_config(cfg))
    env = {**os.environ, **flower_env(run_dir / ".flwr")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    with open(run_dir / "sim.log", "w") as log:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.federation", "--worker", str(cfg_path)],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=args.timeout,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{variant} / {partition} took over {args.timeout:.0f} s") from None
    wall = time.perf_counter() - t0
    metrics_path = run_dir / "metrics.json"
    if done.returncode != 0 or not metrics_path.exists():
        tail = (run_dir / "sim.log").read_text().strip().splitlines()[-3:]
        raise RuntimeError(
            f"{variant} / {partition} failed ({done.returncode}): {' | '.join(tail)}"
        )
    metrics = json.loads(metrics_path.read_text())
    return summarize(metrics, variant, partition, wall)


def summarize(metrics: dict[str, Any], variant: str, partition: str, wall: float) -> dict[str, Any]:
    """Per round: accuracy, loss, bytes (cumulative over all clients, both directions)."""
    rounds, total_up, total_down, messages = [], 0.0, 0.0, 0
    for r in metrics["rounds"]:
        total_up += r.get("uplink_bytes", 0.0) * r.get("valid", 0)
        total_down += r.get("downlink_bytes", 0.0) * r.get("sampled", 0)
        messages += r.get("sampled", 0)
        rounds.append(
            {
                "round": r["round"],
                "accuracy": r["accuracy"],
                # the 1-bit rules' broadcast model (what clients hold); fedavg has only one
                "broadcast_accuracy": r.get("replica_accuracy", r["accuracy"]),
                "loss": r["loss"],
                "uplink_bytes": r.get("uplink_bytes"),
                "downlink_bytes": r.get("downlink_bytes"),
                "clients": r.get("valid"),
                "client_peak_memory": r.get("peak_memory"),
                "client_train_seconds": r.get("train_time"),
                "cumulative_bytes": total_up + total_down,
            }
        )
    done = [r for r in rounds if r["round"] > 0]
    return {
        "variant": variant,
        "partition": partition,
        "recipe": metrics["config"]["recipe.name"],
        "strategy": metrics["config"]["strategy.name"],
        "float32_bytes": metrics["float32_bytes"],
        "num_weights": metrics["num_weights"],
        "final_accuracy": rounds[-1]["accuracy"],
        "final_broadcast_accuracy": rounds[-1]["broadcast_accuracy"],
        "last3_accuracy": sum(r["accuracy"] for r in rounds[-3:]) / len(rounds[-3:]),
        "best_accuracy": max(r["accuracy"] for r in rounds),
        "lr_schedule": metrics["config"].get("federation.lr_schedule", "constant"),
        "total_bytes": total_up + total_down,
        "uplink_bytes_per_client_round": _mean(r["uplink_bytes"] for r in done),
        "downlink_bytes_per_client_round_after_first": _mean(r["downlink_bytes"] for r in done[1:]),
        # every message of the run, round 1 included (what a device pays on average)
        "downlink_bytes_per_message": total_down / messages if messages else None,
        "first_round_at_95": next((r["round"] for r in done if r["accuracy"] >= 0.95), None),
        "options": {k: v for k, v in metrics["config"].items() if k.startswith("strategy.")},
        "client_peak_memory": max((r["client_peak_memory"] or 0) for r in done) if done else None,
        "server_seconds": metrics.get("seconds"),
        "wall_seconds": wall,
        "rounds": rounds,
    }


def _mean(values: Any) -> float | None:
    vals = [v for v in values if v]
    return sum(vals) / len(vals) if vals else None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every variant x partition; runs sequentially (each one uses every CPU)."""
    args.mnist_root = Path(args.mnist_root).resolve()
    _check_mnist(args.mnist_root)
    if args.quick:
        args.rounds, args.clients = args.rounds or 2, args.clients or 4
        args.max_batches = args.max_batches if args.max_batches is not None else 3
        partitions = ["IID"]
    else:
        args.rounds, args.clients = args.rounds or 10, args.clients or 10
        args.max_batches = args.max_batches if args.max_batches is not None else 20
        partitions = list(PARTITIONS)
    if args.partitions:
        partitions = args.partitions
    variants = [VARIANT_KEYS[k] for k in args.variants]
    runs = []
    for partition in partitions:
        for variant in variants:
            res = run_one(args, variant, partition)
            runs.append(res)
            print(
                f"{partition:>15} {variant:<20} final acc {res['final_accuracy']:.4f}, "
                f"{res['total_bytes'] / MIB:.1f} MiB in total, {res['wall_seconds']:.0f} s",
                flush=True,
            )
    return {
        "config": {
            "dataset": "mnist",
            "model": "mlp",
            "clients": args.clients,
            "clients_per_round": args.per_round or args.clients,
            "options": dict(args.set),
            "rounds": args.rounds,
            "local_epochs": 1,
            "batch_size": 100,
            "max_batches": args.max_batches,
            "partitions": partitions,
            "variants": {k: list(VARIANTS[k]) for k in variants},
            "lr_schedule": runs[0]["lr_schedule"] if runs else None,
            "client_threads": 1,
        },
        "runs": runs,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy vs round and vs cumulative MiB, one row per partition."""
    import matplotlib.pyplot as plt

    partitions = list(dict.fromkeys(r["partition"] for r in result["runs"]))
    fig, axes = plt.subplots(len(partitions), 2, figsize=(11, 4 * len(partitions)), squeeze=False)
    for row, partition in zip(axes, partitions):
        for i, run in enumerate(r for r in result["runs"] if r["partition"] == partition):
            rounds = run["rounds"]
            acc = [r["accuracy"] for r in rounds]
            kw = dict(marker="o", ms=3, color=f"C{i}", label=run["variant"])
            row[0].plot([r["round"] for r in rounds], acc, **kw)
            mib = [max(r["cumulative_bytes"], 1.0) / MIB for r in rounds]
            row[1].plot(mib[1:], acc[1:], **kw)
        row[0].set(xlabel="round", ylabel="global test accuracy", title=f"{partition}: vs round")
        row[1].set(
            xscale="log",
            xlabel="cumulative MiB sent, all clients, up + down",
            ylabel="global test accuracy",
            title=f"{partition}: vs bytes",
        )
        for ax in row:
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
    cfg = result["config"]
    fig.suptitle(
        f"MNIST MLP, {cfg['clients']} clients, {cfg['rounds']} rounds, "
        f"{cfg['max_batches'] or 'all'} local batches of 100 per round",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    save_figure(fig, path, result["machine"])


def build_parser() -> argparse.ArgumentParser:
    """Arguments: the common ones plus dataset root, rounds, clients and local batches."""
    parser = benchmark_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument(
        "--mnist-root",
        default=str(DEFAULT_MNIST),
        help=f"folder with the MNIST IDX files (default {DEFAULT_MNIST})",
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds (10; quick 2)")
    parser.add_argument(
        "--clients", type=int, default=None, help="clients, all sampled (10; quick 4)"
    )
    parser.add_argument(
        "--max-batches",
        type=int,
        default=None,
        help="local batches per round, 0 = one epoch (20; quick 3)",
    )
    parser.add_argument(
        "--variants",
        type=_variant_keys,
        default=list(DEFAULT_VARIANTS),
        help=f"comma-separated, of {', '.join(VARIANT_KEYS)} (default "
        f"{','.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--per-round", type=int, default=None, help="clients sampled per round (default all)"
    )
    parser.add_argument(
        "--partitions",
        type=lambda t: [p for p in PARTITIONS if PARTITIONS[p][0] in t.split(",")],
        default=None,
        help="comma-separated subset of iid,dirichlet (default both)",
    )
    parser.add_argument(
        "--set",
        type=_option,
        action="append",
        default=[],
        help="run-config override for the 1-bit variants, e.g. strategy.server_momentum=0.9",
    )
    parser.add_argument(
        "--name", default=NAME, help=f"result name: <out>/<name>.json and .png (default {NAME})"
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per run")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set wants key=value, got {text!r}")
    return key.strip(), value.strip()


def _variant_keys(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in keys if k not in VARIANT_KEYS]
    if bad or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown variant(s) {bad or text!r}; choose from {', '.join(VARIANT_KEYS)}"
        )
    return keys


def _worker(cfg_path: str) -> int:
    """Child process: rebuild the config from its flat run config and call bitfed-sim's run."""
    from core.config import from_run_config
    from launch.sim import run

    run(from_run_config(json.loads(Path(cfg_path).read_text())))
    return 0


def main(argv: list[str] | None = None, module: str = NAME) -> int:
    """``python -m benchmarks.federation [--quick] [--mnist-root DIR]``.

    ``module``: the benchmark module the user ran (``federation30`` passes its own), for the
    command line recorded in the result whatever ``--name`` says.
    """
    args = build_parser().parse_args(argv)
    if args.worker:
        return _worker(args.worker)
    for name in ("rounds", "clients"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            build_parser().error(f"--{name} must be >= 1")
    return run_benchmark(args.name, measure, plot, args, module=module)


if __name__ == "__main__":
    raise SystemExit(main())
