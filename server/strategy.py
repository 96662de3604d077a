"""The bitfed strategy: Flower's FedAvg, with 1-bit updates both ways and strict reply checks.

Only two hooks of :class:`flwr.serverapp.strategy.FedAvg` are overridden:

* ``configure_train`` samples nodes with a deadline (Flower's ``sample_nodes`` waits forever)
  and gives each node the smallest payload that brings its replica to the current global
  version: nothing, the last binarized delta, or the full model (float16) once;
* ``aggregate_train`` drops every malformed reply with one logged line, skips the round when
  fewer than ``federation.min_clients`` valid replies remain (the global model is then left
  alone), and applies the rule ``strategy.name``:

  - ``mean``: example-weighted mean of ``scale * sign`` (EF-signSGD, arXiv 1901.09847);
  - ``majority``: ``majority_step * sign(sum of signs)`` (signSGD-MV, arXiv 1810.05291);
  - ``fedavg``: Flower's own example-weighted float32 average (the baseline).

  Both sign rules are multiplied by ``server_lr`` and binarized again for the downlink with a
  server-side error-feedback residual (``scale * sign``, as on the clients), so every client
  reproduces the new global model exactly from 1 bit per weight.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore import log

from client.records import from_record, to_record, wire_bytes
from core import codec
from core.codec import (
    ARRAYS,
    CONFIG,
    METRICS,
    CodecError,
    ModelSpec,
    SignUpdate,
    compress,
    decode_float32,
    decode_update,
    encode_float32,
    encode_full,
    encode_update,
)
from core.config import ExperimentConfig
from server.aggregate import majority_vote, mean_of_signs, mean_real, median_real

__all__ = ["BitFedStrategy", "state_to_record", "record_to_state"]


def state_to_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    """Wrap the global model in Flower's float32 ``ArrayRecord`` (what ``start`` carries)."""
    return ArrayRecord({k: codec_array(v) for k, v in state.items()})


def codec_array(value: np.ndarray):
    """Flower ``Array`` of a float32 copy of ``value``."""
    from flwr.app import Array

    return Array(np.ascontiguousarray(value, dtype=np.float32))


def record_to_state(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Inverse of :func:`state_to_record` (server-side only: trusted input)."""
    return {k: np.asarray(v.numpy(), dtype=np.float32) for k, v in record.items()}


class BitFedStrategy(FedAvg):
    """FedAvg with binarized uplink and downlink, error feedback and reply validation.

    Parameters
    ----------
    cfg
        The experiment; uses ``strategy.*`` and ``federation.*``.
    spec
        The server's own model spec: every reply is checked against it.
    lineage
        Identity of this run's model; a client replica of another lineage is replaced.
    version
        Global-model version (number of applied aggregates) to continue from.
    residual
        Server-side error-feedback residual of the downlink (``None``: zeros).
    round_offset
        Rounds completed before this ``start`` (resume): round ``r`` of ``start`` is
        ``round_offset + r`` of the run.
    last_delta
        Codec arrays of the downlink from ``version - 1`` to ``version`` (resume). With it, a
        node this server has no record of is presumed to hold ``version - 1`` (the replica every
        client of the interrupted run got) and is sent this delta, not the full model; a client
        whose replica does not match says so (``need-full``) and gets the full model next round.
    node_version
        Replica version of each node id, as last known (resume).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        spec: ModelSpec,
        *,
        lineage: str,
        version: int = 0,
        residual: dict[str, np.ndarray] | None = None,
        round_offset: int = 0,
        last_delta: dict[str, np.ndarray] | None = None,
        node_version: dict[int, int] | None = None,
    ) -> None:
        per_round = cfg.federation.clients_per_round
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,  # the server evaluates the global model on held-out data
            min_train_nodes=per_round,
            min_available_nodes=per_round,
        )
        self.cfg = cfg
        self.spec = spec
        self.lineage = lineage
        self.version = version
        self.residual = residual or {t.name: np.zeros(t.shape, np.float32) for t in spec.sign}
        self.round_offset = round_offset
        # what each node's replica holds, as far as known (-1: no usable replica)
        self.node_version: dict[int, int] = dict(node_version or {})
        self.last_delta_arrays = last_delta  # downlink from version - 1 to version (codec)
        self.last_delta: ArrayRecord | None = to_record(last_delta) if last_delta else None
        self._presumed = version - 1 if last_delta else None  # replica of a node not yet heard
        self.round_stats: dict[str, dict[str, Any]] = {}  # per absolute round, for the tables
        self._global: dict[str, np.ndarray] | None = None
        self._sent: dict[int, int] = {}

    # --- sampling ---------------------------------------------------------------------------
    def sample(self, grid: Grid, run_round: int) -> list[int]:
        """Up to ``clients_per_round`` node ids, waiting at most ``node_wait_timeout`` seconds.

        After the deadline the round goes ahead with every connected node if there are at least
        ``min_clients``; otherwise it is given up (empty list) with a message saying how many
        nodes were seen and how many were needed.
        """
        fed = self.cfg.federation
        need = fed.clients_per_round
        deadline = time.monotonic() + fed.node_wait_timeout
        last_note = 0.0
        while len(nodes := sorted(grid.get_node_ids())) < need:
            now = time.monotonic()
            if now >= deadline:
                if len(nodes) >= fed.min_clients:
                    log(
                        WARNING,
                        "round %d: only %d of %d nodes after %.0f s; going ahead",
                        run_round,
                        len(nodes),
                        need,
                        fed.node_wait_timeout,
                    )
                    break
                log(
                    WARNING,
                    "round %d: gave up waiting for nodes after %.0f s: saw %d, needed "
                    "%d (federation.min_clients=%d); raise federation.node_wait_timeout or "
                    "start more clients",
                    run_round,
                    fed.node_wait_timeout,
                    len(nodes),
                    need,
                    fed.min_clients,
                )
                return []
            if now - last_note >= 10.0:
                log(INFO, "waiting for nodes: %d connected, %d needed", len(nodes), need)
                last_note = now
            time.sleep(min(1.0, max(deadline - now, 0.01)))
        rng = random.Random(f"{self.cfg.seed}:{run_round}")
        return rng.sample(nodes, min(need, len(nodes)))

    # --- downlink ---------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes and send each the payload its replica needs (see module docstring)."""
        run_round = self.round_offset + server_round
        self._global = record_to_state(arrays)
        self._sent = {}
        nodes = self.sample(grid, run_round)
        cached: dict[str, ArrayRecord | None] = {}
        cost: dict[str, int] = {}
        messages = []
        for node in nodes:
            payload = self._payload_for(node)
            if payload not in cached:
                cached[payload] = self._payload_record(payload, arrays)
                cost[payload] = wire_bytes(cached[payload]) if cached[payload] is not None else 0
            record = cached[payload]
            conf = ConfigRecord(dict(config))
            conf[codec.SERVER_ROUND] = run_round
            conf[codec.LINEAGE] = self.lineage
            conf[codec.VERSION] = self.version
            conf[codec.BASE_VERSION] = self.version - 1
            conf[codec.PAYLOAD] = payload
            content = RecordDict({CONFIG: conf})
            if record is not None:
                content[ARRAYS] = record
            self._sent[node] = cost[payload]
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        log(
            INFO,
            "round %d: sent to %d nodes (%s)",
            run_round,
            len(nodes),
            ", ".join(f"{k}: {sum(self._payload_for(n) == k for n in nodes)}" for k in cached),
        )
        return messages

    def _payload_for(self, node: int) -> str:
        if self.cfg.strategy.name == "fedavg":
            return codec.FLOAT32
        have = self.node_version.get(node, self._presumed)
        if have == self.version:
            return codec.CURRENT
        if have == self.version - 1 and self.last_delta is not None:
            return codec.DELTA
        return codec.FULL

    def _payload_record(self, payload: str, arrays: ArrayRecord) -> ArrayRecord | None:
        if payload == codec.FLOAT32:
            return to_record(encode_float32(self._global, self.spec), raw=False)
        if payload == codec.FULL:
            return to_record(encode_full(self._global, self.spec))
        if payload == codec.DELTA:
            return self.last_delta
        return None

    # --- uplink -----------------------------------------------------------------------------
    def check_reply(self, msg: Message) -> tuple[Any, int]:
        """Decode one reply against the spec: ``(update or float32 state, capped examples)``.

        Raises :class:`core.codec.CodecError` naming what is wrong (keys, dtype, shape, byte
        length, NaN/inf/negative scale, examples, model version).
        """
        content = msg.content
        keys = set(content.keys())
        if keys != {ARRAYS, METRICS}:
            raise CodecError(f"reply records {sorted(keys)}, expected {[ARRAYS, METRICS]}")
        metrics, record = content[METRICS], content[ARRAYS]
        if not isinstance(metrics, MetricRecord) or not isinstance(record, ArrayRecord):
            raise CodecError("reply records have the wrong types")
        examples = metrics.get(codec.NUM_EXAMPLES)
        if not isinstance(examples, int) or isinstance(examples, bool) or examples <= 0:
            raise CodecError(f"{codec.NUM_EXAMPLES} must be a positive int, got {examples!r}")
        version = metrics.get(codec.MODEL_VERSION)
        if version != self.version:
            raise CodecError(f"update for model version {version!r}, current is {self.version}")
        arrays = from_record(record, self.spec.float32_bytes)
        if self.cfg.strategy.name == "fedavg":
            decoded: Any = decode_float32(arrays, self.spec)
        else:
            decoded = decode_update(arrays, self.spec)
        return decoded, min(examples, self.cfg.strategy.max_examples)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate replies, then aggregate them, or skip the round when too few are valid."""
        run_round = self.round_offset + server_round
        replies = list(replies)
        valid: list[tuple[Message, Any, int]] = []
        failed = rejected = 0
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                failed += 1
                log(WARNING, "round %d: node %d failed: %s", run_round, node, msg.error.reason)
                continue
            metrics = msg.content.metric_records.get(METRICS)
            if metrics is not None and metrics.get(codec.NEED_FULL) == 1:
                self.node_version[node] = -1
                log(
                    INFO,
                    "round %d: node %d has no usable replica; it gets the full model next time",
                    run_round,
                    node,
                )
                continue
            try:
                decoded, examples = self.check_reply(msg)
            except CodecError as exc:
                rejected += 1
                log(WARNING, "round %d: rejected reply from node %d: %s", run_round, node, exc)
                continue
            valid.append((msg, decoded, examples))

        stats: dict[str, Any] = {
            "sampled": len(self._sent),
            "valid": len(valid),
            "rejected": rejected,
            "failed": failed,
            "downlink_bytes": float(np.mean(list(self._sent.values()))) if self._sent else 0.0,
        }
        for msg, _, _ in valid:  # their replicas are at the current version now
            self.node_version[msg.metadata.src_node_id] = self.version
        if len(valid) < self.cfg.federation.min_clients:
            log(
                WARNING,
                "round %d skipped: %d valid replies, fewer than federation.min_clients="
                "%d; the global model stays at version %d",
                run_round,
                len(valid),
                self.cfg.federation.min_clients,
                self.version,
            )
            self.round_stats[str(run_round)] = stats | {"skipped": 1, "version": self.version}
            return None, MetricRecord({"skipped": 1, "valid": len(valid)})

        new_global = self._apply_rule(valid)
        self.version += 1
        weights = [ex for _, _, ex in valid]
        mets = [m.content[METRICS] for m, _, _ in valid]
        total = float(sum(weights))
        stats |= {
            "skipped": 0,
            "version": self.version,
            "num_examples": int(total),
            "train_loss": sum(w * float(m.get(codec.LOSS, 0.0)) for w, m in zip(weights, mets))
            / total,
            "train_accuracy": sum(
                w * float(m.get(codec.ACCURACY, 0.0)) for w, m in zip(weights, mets)
            )
            / total,
            "uplink_bytes": float(np.mean([wire_bytes(m.content[ARRAYS]) for m, _, _ in valid])),
            "peak_memory": max(_nonneg_int(m.get(codec.PEAK_MEMORY)) for m in mets),
            "train_time": float(np.mean([_nonneg_float(m.get(codec.TRAIN_TIME)) for m in mets])),
        }
        self.round_stats[str(run_round)] = stats
        summary = {k: float(v) for k, v in stats.items() if isinstance(v, int | float)}
        return state_to_record(new_global), MetricRecord(summary)

    def _apply_rule(self, valid: list[tuple[Message, Any, int]]) -> dict[str, np.ndarray]:
        """Compute the new global state from valid replies (sets ``last_delta`` for sign rules)."""
        rule, lr = self.cfg.strategy.name, self.cfg.strategy.server_lr
        weights = [float(ex) for _, _, ex in valid]
        if rule == "fedavg":
            contents = []
            for _msg, state, ex in valid:  # Flower's own FedAvg average, over capped weights
                contents.append(
                    RecordDict(
                        {
                            ARRAYS: ArrayRecord({k: codec_array(v) for k, v in state.items()}),
                            METRICS: MetricRecord({codec.NUM_EXAMPLES: ex}),
                        }
                    )
                )
            averaged = aggregate_arrayrecords(contents, codec.NUM_EXAMPLES)
            return record_to_state(averaged)
        updates: list[SignUpdate] = [u for _, u, _ in valid]
        if rule == "majority":
            step = majority_vote(updates, self.spec, self.cfg.strategy.majority_step)
            real = median_real(updates, self.spec)
        else:
            step = mean_of_signs(updates, weights, self.spec)
            real = mean_real(updates, weights, self.spec)
        step = {k: lr * v for k, v in step.items()}
        signs, scales, self.residual = compress(step, self.residual, self.spec)
        down = SignUpdate(signs, scales, {k: v.astype(np.float16) for k, v in real.items()})
        self.last_delta_arrays = encode_update(down, self.spec)
        self.last_delta = to_record(self.last_delta_arrays)
        dense = down.dense(self.spec)
        assert self._global is not None
        new = {t.name: self._global[t.name] + dense[t.name] for t in self.spec.sign}
        new |= {t.name: real[t.name] for t in self.spec.real}
        return new


def _nonneg_int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and np.isfinite(value) and value > 0 else 0


def _nonneg_float(value: Any) -> float:
    return (
        float(value) if isinstance(value, int | float) and np.isfinite(value) and value > 0 else 0.0
    )
