"""Flower ServerApp: config -> global model (or checkpoint) -> strategy.start -> per-round outputs.

Each round the global model is evaluated on the dataset's held-out test split, a checkpoint is
written atomically (round counter, version, global weights, downlink residual, last delta,
replica version per node, history), and ``metrics.json`` in the run folder is rewritten;
``federation.resume`` continues from the last checkpoint of the same configuration.
"""

from __future__ import annotations

import json
import time
import uuid
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from client import task
from client.records import to_record, wire_bytes
from core.atomic import atomic_write
from core.codec import encode_float32, model_spec
from core.config import ExperimentConfig, from_run_config, to_run_config
from server.checkpoint import Checkpoint, fingerprint
from server.strategy import BitFedStrategy, record_to_state, state_to_record

__all__ = [
    "app",
    "run_server",
    "run_folder",
    "aggregate_model",
    "float32_wire_bytes",
    "METRICS_FILE",
]

METRICS_FILE = "metrics.json"

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point Flower calls: read the run config and run the federation."""
    run_server(grid, from_run_config(context.run_config))


def run_folder(cfg: ExperimentConfig) -> Path:
    """``output_dir``, or ``outputs/<date>/<time>`` (Hydra's pattern) when it is empty."""
    if cfg.output_dir:
        return Path(cfg.output_dir)
    return Path("outputs") / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S")


def run_server(grid: Grid, cfg: ExperimentConfig) -> dict[str, Any]:
    """Run (or resume) ``federation.num_rounds`` rounds; return the content of metrics.json."""
    task.set_threads(cfg)
    out = run_folder(cfg)
    ckpt_dir = Path(cfg.federation.checkpoint_dir) if cfg.federation.checkpoint_dir else out
    test = task.load_split(cfg, "test")
    model = task.new_model(cfg, test)
    spec = model_spec(model)
    fprint = fingerprint(cfg, spec)

    ckpt = Checkpoint.load(ckpt_dir) if cfg.federation.resume else None
    if ckpt is not None and ckpt.fingerprint != fprint:
        raise ValueError(
            f"checkpoint in {ckpt_dir} was written for another configuration; use another "
            "output_dir/federation.checkpoint_dir or set federation.resume=false"
        )
    if ckpt is None:
        state = task.state_of(model, spec)
        for t in spec.real:  # real state travels as float16: start from what clients will see
            state[t.name] = state[t.name].astype(np.float16).astype(np.float32)
        ckpt = Checkpoint(0, 0, uuid.uuid4().hex[:16], fprint, state, {}, [])
    else:
        log(
            INFO,
            "resuming from %s: %d rounds done, model version %d",
            ckpt_dir,
            ckpt.round,
            ckpt.version,
        )

    float32_bytes = float32_wire_bytes(spec)
    strategy = BitFedStrategy(
        cfg,
        spec,
        lineage=ckpt.lineage,
        version=ckpt.version,
        residual=ckpt.residual or None,
        round_offset=ckpt.round,
        last_delta=ckpt.last_delta,
        node_version=ckpt.node_version,
    )
    done, history = ckpt.round, ckpt.history
    started = time.perf_counter()

    def report(stats: dict[str, Any]) -> dict[str, Any]:
        return {
            "config": to_run_config(cfg),
            "float32_bytes": float32_bytes,
            "num_weights": spec.sign_numel,
            "num_real": spec.real_numel,
            "rounds": history,
            "seconds": time.perf_counter() - started,
        } | stats

    def evaluate_fn(server_round: int, arrays) -> MetricRecord | None:
        run_round = done + server_round
        if server_round == 0 and done > 0:
            return None
        state = record_to_state(arrays)
        row: dict[str, Any] = {"round": run_round}
        if cfg.strategy.name != "fedavg":  # what the clients hold: the broadcast model
            task.load_state(model, state, spec)
            res = task.evaluate_global(model, test)
            row |= {"replica_accuracy": float(res.accuracy), "replica_loss": float(res.loss)}
        task.load_state(model, aggregate_model(state, strategy), spec)
        res = task.evaluate_global(model, test)
        row |= {"accuracy": float(res.accuracy), "loss": float(res.loss)}
        row |= strategy.round_stats.get(str(run_round), {})
        for key, ratio in (("uplink_bytes", "uplink_ratio"), ("downlink_bytes", "downlink_ratio")):
            if row.get(key):
                row[ratio] = float32_bytes / row[key]
        history.append(row)
        if server_round > 0:
            residual = strategy.residual if cfg.strategy.name != "fedavg" else {}
            Checkpoint(
                run_round,
                strategy.version,
                strategy.lineage,
                fprint,
                state,
                residual,
                history,
                strategy.last_delta_arrays,
                strategy.node_version,
            ).save(ckpt_dir)
        _write_json(out / METRICS_FILE, report({}))
        log(
            INFO,
            "round %d/%d: accuracy %.4f, loss %.4f, up %s B, down %s B%s",
            run_round,
            cfg.federation.num_rounds,
            row["accuracy"],
            row["loss"],
            _fmt(row.get("uplink_bytes")),
            _fmt(row.get("downlink_bytes")),
            " (skipped)" if row.get("skipped") else "",
        )
        return MetricRecord({"accuracy": row["accuracy"], "loss": row["loss"]})

    remaining = cfg.federation.num_rounds - done
    if remaining > 0:
        strategy.start(
            grid=grid,
            initial_arrays=state_to_record(ckpt.global_state),
            num_rounds=remaining,
            timeout=cfg.federation.round_timeout,
            train_config=ConfigRecord(),
            evaluate_fn=evaluate_fn,
        )
    else:
        log(INFO, "all %d rounds already done (checkpoint in %s)", done, ckpt_dir)
    result = report({"finished": True})
    _write_json(out / METRICS_FILE, result)
    return result


def aggregate_model(
    state: dict[str, np.ndarray], strategy: BitFedStrategy
) -> dict[str, np.ndarray]:
    """Return the server's global model: the broadcast model plus its downlink residual.

    With a sign rule the server binarizes each aggregated step again for the downlink and keeps
    what the sign could not carry (error feedback); the aggregate of the clients' updates is
    therefore ``broadcast + residual`` (equal to ``broadcast`` for ``fedavg``).
    """
    if strategy.cfg.strategy.name == "fedavg":
        return state
    return {k: v + strategy.residual[k] if k in strategy.residual else v for k, v in state.items()}


def float32_wire_bytes(spec) -> int:
    """Bytes Flower's FedAvg sends for this model: its float32 ``ArrayRecord``, measured.

    Measured on random values of the right shapes: identical arrays (a fresh model's zero
    batch-norm state) would otherwise be deduplicated by Flower's content addressing.
    """
    rng = np.random.default_rng(0)
    state = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in spec.tensors}
    return wire_bytes(to_record(encode_float32(state, spec), raw=False))


def _fmt(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) else "-"


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=1, default=float).encode()
    atomic_write(path, lambda fh: fh.write(text))
