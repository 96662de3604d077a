"""Flower ClientApp: decode the global model, train locally with :mod:`core`, send 1 bit per weight.

Each round a client (1) brings its on-disk replica of the global model to the server's version
(full model once, then binarized deltas), (2) trains it on its own data, (3) sends the sign of
the change plus one scale per weight tensor, with error feedback, and its batch-norm state as
float16. ``strategy.name = fedavg`` swaps (1) and (3) for Flower's float32 state. See the
README's "Federation" section for exactly what travels.
"""

from __future__ import annotations

import time

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client import task
from client.records import from_record, to_record, wire_bytes
from client.state import ClientState, client_identity, state_path, sync_replica
from core import codec
from core.codec import (
    ARRAYS,
    CONFIG,
    FLOAT32,
    METRICS,
    SignUpdate,
    compress,
    decode_float32,
    encode_float32,
    encode_update,
    model_spec,
)
from core.config import ExperimentConfig, from_run_config
from core.memory import process_peak_rss_bytes, reset_process_peak

__all__ = ["app"]

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One federated round on this device: sync replica -> local training -> 1-bit update."""
    cfg = from_run_config(context.run_config)
    task.set_threads(cfg)
    reset_process_peak()  # so PEAK_MEMORY is this round's peak, not the process's
    conf = msg.content[CONFIG]
    payload, version = str(conf[codec.PAYLOAD]), int(conf[codec.VERSION])
    data = task.local_data(cfg, context.node_config)
    model = task.new_model(cfg, data.dataset)
    spec = model_spec(model)
    received = msg.content.array_records.get(ARRAYS)
    arrays = from_record(received, spec.float32_bytes) if received is not None else None

    if payload == FLOAT32:  # the fedavg baseline: Flower's float32 state both ways
        start, state, path = decode_float32(arrays or {}, spec), None, None
    else:
        path = state_path(task.client_state_dir(cfg, context.node_config), _identity(context))
        lineage = str(conf[codec.LINEAGE])
        state = sync_replica(
            ClientState.load(path, lineage),
            payload,
            lineage,
            version,
            int(conf[codec.BASE_VERSION]),
            arrays,
            spec,
        )
        if state is None:
            return _need_full(msg, path, lineage)
        start = state.replica

    task.load_state(model, start, spec)
    t0 = time.perf_counter()
    result = task.fit_local(model, data, cfg, int(conf[codec.SERVER_ROUND]))
    train_time = time.perf_counter() - t0
    out_arrays = _encode_reply(model, spec, start, state, cfg)
    if state is not None:
        state.save(path)
    metrics = {
        codec.NUM_EXAMPLES: int(result.num_examples),
        codec.LOSS: float(result.loss),
        codec.ACCURACY: float(result.accuracy),
        codec.BYTES_SENT: wire_bytes(out_arrays),
        codec.BYTES_RECEIVED: wire_bytes(received) if received is not None else 0,
        codec.PEAK_MEMORY: process_peak_rss_bytes(),
        codec.TRAIN_TIME: float(train_time),
        codec.MODEL_VERSION: version,
    }
    return Message(RecordDict({ARRAYS: out_arrays, METRICS: MetricRecord(metrics)}), reply_to=msg)


def _encode_reply(model, spec, start, state: ClientState | None, cfg: ExperimentConfig):
    """Float32 state (fedavg) or sign(change + residual) with scales, residual kept in ``state``."""
    local = task.state_of(model, spec)
    if state is None:
        return to_record(encode_float32(local, spec), raw=False)
    delta = {t.name: local[t.name] - start[t.name] for t in spec.sign}
    residual = state.residual if cfg.strategy.error_feedback else None
    if residual is not None and any(t.name not in residual for t in spec.sign):
        residual = None
    signs, scales, new_residual = compress(delta, residual, spec)
    state.residual = new_residual if cfg.strategy.error_feedback else None
    update = SignUpdate(signs, scales, {t.name: local[t.name] for t in spec.real})
    return to_record(encode_update(update, spec))


def _need_full(msg: Message, path, lineage: str) -> Message:
    """Reply without an update: this client has no usable replica (the server sends it whole)."""
    have = ClientState.load(path, lineage)
    metrics = {
        codec.NUM_EXAMPLES: 0,
        codec.MODEL_VERSION: have.version if have is not None else -1,
        codec.NEED_FULL: 1,
    }
    return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)


def _identity(context: Context) -> str:
    return client_identity(dict(context.node_config))
