"""What the server keeps of each round: held-out evaluation, a checkpoint, ``metrics.json``.

:class:`RoundRecorder` is the ``evaluate_fn`` of ``Strategy.start``: after every round it
evaluates the global model (and, for the 1-bit rules, the broadcast model the clients hold) on
the dataset's test split, writes a checkpoint atomically (round counter, version, global state,
downlink residual, last delta, replica version per node, history), and rewrites ``metrics.json``
in the run folder. With ``federation.compact_state`` it also publishes each version into the
shared state folder (:class:`core.replica_store.ReplicaStore`), before any client needs it.
"""

from __future__ import annotations

import time
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.supercore import log

from core import federated
from core.atomic import atomic_write_json
from core.codec import ModelSpec, encode_float32
from core.config import ExperimentConfig, to_run_config
from core.replica_store import ReplicaStore, shared_state_dir
from glue.records import record_to_state, to_record, wire_bytes
from server.checkpoint import Checkpoint
from server.strategies import BitFedStrategy, SignStrategy

__all__ = ["RoundRecorder", "METRICS_FILE", "float32_wire_bytes"]

METRICS_FILE = "metrics.json"


def float32_wire_bytes(spec: ModelSpec) -> int:
    """Bytes Flower's FedAvg sends for this model: its float32 ``ArrayRecord``, measured.

    Measured on random values of the right shapes: identical arrays (a fresh model's zero
    batch-norm state) would otherwise be deduplicated by Flower's content addressing.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    state = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in spec.tensors}
    return wire_bytes(to_record(encode_float32(state, spec), raw=False))


class RoundRecorder:
    """Evaluates, checkpoints and reports each round of one run.

    Parameters
    ----------
    cfg, model, test, spec
        The experiment, a model to load states into, the held-out split, the model's spec.
    strategy
        The running strategy (round statistics, version, residual, node versions).
    checkpoint
        The checkpoint this run started from (round 0 of a fresh run).
    out_dir, ckpt_dir
        Where ``metrics.json`` and ``checkpoint.npz`` go.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        model: torch.nn.Module,
        test: Any,
        spec: ModelSpec,
        strategy: BitFedStrategy,
        checkpoint: Checkpoint,
        out_dir: Path,
        ckpt_dir: Path,
    ) -> None:
        self.cfg, self.model, self.test, self.spec = cfg, model, test, spec
        self.strategy = strategy
        self.start = checkpoint
        self.history: list[dict[str, Any]] = checkpoint.history
        self.out_dir, self.ckpt_dir = Path(out_dir), Path(ckpt_dir)
        self.float32_bytes = float32_wire_bytes(spec)
        self.started = time.perf_counter()
        compact = cfg.federation.compact_state and isinstance(strategy, SignStrategy)
        self.store = ReplicaStore(shared_state_dir(cfg)) if compact else None

    def report(self, **extra: Any) -> dict[str, Any]:
        """Return the content of ``metrics.json``."""
        return {
            "config": to_run_config(self.cfg),
            "float32_bytes": self.float32_bytes,
            "num_weights": self.spec.sign_numel,
            "num_real": self.spec.real_numel,
            "rounds": self.history,
            "seconds": time.perf_counter() - self.started,
        } | extra

    def write(self, **extra: Any) -> dict[str, Any]:
        """Rewrite ``metrics.json`` atomically; return what was written."""
        payload = self.report(**extra)
        atomic_write_json(self.out_dir / METRICS_FILE, payload)
        return payload

    def _accuracy(self, state: dict) -> tuple[float, float]:
        federated.load_state(self.model, state, self.spec)
        res = federated.evaluate_global(self.cfg, self.model, self.test)
        return float(res.accuracy), float(res.loss)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """``evaluate_fn`` of ``Strategy.start``: evaluate, checkpoint and report one round."""
        done = self.start.round
        run_round = done + server_round
        broadcast = record_to_state(arrays)
        if self.store is not None:  # what compact clients rebuild their replicas from
            strategy = self.strategy
            self.store.publish(
                strategy.lineage, strategy.version, broadcast, strategy.last_delta_arrays
            )
        if server_round == 0 and done > 0:
            return None  # a resumed run: round 0 is already in the history
        row: dict[str, Any] = {"round": run_round, "elapsed": time.perf_counter() - self.started}
        if isinstance(self.strategy, SignStrategy):  # what the clients hold: the broadcast model
            acc, loss = self._accuracy(broadcast)
            row |= {"replica_accuracy": acc, "replica_loss": loss}
        acc, loss = self._accuracy(self.strategy.global_model(broadcast))
        row |= {"accuracy": acc, "loss": loss}
        row |= self.strategy.round_stats.get(str(run_round), {})
        for key, ratio in (("uplink_bytes", "uplink_ratio"), ("downlink_bytes", "downlink_ratio")):
            if row.get(key):
                row[ratio] = self.float32_bytes / row[key]
        self.history.append(row)
        if server_round > 0:
            Checkpoint(
                run_round,
                self.strategy.version,
                self.strategy.lineage,
                self.start.fingerprint,
                broadcast,
                self.strategy.checkpoint_residual,
                self.history,
                self.strategy.last_delta_arrays,
                self.strategy.node_version,
            ).save(self.ckpt_dir)
        self.write()
        log(
            INFO,
            "round %d/%d: accuracy %.4f, loss %.4f, up %s B, down %s B%s",
            run_round,
            self.cfg.federation.num_rounds,
            row["accuracy"],
            row["loss"],
            _fmt(row.get("uplink_bytes")),
            _fmt(row.get("downlink_bytes")),
            _skip_note(row),
        )
        return MetricRecord({"accuracy": row["accuracy"], "loss": row["loss"]})


def _fmt(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) else "-"


def _skip_note(row: dict[str, Any]) -> str:
    if not row.get("skipped"):
        return ""
    failed = row.get("failed_nodes") or {}
    why = "; ".join(f"node {n}: {reason}" for n, reason in failed.items())
    return " (skipped" + (f": {why}" if why else "") + ")"
