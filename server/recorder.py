"""What the server keeps of each round: held-out evaluation, a checkpoint, ``metrics.json``.

:class:`RoundRecorder` is the ``evaluate_fn`` of ``Strategy.start``: after every round it
evaluates the global model (and, for the 1-bit rules, the broadcast model the clients hold) on
the dataset's test split, writes a checkpoint atomically (round counter, version, global state,
downlink residual, last delta, replica version per node, history), and rewrites ``metrics.json``
in the run folder. With ``federation.compact_state`` it also publishes each version into the
shared state folder (:class:`core.replica_store.ReplicaStore`), before any client needs it.

Each round's row also holds the modelled energy of the mean participating device
(:func:`core.energy.device_round_fields`): local training steps x one step's energy (the run's
model, recipe and batch size, counted and priced once per run, :func:`core.energy.step_energy`)
plus the radio energy of the bytes it sent and received, for Wi-Fi and for LTE, and their
cumulative sums. A model (Horowitz ISSCC 2014, Huang et al. MobiSys 2012), not a measurement.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.supercore import log

from core import federated
from core.atomic import atomic_write_json
from core.codec import ModelSpec, encode_float32
from core.config import ExperimentConfig, to_run_config
from core.energy import DEFAULT_CONSTANTS, count_model_step, device_round_fields, step_energy
from core.experiment import recipe_of
from core.replica_store import ReplicaStore, shared_state_dir
from glue.records import record_to_state, to_record, wire_bytes
from server.checkpoint import Checkpoint
from server.strategies import BitFedStrategy, SignStrategy

__all__ = ["RoundRecorder", "METRICS_FILE", "float32_wire_bytes", "run_step_energy"]

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


def run_step_energy(
    cfg: ExperimentConfig, model: torch.nn.Module, in_shape: tuple[int, ...]
) -> dict[str, Any] | None:
    """Modelled energy of one local training step of this run (``core.energy``), or None.

    Counted on ``model`` (built for the run's recipe) at ``train.batch_size``; every step is
    priced as a full batch. None, with a warning, when the model has a layer the counter has no
    rule for: the run goes on without energy fields.
    """
    try:
        counted = count_model_step(model, recipe_of(cfg), cfg.train.batch_size, in_shape)
    except ValueError as exc:
        log(WARNING, "no energy estimate for this run: %s", exc)
        return None
    e = step_energy(counted, DEFAULT_CONSTANTS)
    return {
        "step_j": e.total_j,
        "step_compute_j": e.compute_j,
        "step_memory_j": e.memory_j,
        "batch_size": cfg.train.batch_size,
        "device_class": e.device_class,
        "note": "modelled per device, not measured: steps x J/step (Horowitz ISSCC 2014, 45 nm) "
        "+ radio bytes x J/byte + 2 bursts (Huang et al. MobiSys 2012); core.energy",
    }


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
        self.energy = run_step_energy(cfg, model, tuple(test.images.shape[1:]))

    def report(self, **extra: Any) -> dict[str, Any]:
        """Return the content of ``metrics.json``."""
        return {
            "config": to_run_config(self.cfg),
            "float32_bytes": self.float32_bytes,
            "num_weights": self.spec.sign_numel,
            "num_real": self.spec.real_numel,
            "rounds": self.history,
            "seconds": time.perf_counter() - self.started,
            "energy": self.energy,
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

    def _energy(self, row: dict[str, Any]) -> dict[str, float]:
        """Energy fields of a round where clients trained and replied (none otherwise)."""
        if self.energy is None or row.get("skipped") or "train_steps" not in row:
            return {}
        previous = next((r for r in reversed(self.history) if "energy_steps" in r), None)
        return device_round_fields(
            self.energy["step_j"],
            row["train_steps"],
            row.get("uplink_bytes") or 0.0,
            row.get("downlink_bytes") or 0.0,
            previous=previous,
        )

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
        row |= self._energy(row)
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
            "round %d/%d: accuracy %.4f, loss %.4f, up %s B, down %s B, device %s J (Wi-Fi, "
            "modelled)%s",
            run_round,
            self.cfg.federation.num_rounds,
            row["accuracy"],
            row["loss"],
            _fmt(row.get("uplink_bytes")),
            _fmt(row.get("downlink_bytes")),
            _fmt(row.get("energy_wifi_j"), "{:.3g}"),
            _skip_note(row),
        )
        return MetricRecord({"accuracy": row["accuracy"], "loss": row["loss"]})


def _fmt(value: Any, fmt: str = "{:.0f}") -> str:
    return fmt.format(value) if isinstance(value, int | float) else "-"


def _skip_note(row: dict[str, Any]) -> str:
    if not row.get("skipped"):
        return ""
    failed = (row.get("failed_nodes") or {}) | (row.get("refused_nodes") or {})
    why = "; ".join(f"node {n}: {reason}" for n, reason in failed.items())
    return " (skipped" + (f": {why}" if why else "") + ")"
