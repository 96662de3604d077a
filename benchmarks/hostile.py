"""Hostile clients: global accuracy of mean, majority and float32 fedavg, clean vs 20 % attackers.

Each run drives the real server (:func:`server.server_app.run_server`, i.e. ``BitFedStrategy``,
checkpoints and held-out evaluation) over an in-process grid
(:class:`benchmarks.local_grid.LocalGrid`)
whose nodes run the real ClientApp (:data:`client.client_app.app`, mods included). A hostile node
trains honestly, then sends the *sign-flipped* update:

* sign rules (``mean``, ``majority``): every sign bit of the 1-bit update is inverted (padding
  bits stay zero) and the scales are kept, so the update is ``-scale * sign(u)``: a valid
  payload, indistinguishable by the codec from an honest one;
* ``fedavg``: the float32 weights sent are ``g - (w - g) = 2g - w`` (the local change negated),
  with ``g`` the global weights received.

Real-valued state (batch-norm) is sent honestly in both cases. The closing note's criterion is
that ``majority`` stays within 3 percentage points of its clean run (signSGD with majority vote
is Byzantine-tolerant for a minority of sign flippers: Bernstein et al., arXiv 1810.05291, §4).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    RESULTS_DIR,
    benchmark_parser,
    flower_env,
    mlp_federation,
    run_benchmark,
    save_figure,
)

__all__ = [
    "NAME",
    "VARIANTS",
    "flip_signs",
    "flip_float32",
    "hostile_handler",
    "honest_handler",
    "experiment",
    "run_one",
    "build_parser",
    "measure",
    "plot",
    "main",
]

NAME = "hostile"
#: The published figures were measured with a constant client learning rate (the default then).
LR_SCHEDULE = "constant"
#: label -> (recipe, strategy)
VARIANTS = {
    "lowcost + mean": ("lowcost", "mean"),
    "lowcost + majority": ("lowcost", "majority"),
    "float32 fedavg": ("standard", "fedavg"),
}
WORK_DIR = RESULTS_DIR / "tmp" / NAME  # git-ignored run folders
NODE_BASE = 1000  # node id of partition p is NODE_BASE + p


def flip_signs(arrays: dict[str, np.ndarray], spec) -> dict[str, np.ndarray]:
    """Invert every sign bit of a sign-update payload; padding bits stay zero, scales stay."""
    signs = np.bitwise_not(arrays["signs"])
    offset = 0
    for t in spec.sign:
        offset += t.packed_bytes
        pad = 8 * t.packed_bytes - t.numel
        if pad:
            signs[offset - 1] &= np.uint8((0xFF << pad) & 0xFF)
    return dict(arrays) | {"signs": signs}


def flip_float32(
    arrays: dict[str, np.ndarray], start: dict[str, np.ndarray], spec
) -> dict[str, np.ndarray]:
    """Negate the local change of every weight tensor: send ``2 g - w`` instead of ``w``."""
    out = dict(arrays)
    for t in spec.sign:
        out[t.name] = (2.0 * start[t.name] - arrays[t.name]).astype(np.float32)
    return out


def honest_handler(run_config: dict[str, Any], node: int, partition: int, num_partitions: int):
    """The real ClientApp handler of one node (its own partition, a persistent context)."""
    from flwr.app import Context, RecordDict

    from client.client_app import app

    node_config = {"partition-id": partition, "num-partitions": num_partitions}
    context = Context(1, node, node_config, RecordDict(), dict(run_config))
    return lambda msg: app(msg, context)


def hostile_handler(run_config: dict[str, Any], node: int, partition: int, num_partitions: int):
    """An honest handler whose update is sign-flipped before it is sent (see module docstring)."""
    from flwr.app import Message, RecordDict

    from core import codec, federated
    from core.config import from_run_config
    from glue.records import from_record, to_record

    cfg = from_run_config(run_config)
    spec = codec.model_spec(federated.new_model(cfg, federated.load_split(cfg, "test")))
    honest = honest_handler(run_config, node, partition, num_partitions)

    def handle(msg: Message) -> Message:
        reply = honest(msg)
        if codec.ARRAYS not in reply.content.array_records:  # need-full: nothing to flip
            return reply
        sent = from_record(reply.content[codec.ARRAYS], spec.float32_bytes)
        if cfg.strategy.name == "fedavg":
            start = codec.decode_float32(from_record(msg.content[codec.ARRAYS], 1 << 40), spec)
            record = to_record(flip_float32(sent, start, spec), raw=False)
        else:
            record = to_record(flip_signs(sent, spec))
        content = RecordDict({codec.ARRAYS: record, codec.METRICS: reply.content[codec.METRICS]})
        return Message(content, reply_to=msg)

    return handle


def experiment(args: argparse.Namespace, variant: str, run_dir: Path, seed: int):
    """The :class:`core.config.ExperimentConfig` of one run."""
    recipe, rule = VARIANTS[variant]
    return mlp_federation(
        run_dir,
        recipe=recipe,
        rule=rule,
        dataset=args.dataset,
        root=str(args.data_root or ""),
        seed=seed,
        batch_size=args.batch_size,
        max_batches=args.max_batches,
        clients=args.clients,
        rounds=args.rounds,
        min_clients=max(1, args.clients // 2),
        round_timeout=600.0,
        node_wait_timeout=5.0,
        lr_schedule=LR_SCHEDULE,
    )


def run_one(args: argparse.Namespace, variant: str, attackers: int, seed: int) -> dict[str, Any]:
    """One federation with ``attackers`` sign-flipping nodes (partitions ``0..attackers-1``)."""
    from benchmarks.local_grid import LocalGrid
    from core.config import to_run_config
    from server.server_app import run_server

    run_dir = WORK_DIR / f"{VARIANTS[variant][1]}-{attackers}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # our own scratch folder from a previous run
    cfg = experiment(args, variant, run_dir, seed)
    run_config = to_run_config(cfg)
    handlers = {}
    for p in range(args.clients):
        make = hostile_handler if p < attackers else honest_handler
        handlers[NODE_BASE + p] = make(run_config, NODE_BASE + p, p, args.clients)
    t0 = time.perf_counter()
    metrics = run_server(LocalGrid(handlers), cfg)
    shutil.rmtree(run_dir, ignore_errors=True)  # ~14 MB of checkpoints and client states a run
    rounds = [r for r in metrics["rounds"] if r["round"] > 0]
    acc = [r["accuracy"] for r in metrics["rounds"]]
    return {
        "variant": variant,
        "rule": VARIANTS[variant][1],
        "attackers": attackers,
        "seed": seed,
        "final_accuracy": acc[-1],
        "last3_accuracy": float(np.mean(acc[-3:])),
        "accuracy": acc,
        "valid_per_round": [int(r.get("valid", 0)) for r in rounds],
        "skipped_rounds": sum(1 for r in rounds if r.get("skipped")),
        "wall_seconds": time.perf_counter() - t0,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every variant, clean and attacked, on the same split and seed."""
    if args.quick:
        args.rounds, args.clients = args.rounds or 3, args.clients or 5
        args.seeds = args.seeds or 1
    else:
        args.rounds, args.clients = args.rounds or 30, args.clients or 10
        args.seeds = args.seeds or 5
    attackers = round(args.fraction * args.clients)
    seeds = list(range(args.seeds))
    runs = []
    for seed in seeds:
        for variant in VARIANTS:
            for n in (0, attackers):
                res = run_one(args, variant, n, seed)
                runs.append(res)
                print(
                    f"seed {seed} {variant:<20} attackers {n:>2}: final acc "
                    f"{res['final_accuracy']:.4f} (last 3 {res['last3_accuracy']:.4f}), "
                    f"{res['wall_seconds']:.0f} s",
                    flush=True,
                )
    drops = {}
    for variant in VARIANTS:
        row: dict[str, Any] = {}
        for label, n in (("clean", 0), ("attacked", attackers)):
            mine = [r for r in runs if r["variant"] == variant and r["attackers"] == n]
            final = [r["final_accuracy"] for r in mine]
            row |= {
                label: float(np.mean(final)),
                f"{label}_std": float(np.std(final)),
                f"{label}_last3": float(np.mean([r["last3_accuracy"] for r in mine])),
            }
        row["drop_pp"] = 100 * (row["clean"] - row["attacked"])
        row["drop_pp_last3"] = 100 * (row["clean_last3"] - row["attacked_last3"])
        drops[variant] = row
    majority = drops["lowcost + majority"]["drop_pp"]
    return {
        "config": {
            "dataset": args.dataset,
            "model": "mlp",
            "partition": "iid",
            "clients": args.clients,
            "attackers": attackers,
            "attack": "sign flip of the whole update (bits inverted / local change negated)",
            "rounds": args.rounds,
            "lr_schedule": LR_SCHEDULE,
            "batch_size": args.batch_size,
            "max_batches": args.max_batches,
            "seeds": seeds,
            "client_threads": 1,
        },
        "runs": runs,
        "summary": drops,
        "majority_within_3pp": bool(majority <= 3.0),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy vs round per rule, clean (solid) vs attacked (dashed)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, variant in enumerate(VARIANTS):
        for run in (r for r in result["runs"] if r["variant"] == variant and r["seed"] == 0):
            style = "-" if run["attackers"] == 0 else "--"
            label = f"{variant}, {run['attackers']} hostile"
            ax.plot(range(len(run["accuracy"])), run["accuracy"], style, color=f"C{i}", label=label)
    cfg = result["config"]
    ax.set(
        xlabel="round",
        ylabel="global test accuracy",
        title=f"{cfg['dataset']}: {cfg['attackers']} of {cfg['clients']} clients sign-flip",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_figure(fig, path, result["machine"])


def build_parser() -> argparse.ArgumentParser:
    """Arguments: the common ones plus dataset, rounds, clients, hostile fraction, batches."""
    parser = benchmark_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", help="digits (built in) or mnist")
    parser.add_argument("--data-root", default="", help="dataset root (mnist: the IDX folder)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 30; quick 3)")
    parser.add_argument("--clients", type=int, default=0, help="clients (default 10; quick 5)")
    parser.add_argument("--fraction", type=float, default=0.2, help="hostile share (0.2)")
    parser.add_argument("--batch-size", type=int, default=50, help="local batch size (50)")
    parser.add_argument("--max-batches", type=int, default=0, help="local batches (0 = all)")
    parser.add_argument("--seeds", type=int, default=0, help="seeds 0..N-1 (default 5; quick 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.hostile [--quick] [--dataset mnist --data-root DIR]``."""
    for key, value in flower_env(WORK_DIR / ".flwr").items():  # before Flower is imported
        os.environ.setdefault(key, value)
    return run_benchmark(NAME, measure, plot, build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
