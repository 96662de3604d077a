"""The base strategy: Flower's FedAvg with deadline-bounded sampling and strict reply checks.

Subclasses choose the wire payloads and one aggregation rule (:meth:`BitFedStrategy.aggregate`);
everything else is shared here:

* :meth:`~BitFedStrategy.sample` picks up to ``federation.clients_per_round`` nodes and waits for
  them at most ``federation.node_wait_timeout`` seconds (Flower's ``sample_nodes`` waits for
  ever). A round that had to go ahead with fewer nodes than asked is remembered: later rounds
  do not wait again for nodes that are evidently not there;
* :meth:`~BitFedStrategy.configure_train` sends each sampled node the payload its replica needs
  (:meth:`~BitFedStrategy.payload_for`);
* :meth:`~BitFedStrategy.aggregate_train` drops every malformed reply with one logged line,
  skips the round when fewer than ``federation.min_clients`` valid replies remain (the global
  model is then left alone), bounds what each valid reply can contribute
  (:meth:`~BitFedStrategy.bound`: its weight, and through :meth:`~BitFedStrategy.bound_payloads`
  every magnitude it carries, relative to the round's robust statistics; one logged line per
  clipped node), applies the rule, and records the round's statistics
  (:attr:`~BitFedStrategy.round_stats`: sampled, valid, rejected, clipped, failed nodes and why,
  empty replies of clients without a training example, nodes that refused the round because no
  batch fits their memory budget and why, bytes).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from core import codec
from core.codec import ARRAYS, CONFIG, METRICS, CodecError, ModelSpec
from core.config import ExperimentConfig
from glue.records import from_record, record_to_state, state_to_record, wire_bytes
from server.aggregate import cap_examples

__all__ = ["BitFedStrategy", "Reply", "ResumeState"]


@dataclass
class Reply:
    """One valid client reply: the message, its decoded payload and its capped example count."""

    msg: Message
    decoded: Any  # core.codec.SignUpdate, or a float32 state for the fedavg baseline
    examples: int

    @property
    def node(self) -> int:
        """The node id that sent it."""
        return self.msg.metadata.src_node_id

    @property
    def metrics(self) -> MetricRecord:
        """The reply's metric record."""
        return self.msg.content[METRICS]


@dataclass
class ResumeState:
    """What a strategy continues from (a checkpoint; all defaults = a fresh run).

    ``version``: applied aggregates; ``residual``: server-side downlink error-feedback residual
    (``None``: zeros); ``round_offset``: rounds completed before this ``start``; ``last_delta``:
    codec arrays of the downlink from ``version - 1`` to ``version``; ``node_version``: the replica
    version of each node id, as last known.
    """

    version: int = 0
    residual: dict[str, np.ndarray] | None = None
    round_offset: int = 0
    last_delta: dict[str, np.ndarray] | None = None
    node_version: dict[int, int] | None = None


class BitFedStrategy(FedAvg):
    """FedAvg with deadline sampling, per-node payloads, reply validation and round records.

    Parameters
    ----------
    cfg
        The experiment; uses ``strategy.*`` and ``federation.*``.
    spec
        The server's own model spec: every reply is checked against it.
    lineage
        Identity of this run's model; a client replica of another lineage is replaced.
    resume
        Where to continue from (:class:`ResumeState`).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        spec: ModelSpec,
        *,
        lineage: str,
        resume: ResumeState | None = None,
    ) -> None:
        per_round = cfg.federation.clients_per_round
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,  # the server evaluates the global model on held-out data
            min_train_nodes=per_round,
            min_available_nodes=per_round,
        )
        resume = resume or ResumeState()
        self.cfg = cfg
        self.spec = spec
        self.lineage = lineage
        self.version = resume.version
        self.round_offset = resume.round_offset
        # what each node's replica holds, as far as known (-1: no usable replica)
        self.node_version: dict[int, int] = dict(resume.node_version or {})
        self.round_stats: dict[str, dict[str, Any]] = {}  # per absolute round, for the tables
        self._global: dict[str, np.ndarray] | None = None
        self._sent: dict[int, int] = {}
        self._nodes_seen: int | None = None  # nodes a round had to settle for (None: enough)
        self.run_round = self.round_offset  # the round being aggregated (absolute)
        self.extra_stats: dict[str, float] = {}  # a rule's own statistics of the round

    # --- hooks of a rule --------------------------------------------------------------------
    def payload_for(self, node: int) -> str:
        """Payload kind for ``node`` this round (``core.codec.FULL``/``DELTA``/...)."""
        raise NotImplementedError

    def base_for(self, node: int, payload: str) -> int:
        """Return the version ``payload`` applies to for ``node`` (default: the previous one)."""
        return self.version - 1

    def payload_config(self, payload: str, base: int) -> dict[str, str]:
        """Return extra config entries a payload needs (default: none)."""
        return {}

    def payload_record(self, payload: str, base: int | None = None) -> ArrayRecord | None:
        """Return the record carrying ``payload`` (``None``: nothing to send)."""
        raise NotImplementedError

    def decode(self, arrays: dict[str, np.ndarray]) -> Any:
        """Decode and validate a reply's codec arrays (raises :class:`core.codec.CodecError`)."""
        raise NotImplementedError

    def bound_payloads(self, decoded: list[Any]) -> tuple[list[Any], list[str]]:
        """Bound the magnitudes the round's decoded payloads carry (scales, real state, norms).

        Returns the bounded payloads and, per payload, what was clipped (``""``: nothing).
        """
        raise NotImplementedError

    def aggregate(self, replies: list[Reply]) -> dict[str, np.ndarray]:
        """Return the new global state (broadcast model) from the round's bounded replies."""
        raise NotImplementedError

    def global_model(self, broadcast: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return the server's best model given the broadcast one (default: the same)."""
        return broadcast

    @property
    def checkpoint_residual(self) -> dict[str, np.ndarray]:
        """Server-side residual to checkpoint (none by default)."""
        return {}

    @property
    def last_delta_arrays(self) -> dict[str, np.ndarray] | None:
        """Codec arrays of the last downlink delta to checkpoint (none by default)."""
        return None

    # --- sampling ---------------------------------------------------------------------------
    def sample(self, grid: Grid, run_round: int) -> list[int]:
        """Up to ``clients_per_round`` node ids, waiting at most ``node_wait_timeout`` seconds.

        After the deadline the round goes ahead with every connected node if there are at least
        ``min_clients``, and later rounds wait only for that many; otherwise it is given up (empty
        list) with a message saying how many nodes were seen and how many were needed.
        """
        fed = self.cfg.federation
        asked = fed.clients_per_round
        need = asked if self._nodes_seen is None else min(asked, self._nodes_seen)
        deadline = time.monotonic() + fed.node_wait_timeout
        last_note = 0.0
        while len(nodes := sorted(grid.get_node_ids())) < need:
            now = time.monotonic()
            if now >= deadline:
                if len(nodes) >= fed.min_clients:
                    log(
                        WARNING,
                        "round %d: only %d of %d nodes after %.0f s; going ahead, and later "
                        "rounds will not wait for more (start more SuperNodes, or lower "
                        "federation.clients_per_round)",
                        run_round,
                        len(nodes),
                        asked,
                        fed.node_wait_timeout,
                    )
                    self._nodes_seen = len(nodes)
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
        if self._nodes_seen is not None and len(nodes) >= asked:
            self._nodes_seen = None  # the missing nodes came back
        rng = random.Random(f"{self.cfg.seed}:{run_round}")
        return rng.sample(nodes, min(asked, len(nodes)))

    # --- downlink ---------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes and send each the payload its replica needs."""
        run_round = self.round_offset + server_round
        self._global = record_to_state(arrays)
        self._sent = {}
        nodes = self.sample(grid, run_round)
        cached: dict[tuple[str, int], ArrayRecord | None] = {}
        cost: dict[tuple[str, int], int] = {}
        kinds: dict[str, int] = {}
        messages = []
        for node in nodes:
            payload = self.payload_for(node)
            key = (payload, self.base_for(node, payload))
            if key not in cached:
                cached[key] = self.payload_record(*key)
                cost[key] = wire_bytes(cached[key]) if cached[key] is not None else 0
            kinds[payload] = kinds.get(payload, 0) + 1
            conf = ConfigRecord(dict(config) | self.payload_config(*key))
            conf[codec.SERVER_ROUND] = run_round
            conf[codec.LINEAGE] = self.lineage
            conf[codec.VERSION] = self.version
            conf[codec.BASE_VERSION] = key[1]
            conf[codec.PAYLOAD] = payload
            content = RecordDict({CONFIG: conf})
            if cached[key] is not None:
                content[ARRAYS] = cached[key]
            self._sent[node] = cost[key]
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        log(
            INFO,
            "round %d: sent to %d nodes (%s)",
            run_round,
            len(nodes),
            ", ".join(f"{k}: {n}" for k, n in kinds.items()),
        )
        return messages

    # --- uplink -----------------------------------------------------------------------------
    def check_reply(self, msg: Message) -> Reply:
        """Decode one reply against the spec; raises :class:`core.codec.CodecError` naming why.

        Checked: record keys and types, a positive int example count (then capped at
        ``strategy.max_examples``), the model version, and the arrays (:meth:`decode`).
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
        decoded = self.decode(from_record(record, self.spec.float32_bytes))
        return Reply(msg, decoded, min(examples, self.cfg.strategy.max_examples))

    def bound(self, replies: list[Reply]) -> tuple[list[Reply], dict[int, str]]:
        """Bound what each reply contributes; return the bounded replies and what was clipped.

        The weight of a reply is capped at ``strategy.example_cap`` x the round's median claimed
        example count (:func:`server.aggregate.cap_examples`), then :meth:`bound_payloads` clips
        the payloads. The second value maps each clipped node to one line saying what.
        """
        weights, capped = cap_examples([r.examples for r in replies], self.cfg.strategy.example_cap)
        decoded, notes = self.bound_payloads([r.decoded for r in replies])
        bounded, clipped = [], {}
        for reply, payload, weight, cap, note in zip(replies, decoded, weights, capped, notes):
            what = [f"examples {reply.examples} -> {weight}"] if cap else []
            what += [note] if note else []
            if what:
                clipped[reply.node] = "; ".join(what)
            bounded.append(replace(reply, decoded=payload, examples=weight))
        return bounded, clipped

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate replies, then aggregate them, or skip the round when too few are valid."""
        run_round = self.round_offset + server_round
        valid: list[Reply] = []
        failures: dict[str, str] = {}
        rejected = 0
        empty: list[int] = []  # nodes with no training example (a population larger than N)
        refused: dict[str, str] = {}  # nodes whose memory budget fits no batch: why
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                failures[str(node)] = str(msg.error.reason)
                log(WARNING, "round %d: node %d failed: %s", run_round, node, msg.error.reason)
                continue
            metrics = msg.content.metric_records.get(METRICS)
            if metrics is not None and metrics.get(codec.EMPTY) == 1:
                empty.append(node)  # answered without an update: neither valid nor rejected
                continue
            if metrics is not None and metrics.get(codec.REFUSED) == 1:
                refused[str(node)] = _refusal_reason(msg.content, metrics)
                log(WARNING, "round %d: node %d refused: %s", run_round, node, refused[str(node)])
                continue
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
                valid.append(self.check_reply(msg))
            except CodecError as exc:
                rejected += 1
                log(WARNING, "round %d: rejected reply from node %d: %s", run_round, node, exc)
        answered = {r.node for r in valid} | {int(n) for n in failures | refused} | set(empty)
        silent = [n for n in self._sent if n not in answered]
        stats: dict[str, Any] = {
            "sampled": len(self._sent),
            "valid": len(valid),
            "rejected": rejected,
            "clipped": 0,
            "failed": len(failures),
            "empty": len(empty),
            "refused": len(refused),
            "downlink_bytes": float(np.mean(list(self._sent.values()))) if self._sent else 0.0,
        }
        if failures:
            stats["failed_nodes"] = failures
        if refused:
            stats["refused_nodes"] = refused
        for reply in valid:  # their replicas are at the current version now
            self.node_version[reply.node] = self.version
        if len(valid) < self.cfg.federation.min_clients:
            log(
                WARNING,
                "round %d skipped: %d valid replies (%d sampled: %d failed, %d rejected, %d "
                "silent, %d empty, %d refused), fewer than federation.min_clients=%d; the global "
                "model stays at version %d",
                run_round,
                len(valid),
                len(self._sent),
                len(failures),
                rejected,
                len(silent),
                len(empty),
                len(refused),
                self.cfg.federation.min_clients,
                self.version,
            )
            self.round_stats[str(run_round)] = stats | {"skipped": 1, "version": self.version}
            return None, MetricRecord({"skipped": 1, "valid": len(valid)})

        bounded, clipped = self.bound(valid)
        for node, what in clipped.items():
            log(WARNING, "round %d: clipped the reply of node %d: %s", run_round, node, what)
        self.run_round = run_round
        self.extra_stats = {}
        new_global = self.aggregate(bounded)
        self.version += 1
        stats["clipped"] = len(clipped)
        stats |= self.extra_stats
        stats |= {"skipped": 0, "version": self.version} | _reply_stats(bounded)
        stats["train_steps"] = _mean_steps(valid, self.cfg)
        self.round_stats[str(run_round)] = stats
        summary = {k: float(v) for k, v in stats.items() if isinstance(v, int | float)}
        return state_to_record(new_global), MetricRecord(summary)


def _reply_stats(valid: list[Reply]) -> dict[str, Any]:
    """Example-weighted training loss/accuracy, mean uplink bytes, peak memory, train time."""
    weights = [r.examples for r in valid]
    total = float(sum(weights))

    def weighted(key: str) -> float:
        return sum(w * _finite(r.metrics.get(key)) for w, r in zip(weights, valid)) / total

    return {
        "num_examples": int(total),
        "train_loss": weighted(codec.LOSS),
        "train_accuracy": weighted(codec.ACCURACY),
        "uplink_bytes": float(np.mean([wire_bytes(r.msg.content[ARRAYS]) for r in valid])),
        "peak_memory": max(int(_finite(r.metrics.get(codec.PEAK_MEMORY))) for r in valid),
        "train_time": float(np.mean([_finite(r.metrics.get(codec.TRAIN_TIME)) for r in valid])),
    }


def _mean_steps(valid: list[Reply], cfg: ExperimentConfig) -> float:
    """Mean local training steps of the valid replies (``core.energy.local_steps``).

    The claimed example counts are capped as the aggregation weights are
    (:func:`~server.aggregate.cap_examples`, ``strategy.example_cap`` x the round's median, or
    2 x when weights are uniform), so one client's claim cannot inflate the round's energy figure.
    """
    from core.energy.rounds import local_steps  # core.energy imports torch; keep this module light

    t = cfg.train
    counts, _ = cap_examples([r.examples for r in valid], cfg.strategy.example_cap or 2.0)
    steps = [local_steps(n, t.batch_size, t.epochs, t.max_batches) for n in counts]
    return float(np.mean(steps))


def _refusal_reason(content: RecordDict, metrics: MetricRecord) -> str:
    """Return the line a refusing node sent (at most 300 characters), or one from its numbers."""
    record = content.config_records.get(codec.REFUSAL)
    reason = record.get("reason") if record is not None else None
    if isinstance(reason, str) and reason.strip():
        return " ".join(reason.split())[:300]
    need, budget = metrics.get(codec.MEMORY_NEED), metrics.get(codec.MEMORY_BUDGET)
    return f"no batch fits its memory budget ({budget!r} bytes; smallest batch needs {need!r})"


def _finite(value: Any) -> float:
    """Return a client-reported number as a float, or 0 unless it is finite and positive."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
    return float(value) if ok and value > 0 else 0.0
