"""Hostile clients: final accuracy of each rule under each attack of client/hostile.py, on MNIST.

Each run is ``bitfed-sim federation.attack=<attack> federation.attackers=<f>`` without Ray: the
real server (:func:`server.server_app.run_server`: strategy, bounds, checkpoints, held-out
evaluation) over an in-process grid (:class:`benchmarks.local_grid.LocalGrid`) whose nodes run
the real ClientApp (:data:`client.client_app.app`, mods included), so the devices with
``partition-id < f`` turn their honest reply into the attack through the ClientApp's own
:func:`client.hostile.hostile_reply` mod. Setting: MLP, ``--clients`` clients all sampled, one
local epoch of batch 100 per round, ``--rounds`` rounds, the default cosine client learning
rate, IID and Dirichlet(0.5) splits.

Runs are slow (minutes each on a shared 2-core machine), so every finished run is appended to
``results/tmp/hostile-runs.jsonl`` and reused by later invocations with the same settings
(``--fresh`` reruns): the full grid can be filled in over several invocations, e.g.
``--partitions iid --seeds 0`` first. ``--no-run`` only assembles ``hostile.json`` from what
is there. The summary gives, per partition x rule x attack x hostile count, the mean and worst
final accuracy over the seeds and the drop from the same rule's clean run of the same seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    REPO_ROOT,
    RESULTS_DIR,
    SkipBenchmark,
    benchmark_parser,
    flower_env,
    git_commit,
    mlp_federation,
    run_benchmark,
    save_figure,
)
from core.config import StrategyConfig

__all__ = [
    "NAME",
    "RULES",
    "ATTACKS",
    "PARTITIONS",
    "DEFINITIONS",
    "honest_handler",
    "experiment",
    "run_one",
    "plan",
    "summarize",
    "verdicts",
    "build_parser",
    "measure",
    "plot",
    "main",
]

NAME = "hostile"
#: rule -> recipe it is measured with
RULES = {"mean": "lowcost", "aligned": "lowcost", "majority": "lowcost", "fedavg": "standard"}
ATTACKS = ("flip", "scale", "real", "examples", "random", "alie")
#: Not an attack: the hostile devices send no update (``--attacks absent``), the accuracy a rule
#: that ignored exactly them would reach; left out of the verdicts.
REFERENCE = "absent"
#: label -> (partition kind, Dirichlet alpha)
PARTITIONS = {"iid": ("iid", 0.5), "dirichlet": ("dirichlet", 0.5)}
#: What each attack does (client/hostile.py); ``g`` global model, ``w`` honest local model.
DEFINITIONS = {
    "flip": "every sign inverted, scales kept (fedavg: the change negated, 2g - w)",
    "scale": "honest signs, every scale x 1000 (fedavg: g + 1000 (w - g))",
    "real": "honest update, every batch-norm value (statistics and shifts) set to 6e4",
    "examples": "the flip update, claiming 10^5 examples",
    "random": "uniformly random signs seeded by round and device, honest scales "
    "(fedavg: g + mean|w - g| x random signs)",
    "alie": "colluding 'a little is enough' (Baruch et al., arXiv 1902.06156): all attackers "
    "invert their own sign on the same half of each tensor's coordinates, drawn from the round "
    "number, and send 0.95 x strategy.scale_clip x their honest scale (fedavg: the change, so "
    "inverted, times 0.95 x scale_clip)",
    REFERENCE: "a reference, not an attack: the hostile devices answer without an update (their "
    "data is lost with them): what a rule that ignored exactly those devices would reach",
}
DEFAULT_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"
WORK_DIR = RESULTS_DIR / "tmp" / NAME  # git-ignored run folders
#: The revision of the code this process loaded (read once at start: a run that finishes after
#: a later commit still ran this code).
CODE_REVISION = git_commit()
RUNS_FILE = RESULTS_DIR / "tmp" / "hostile-runs.jsonl"  # every finished run, appended
NODE_BASE = 1000  # node id of partition p is NODE_BASE + p
DEFAULT_RULE = StrategyConfig().name


def honest_handler(run_config: dict[str, Any], node: int, partition: int, num_partitions: int):
    """The real ClientApp handler of one node (its own partition, a persistent context).

    Hostile when ``run_config`` sets ``federation.attack`` and ``partition`` is below
    ``federation.attackers``: the ClientApp's :func:`client.hostile.hostile_reply` mod decides.
    """
    from flwr.app import Context, RecordDict

    from client.client_app import app

    node_config = {"partition-id": partition, "num-partitions": num_partitions}
    context = Context(1, node, node_config, RecordDict(), dict(run_config))
    return lambda msg: app(msg, context)


def experiment(args: argparse.Namespace, key: dict[str, Any], run_dir: Path):
    """The :class:`core.config.ExperimentConfig` of one run (``key``: partition, rule, ...)."""
    from core.config import from_run_config, to_run_config

    kind, alpha = PARTITIONS[key["partition"]]
    cfg = mlp_federation(
        run_dir,
        recipe=RULES[key["rule"]],
        rule=key["rule"],
        dataset=args.dataset,
        root=str(args.data_root or ""),
        partition=kind,
        alpha=alpha,
        seed=key["seed"],
        batch_size=args.batch_size,
        max_batches=args.max_batches,
        clients=args.clients,
        rounds=args.rounds,
        min_clients=max(1, args.clients // 2),
        round_timeout=3600.0,
        node_wait_timeout=5.0,
        attack=key["attack"],
        attackers=key["attackers"],
    )
    if key["set"]:
        cfg = from_run_config(to_run_config(cfg) | dict(kv.split("=", 1) for kv in key["set"]))
    return cfg


def _key(args: argparse.Namespace, partition, rule, attack, attackers, seed) -> dict[str, Any]:
    """Everything that identifies one run (what a reused run must match)."""
    return {
        "partition": partition,
        "rule": rule,
        "attack": attack,
        "attackers": attackers,
        "seed": seed,
        "set": sorted(args.set),
        "dataset": args.dataset,
        "clients": args.clients,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "max_batches": args.max_batches,
    }


def run_one(args: argparse.Namespace, key: dict[str, Any]) -> dict[str, Any]:
    """One federation of ``key``; returns its accuracy curve and per-round bound counts."""
    from benchmarks.local_grid import LocalGrid
    from core.config import to_run_config
    from server.server_app import run_server

    slug = f"{key['partition']}-{key['rule']}-{key['attack']}{key['attackers']}-s{key['seed']}"
    if key["set"]:  # runs that differ only in overrides must not share a folder (client state)
        slug += "-" + hashlib.sha256(json.dumps(key["set"]).encode()).hexdigest()[:8]
    run_dir = WORK_DIR / slug
    shutil.rmtree(run_dir, ignore_errors=True)  # our own scratch folder from a previous run
    cfg = experiment(args, key, run_dir)
    run_config = to_run_config(cfg)
    handlers = {
        NODE_BASE + p: honest_handler(run_config, NODE_BASE + p, p, args.clients)
        for p in range(args.clients)
    }
    t0 = time.perf_counter()
    metrics = run_server(LocalGrid(handlers, concurrency=1), cfg)  # one node at a time
    shutil.rmtree(run_dir, ignore_errors=True)  # ~14 MB of checkpoints and client states a run
    rounds = [r for r in metrics["rounds"] if r["round"] > 0]
    acc = [r["accuracy"] for r in metrics["rounds"]]
    return {
        "key": key,
        "final_accuracy": acc[-1],
        "last3_accuracy": float(np.mean(acc[-3:])),
        "accuracy": acc,
        "clipped_per_round": [int(r.get("clipped", 0)) for r in rounds],
        "rejected_per_round": [int(r.get("rejected", 0)) for r in rounds],
        "valid_per_round": [int(r.get("valid", 0)) for r in rounds],
        "skipped_rounds": sum(1 for r in rounds if r.get("skipped")),
        "uplink_ratio": float(np.mean([r["uplink_ratio"] for r in rounds if "uplink_ratio" in r])),
        "wall_seconds": time.perf_counter() - t0,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "git": CODE_REVISION,  # the code that ran (an assembled result mixes revisions)
        "load_avg_1min": os.getloadavg()[0],
    }


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Keys of every run asked for: clean runs of ``--clean-rules`` and ``--rules``, attacks of
    ``--rules`` with each of ``--attackers``, for each partition and seed."""
    keys = []
    for partition in args.partitions:
        for seed in args.seeds:
            for rule in dict.fromkeys([*args.rules, *args.clean_rules]):
                keys.append(_key(args, partition, rule, "none", 0, seed))
                if rule in args.rules:
                    for attack in args.attacks:
                        for f in args.attackers:
                            keys.append(_key(args, partition, rule, attack, f, seed))
    return keys


def _load_runs() -> list[dict[str, Any]]:
    if not RUNS_FILE.exists():
        return []
    return [json.loads(line) for line in RUNS_FILE.read_text().splitlines() if line.strip()]


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per partition x rule x attack x hostile count, over the seeds run.

    ``drop_pp``: mean over seeds of (clean - attacked) final accuracy of the same seed, in
    percentage points; ``worst_drop_pp``: its largest seed.
    """
    clean = {
        (r["key"]["partition"], r["key"]["rule"], r["key"]["seed"]): r["final_accuracy"]
        for r in runs
        if r["key"]["attack"] == "none"
    }
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        k = r["key"]
        groups.setdefault((k["partition"], k["rule"], k["attack"], k["attackers"]), []).append(r)
    rows = []
    order = {name: i for i, name in enumerate([*PARTITIONS, *RULES, "none", *ATTACKS, REFERENCE])}

    def rank(item: tuple) -> tuple:
        (partition, rule, attack, f), _ = item
        return order.get(partition, 99), order.get(rule, 99), order.get(attack, 99), f

    for (partition, rule, attack, f), mine in sorted(groups.items(), key=rank):
        final = [r["final_accuracy"] for r in mine]
        drops = [
            100 * (clean[(partition, rule, r["key"]["seed"])] - r["final_accuracy"])
            for r in mine
            if (partition, rule, r["key"]["seed"]) in clean
        ]
        rows.append(
            {
                "partition": partition,
                "rule": rule,
                "attack": attack,
                "attackers": f,
                "seeds": sorted(r["key"]["seed"] for r in mine),
                "accuracy": float(np.mean(final)),
                "worst_accuracy": float(min(final)),
                "drop_pp": float(np.mean(drops)) if drops and attack != "none" else None,
                "worst_drop_pp": float(max(drops)) if drops and attack != "none" else None,
                "clipped_per_round": float(np.mean([r["clipped_per_round"] for r in mine])),
                "uplink_ratio": float(np.mean([r["uplink_ratio"] for r in mine])),
                "minutes": float(np.mean([r["wall_seconds"] for r in mine]) / 60),
            }
        )
    return rows


def verdicts(rows: list[dict[str, Any]], default: str) -> dict[str, Any]:
    """The issue's targets, from the rows that exist (``None`` where a figure is missing)."""
    by = {(r["partition"], r["rule"], r["attack"], r["attackers"]): r for r in rows}
    out: dict[str, Any] = {"default_rule": default}
    attacked = [r for r in rows if r["rule"] == default and r["attack"] not in ("none", REFERENCE)]
    worst = [r["worst_drop_pp"] for r in attacked if r["worst_drop_pp"] is not None]
    out["default_worst_drop_pp"] = max(worst) if worst else None
    out["default_within_2pp_of_clean"] = bool(worst) and max(worst) <= 2.0
    for partition in PARTITIONS:
        mine = by.get((partition, default, "none", 0))
        f32 = by.get((partition, "fedavg", "none", 0))
        mean = by.get((partition, "mean", "none", 0))
        majority = by.get((partition, "majority", "none", 0))
        if mine and f32:
            out[f"{partition}_default_minus_fedavg_pp"] = 100 * (mine["accuracy"] - f32["accuracy"])
        if mine:
            out[f"{partition}_default_uplink_ratio"] = mine["uplink_ratio"]
        if mean and majority:
            out[f"{partition}_majority_minus_mean_pp"] = 100 * (
                majority["accuracy"] - mean["accuracy"]
            )
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or reuse) every planned federation; summarize what exists for the plan."""
    if args.quick:
        args.dataset, args.data_root, args.rounds, args.clients = "digits", "", 3, 5
        args.partitions, args.seeds, args.attackers = ["iid"], [0], [1]
        args.max_batches, args.batch_size = 2, 50
    elif args.dataset == "mnist":
        root = Path(args.data_root or DEFAULT_MNIST).resolve()
        if not any(root.glob("train-images-idx3-ubyte*")):
            raise SkipBenchmark(f"MNIST not found at {root}; pass --data-root DIR (IDX files)")
        args.data_root = str(root)
    keys = plan(args)
    done = [] if args.fresh else _load_runs()
    runs = []
    for i, key in enumerate(keys):
        cached = next((r for r in reversed(done) if r["key"] == key), None)
        if cached is None and not args.no_run:
            cached = run_one(args, key)
            RUNS_FILE.parent.mkdir(parents=True, exist_ok=True)
            with open(RUNS_FILE, "a") as fh:
                fh.write(json.dumps(cached) + "\n")
            done.append(cached)
            print(
                f"[{i + 1}/{len(keys)}] {key['partition']} {key['rule']} {key['attack']} "
                f"x{key['attackers']} seed {key['seed']}: final {cached['final_accuracy']:.4f}, "
                f"clipped/round {np.mean(cached['clipped_per_round']):.1f}, "
                f"{cached['wall_seconds'] / 60:.1f} min",
                flush=True,
            )
        if cached is not None:
            runs.append(cached)
    if not runs:
        raise SkipBenchmark("no run of the plan has finished yet (--no-run with nothing saved)")
    rows = summarize(runs)
    default = DEFAULT_RULE
    return {
        "config": {
            "dataset": args.dataset,
            "model": "mlp",
            "clients": args.clients,
            "rounds": args.rounds,
            "local_epochs": 1,
            "batch_size": args.batch_size,
            "max_batches": args.max_batches,
            "lr_schedule": "cosine",
            "partitions": args.partitions,
            "rules": args.rules,
            "clean_rules": args.clean_rules,
            "attacks": args.attacks,
            "attackers": args.attackers,
            "seeds": args.seeds,
            "set": args.set,
            "definitions": DEFINITIONS,
            "strategy_defaults": {
                k: getattr(StrategyConfig(), k)
                for k in ("scale_clip", "example_cap", "real_band", "real_trim", "max_examples")
            },
            "client_threads": 1,
        },
        "planned": len(keys),
        "missing": len(keys) - len(runs),
        "runs": runs,
        "summary": rows,
        "verdicts": verdicts(rows, default),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Final accuracy (mean over seeds) per attack, one bar per rule x hostile count."""
    import matplotlib.pyplot as plt

    rows = result["summary"]
    partitions = [p for p in PARTITIONS if any(r["partition"] == p for r in rows)]
    fig, axes = plt.subplots(len(partitions), 1, figsize=(10, 3.6 * len(partitions)), squeeze=False)
    attacks = [
        "none",
        *ATTACKS,
        *([REFERENCE] if any(r["attack"] == REFERENCE for r in rows) else []),
    ]
    for ax, partition in zip(axes[:, 0], partitions):
        mine = [r for r in rows if r["partition"] == partition]
        series = sorted({(r["rule"], r["attackers"]) for r in mine if r["attack"] != "none"})
        rules = sorted({r["rule"] for r in mine})
        series = [(rule, 0) for rule in rules] + series
        width = 0.8 / max(len(series), 1)
        for i, (rule, f) in enumerate(series):
            xs, ys = [], []
            for j, attack in enumerate(attacks):
                hit = [
                    r
                    for r in mine
                    if r["rule"] == rule
                    and r["attack"] == attack
                    and (r["attackers"] == f or (attack == "none" and f == 0))
                ]
                if hit and (attack == "none") == (f == 0):
                    xs.append(j + (i - len(series) / 2 + 0.5) * width)
                    ys.append(hit[0]["accuracy"])
            label = f"{rule}, clean" if f == 0 else f"{rule}, {f} hostile"
            ax.bar(xs, ys, width, label=label, color=f"C{i}")
        ax.set_xticks(range(len(attacks)), attacks)
        ax.set(ylabel="final test accuracy", ylim=(0, 1), title=f"MNIST MLP, {partition}")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, ncol=3, loc="lower left")
    cfg = result["config"]
    local = f"{cfg['max_batches']} local batches" if cfg["max_batches"] else "one local epoch"
    fig.suptitle(
        f"{cfg['clients']} clients, {cfg['rounds']} rounds of {local}; seeds {cfg['seeds']} (mean)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    save_figure(fig, path, result["machine"])


def _list(kind):
    def parse(text: str) -> list:
        return [kind(x) for x in text.split(",") if x.strip()]

    return parse


def build_parser() -> argparse.ArgumentParser:
    """Arguments: the common ones plus dataset, partitions, rules, attacks, counts, seeds."""
    parser = benchmark_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument(
        "--name", default=NAME, help=f"result name: <out>/<name>.json (default {NAME})"
    )
    parser.add_argument("--dataset", default="mnist", help="mnist (default) or digits")
    parser.add_argument("--data-root", default="", help=f"MNIST IDX folder ({DEFAULT_MNIST})")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--max-batches", type=int, default=0, help="local batches (0 = epoch)")
    parser.add_argument("--partitions", type=_list(str), default=list(PARTITIONS))
    parser.add_argument(
        "--rules", type=_list(str), default=[DEFAULT_RULE], help="attacked rules (the default)"
    )
    parser.add_argument(
        "--clean-rules", type=_list(str), default=list(RULES), help="rules also run clean"
    )
    parser.add_argument("--attacks", type=_list(str), default=list(ATTACKS))
    parser.add_argument("--attackers", type=_list(int), default=[1, 2], help="hostile counts")
    parser.add_argument("--seeds", type=_list(int), default=[0, 1, 2])
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="run-config override for every run (e.g. strategy.scale_clip=1.5)",
    )  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help="rerun runs already saved")
    parser.add_argument("--no-run", action="store_true", help="only assemble saved runs")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.hostile [--quick] [--partitions iid --seeds 0 ...]``."""
    for key, value in flower_env(WORK_DIR / ".flwr").items():  # before Flower is imported
        os.environ.setdefault(key, value)
    args = build_parser().parse_args(argv)
    return run_benchmark(args.name, measure, plot, args, module=NAME)


if __name__ == "__main__":
    raise SystemExit(main())
