"""The client side of the wire: what a round's message means for this device, and its reply.

:func:`receive` turns the server's message into the model state to train from — Flower's float32
state for the ``fedavg`` baseline, or this device's replica brought to the server's version (full
model once, then 1-bit deltas, :func:`client.state.sync_replica`). :func:`reply_arrays` encodes
what training changed: the float32 state, or ``sign(change + residual)`` with one scale per
weight tensor and the float16 real-valued state, keeping the new error-feedback residual.
With ``federation.compact_state`` the saved state holds no replica: :func:`receive` rebuilds it
from what the server published in the shared state folder (:mod:`core.replica_store`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Message

from client.state import (
    ClientState,
    SeedModel,
    client_identity,
    client_state_dir,
    state_path,
    sync_replica,
)
from core import codec, federated
from core.codec import FLOAT32, ModelSpec, SignUpdate, compress, decode_float32, encode_update
from core.config import ExperimentConfig
from core.replica_store import ReplicaStore, shared_state_dir
from glue.records import from_record, to_record

__all__ = ["Start", "receive", "reply_arrays"]


@dataclass
class Start:
    """Where this round's training starts.

    ``weights``: float32 state by tensor name; ``state``/``path``: the persistent replica and its
    file (``None`` for the fedavg baseline); ``have_version``: the replica version this device
    holds when it cannot use the payload (``weights`` is then ``None``: it needs the full model).
    """

    weights: dict[str, np.ndarray] | None
    state: ClientState | None = None
    path: Path | None = None
    have_version: int = -1


def receive(
    msg: Message,
    spec: ModelSpec,
    cfg: ExperimentConfig,
    node_config: dict,
    seed_state: dict[str, np.ndarray] | None = None,
) -> Start:
    """Decode the server's message against this device's own ``spec`` and replica.

    ``seed_state`` is this device's version 0 (its freshly built model): a ``chain`` payload
    from version 0 starts from it when the server's digest matches.
    """
    conf = msg.content[codec.CONFIG]
    payload, version = str(conf[codec.PAYLOAD]), int(conf[codec.VERSION])
    received = msg.content.array_records.get(codec.ARRAYS)
    arrays = from_record(received, spec.float32_bytes) if received is not None else None
    if payload == FLOAT32:  # the fedavg baseline: Flower's float32 state both ways
        return Start(decode_float32(arrays or {}, spec))
    path = state_path(client_state_dir(cfg, node_config), client_identity(node_config))
    lineage = str(conf[codec.LINEAGE])
    held = ClientState.load(path, lineage)
    if held is not None and cfg.federation.compact_state and not held.replica:
        store = ReplicaStore(shared_state_dir(cfg))
        replica = store.replica(lineage, held.version, held.origin, spec)
        held.replica, held.version = (replica, held.version) if replica else ({}, -1)
    have = held.version if held is not None else -1
    base = int(conf[codec.BASE_VERSION])
    digest = conf.get(codec.SEED_DIGEST)
    seed = SeedModel(seed_state, str(digest)) if seed_state is not None and digest else None
    state = sync_replica(held, payload, lineage, version, base, arrays, spec, seed)
    if state is None:
        return Start(None, None, path, have)
    return Start(state.replica, state, path)


def reply_arrays(
    model: torch.nn.Module, spec: ModelSpec, start: Start, cfg: ExperimentConfig
) -> ArrayRecord:
    """Return the reply's arrays; a sign reply also updates and saves the device's residual."""
    local = federated.state_of(model, spec)
    if start.state is None:
        return to_record(codec.encode_float32(local, spec), raw=False)
    delta = {t.name: local[t.name] - start.weights[t.name] for t in spec.sign}
    ef = cfg.strategy.error_feedback
    residual = start.state.residual if ef else None
    if residual is not None and any(
        t.name not in residual or residual[t.name].shape != t.shape for t in spec.sign
    ):
        residual = None
    signs, scales, new_residual = compress(delta, residual, spec)
    start.state.residual = new_residual if ef else None
    start.state.save(start.path, compact=cfg.federation.compact_state)
    update = SignUpdate(signs, scales, {t.name: local[t.name] for t in spec.real})
    return to_record(encode_update(update, spec))
