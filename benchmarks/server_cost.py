"""Server cost: time and memory to aggregate K client updates, 1-bit rules vs float32 FedAvg.

For each model (its real tensor layout, from :func:`core.codec.model_spec`) and K in
(10, 100, 1000), K random replies are built the way clients build them (sign updates:
:func:`core.codec.encode_update` -> raw ``ArrayRecord``; FedAvg: float32 state -> Flower's numpy
``ArrayRecord``), then one round of :meth:`server.strategy.BitFedStrategy.aggregate_train` runs
end to end: reply validation, bounds and decoding, the rule (``aligned``, the default: mean of
scale·sign weighted by agreement with the majority vote; ``mean``: example-weighted mean of
scale·sign; ``majority``: signSGD majority vote; ``fedavg``: Flower's own
``aggregate_arrayrecords``), the server's error-feedback re-binarization for the downlink, and
the new global ``ArrayRecord``. All four rules run in the same process and the same run.

* memory: the ``tracemalloc`` peak during one call above what was traced when it began (numpy
  registers its buffers with tracemalloc, Python ``bytes`` count natively): the server's
  *working* memory on top of the K replies it already holds (reported apart as
  ``input_bytes``);
* time: wall seconds of ``aggregate_train`` without the tracer, best of ``repeats`` calls, or
  of one call when that one took longer than ``--max-untraced-seconds`` (a K = 1000 round of
  a BinaryNet-sized model takes ~15 s here). Never the traced call's time: tracing slows
  Flower's FedAvg (many small Python objects) far more than the 1-bit rules.

A configuration whose K replies alone exceed ``--max-input-gib`` is skipped with that reason
(e.g. float32 FedAvg of K = 1000 BinaryNets would need ~52 GiB just to hold the replies).
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import MIB, benchmark_parser, run_benchmark, save_figure

__all__ = ["NAME", "build_parser", "measure", "plot", "main"]

NAME = "server_cost"
MODELS = {
    "mlp": (1, 28, 28),
    "cnv": (3, 32, 32),
    "binarynet": (3, 32, 32),
    "resnete18": (3, 224, 224),
}
RULES = ("aligned", "mean", "majority", "fedavg")
KS = (10, 100, 1000)


class _Grid:
    """The one thing ``configure_train`` asks of a Grid: which nodes are connected."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def _task_identity() -> None:
    """Messages need a run/task identity; a benchmark process is its own run 1."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = 1
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = 0


def model_layout(name: str):
    """The wire layout (:class:`core.codec.ModelSpec`) of model ``name`` as bitfed trains it."""
    from core import build_model
    from core.codec import model_spec

    return model_spec(build_model(name, "lowcost", num_classes=10, in_shape=MODELS[name]))


def _reply(node: int, arrays: dict[str, np.ndarray], *, raw: bool):
    from flwr.app import Message, MetricRecord, RecordDict
    from flwr.app.metadata import Metadata

    from core import codec
    from glue.records import to_record

    meta = Metadata(
        run_id=1,
        message_id=f"bench-{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id=f"bench-in-{node}",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type="train",
    )
    metrics = {codec.NUM_EXAMPLES: 100 + node % 50, codec.MODEL_VERSION: 0, codec.LOSS: 1.0}
    content = RecordDict(
        {codec.METRICS: MetricRecord(metrics), codec.ARRAYS: to_record(arrays, raw=raw)}
    )
    return Message(metadata=meta, content=content)


def make_replies(spec, rule: str, k: int, seed: int = 0) -> list[Any]:
    """K distinct random replies as clients send them for ``rule`` (node ids 1..K)."""
    from core.codec import SignUpdate, encode_float32, encode_update

    rng = np.random.default_rng(seed)
    replies = []
    for node in range(1, k + 1):
        if rule == "fedavg":
            state = {t.name: rng.standard_normal(t.shape, np.float32) for t in spec.tensors}
            replies.append(_reply(node, encode_float32(state, spec), raw=False))
            continue
        signs = {t.name: _random_signs(rng, t.numel) for t in spec.sign}
        scales = {t.name: float(rng.uniform(1e-4, 1e-2)) for t in spec.sign}
        real = {t.name: rng.standard_normal(t.shape).astype(np.float16) for t in spec.real}
        replies.append(_reply(node, encode_update(SignUpdate(signs, scales, real), spec), raw=True))
    return replies


def _random_signs(rng: np.random.Generator, n: int) -> np.ndarray:
    """``ceil(n / 8)`` random packed sign bytes with the codec's zero padding bits."""
    packed = np.frombuffer(rng.bytes((n + 7) // 8), dtype=np.uint8).copy()
    pad = 8 * packed.size - n
    if pad:
        packed[-1] &= (0xFF << pad) & 0xFF
    return packed


def payload_bytes(spec, rule: str) -> int:
    """Array bytes of one reply (wire framing aside): what the server holds per client."""
    if rule == "fedavg":
        return spec.float32_bytes
    return spec.sign_bytes + 4 * len(spec.sign) + 2 * spec.real_numel


def aggregate_once(spec, rule: str, replies: list[Any], *, trace_memory: bool) -> dict[str, Any]:
    """One ``aggregate_train`` round of a fresh strategy over ``replies``.

    Returns ``{"seconds", "peak_bytes"}``: wall time and, with ``trace_memory``, the
    ``tracemalloc`` peak during the call above what was traced when it began (else None).
    """
    from flwr.app import ConfigRecord

    from core.config import ExperimentConfig, FederationConfig, StrategyConfig
    from glue.records import state_to_record
    from server.strategies import build_strategy

    k = len(replies)
    cfg = ExperimentConfig(
        strategy=StrategyConfig(name=rule),
        federation=FederationConfig(
            num_clients=k, clients_per_round=k, min_clients=min(2, k), node_wait_timeout=1.0
        ),
    )
    rng = np.random.default_rng(1)
    global_state = {t.name: rng.standard_normal(t.shape, np.float32) for t in spec.tensors}
    strategy = build_strategy(cfg, spec, lineage="benchmark")
    list(
        strategy.configure_train(
            1,
            state_to_record(global_state),
            ConfigRecord(),
            _Grid([m.metadata.src_node_id for m in replies]),
        )
    )
    del global_state
    gc.collect()
    if trace_memory:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    arrays, metrics = strategy.aggregate_train(1, replies)
    seconds = time.perf_counter() - t0
    peak = None
    if trace_memory:
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    if arrays is None or int(metrics["valid"]) != k:
        raise RuntimeError(
            f"{rule}: aggregate_train accepted {metrics.get('valid')} of {k} replies"
        )
    return {"seconds": seconds, "peak_bytes": peak}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every model x K x rule that fits ``--max-input-gib``; ratios FedAvg / 1-bit rule."""
    import logging

    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel(logging.ERROR)  # FedAvg's notes on every construction otherwise
    _task_identity()
    models = args.models or (["mlp", "cnv"] if args.quick else list(MODELS))
    ks = args.ks or ([10, 100] if args.quick else list(KS))
    repeats = args.repeats or (1 if args.quick else 2)
    cap_gib = args.max_input_gib or (0.25 if args.quick else 6.0)
    cap = int(cap_gib * 2**30)
    rows = []
    for name in models:
        spec = model_layout(name)
        for k in ks:
            for rule in RULES:
                inputs = k * payload_bytes(spec, rule)
                row: dict[str, Any] = {
                    "model": name,
                    "k": k,
                    "rule": rule,
                    "input_bytes": inputs,
                    "num_weights": spec.sign_numel,
                }
                work = k * spec.sign_numel
                if work > args.max_work:
                    row["skipped"] = (
                        f"K x weights = {work:.1e} sign values to aggregate, over the "
                        f"{args.max_work:.0e} cap of this run (--max-work)"
                    )
                    rows.append(row)
                    print(f"{name} K={k} {rule}: skipped ({row['skipped']})", flush=True)
                    continue
                if inputs > cap:
                    row["skipped"] = (
                        f"the {k} replies alone hold {inputs / 2**30:.1f} GiB, over the "
                        f"{cap_gib:g} GiB cap (--max-input-gib)"
                    )
                    rows.append(row)
                    print(f"{name} K={k} {rule}: skipped ({row['skipped']})", flush=True)
                    continue
                replies = make_replies(spec, rule, k)
                traced = aggregate_once(spec, rule, replies, trace_memory=True)
                # always at least one call without the tracer: tracing Flower's FedAvg costs
                # far more than tracing the 1-bit rules (13 s vs 3 s for K = 1000 MLPs)
                times = [aggregate_once(spec, rule, replies, trace_memory=False)["seconds"]]
                if times[0] <= args.max_untraced_seconds:
                    times += [
                        aggregate_once(spec, rule, replies, trace_memory=False)["seconds"]
                        for _ in range(repeats - 1)
                    ]
                del replies
                gc.collect()
                row |= {
                    "seconds": min(times) if times else traced["seconds"],
                    "seconds_all": times,
                    "seconds_traced": traced["seconds"],
                    "peak_bytes": traced["peak_bytes"],
                }
                rows.append(row)
                print(
                    f"{name} K={k} {rule}: {row['seconds']:.3f} s, working memory "
                    f"{row['peak_bytes'] / MIB:.1f} MiB, replies {inputs / MIB:.1f} MiB",
                    flush=True,
                )
    return {
        "config": {
            "models": models,
            "ks": ks,
            "rules": list(RULES),
            "repeats": repeats,
            "max_input_gib": cap_gib,
            "max_untraced_seconds": args.max_untraced_seconds,
            "max_work": args.max_work,
        },
        "rows": rows,
        "ratios": _ratios(rows),
    }


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and K: FedAvg / rule for seconds, working memory and input bytes."""
    by_key = {(r["model"], r["k"], r["rule"]): r for r in rows}
    out = []
    for (model, k, rule), row in by_key.items():
        base = by_key.get((model, k, "fedavg"))
        if rule == "fedavg" or base is None:
            continue
        entry: dict[str, Any] = {
            "model": model,
            "k": k,
            "rule": rule,
            "input": base["input_bytes"] / row["input_bytes"],
        }
        if "seconds" in row and "seconds" in base:
            entry["seconds"] = base["seconds"] / row["seconds"]
            entry["working_memory"] = base["peak_bytes"] / max(row["peak_bytes"], 1)
        out.append(entry)
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    """Aggregation time and working memory vs K, one line per model and rule (log-log)."""
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "seconds" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    styles = {"aligned": "-.", "mean": "-", "majority": ":", "fedavg": "--"}
    colors = dict(
        zip(result["config"]["models"], plt.rcParams["axes.prop_cycle"].by_key()["color"])
    )
    for model, rule in sorted({(r["model"], r["rule"]) for r in rows}):
        pts = sorted(
            (r["k"], r["seconds"], r["peak_bytes"] / MIB)
            for r in rows
            if r["model"] == model and r["rule"] == rule
        )
        ks, secs, mem = zip(*pts)
        kw = dict(ls=styles[rule], marker="o", color=colors.get(model), label=f"{model} {rule}")
        a.plot(ks, secs, **kw)
        b.plot(ks, mem, **kw)
    a.set(
        xscale="log",
        yscale="log",
        xlabel="K client updates",
        ylabel="seconds per round",
        title="server aggregation time",
    )
    b.set(
        xscale="log",
        yscale="log",
        xlabel="K client updates",
        ylabel="MiB above the replies",
        title="server working memory (tracemalloc peak)",
    )
    for ax in (a, b):
        ax.grid(alpha=0.3, which="both")
    a.legend(fontsize=7, ncol=2)
    fig.suptitle(
        "BitFedStrategy.aggregate_train: 1-bit aligned / mean / majority vs float32 FedAvg"
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    save_figure(fig, path, result["machine"])


def build_parser() -> argparse.ArgumentParser:
    """Arguments: the common ones plus models, K values, repeats and the input cap."""
    parser = benchmark_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        type=lambda s: s.split(","),
        default=None,
        help=f"comma-separated subset of {','.join(MODELS)}",
    )
    parser.add_argument(
        "--ks",
        type=lambda s: [int(k) for k in s.split(",")],
        default=None,
        help="K values (default 10,100,1000; quick 10,100)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="untraced timed calls, best kept (default 2; quick 1)",
    )
    parser.add_argument(
        "--max-input-gib",
        type=float,
        default=None,
        help="skip a configuration whose K replies exceed this many GiB (default 6; quick 0.25)",
    )
    parser.add_argument(
        "--max-work",
        type=float,
        default=2e10,
        help="skip a configuration aggregating more than this many sign values (K x weights)",
    )
    parser.add_argument(
        "--max-untraced-seconds",
        type=float,
        default=5.0,
        help="time untraced calls only when the traced one took at most this (default 5)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.server_cost [--quick]``."""
    args = build_parser().parse_args(argv)
    bad = [m for m in (args.models or []) if m not in MODELS]
    if bad:
        build_parser().error(f"unknown model(s) {bad}; choose from {', '.join(MODELS)}")
    return run_benchmark(NAME, measure, plot, args)


if __name__ == "__main__":
    raise SystemExit(main())
