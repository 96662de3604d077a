"""Flower ClientApp: decode the global model, train locally with :mod:`core`, send 1 bit per weight.

Each round a client (1) brings its on-disk replica of the global model to the server's version
(full model once, then binarized deltas), (2) trains it on its own data, (3) sends the sign of
the change plus one scale per weight tensor, with error feedback, and its batch-norm state as
float16 (:mod:`client.exchange`). ``strategy=fedavg`` swaps (1) and (3) for Flower's float32
state. Peak memory, time and bytes are added by a mod (:mod:`client.mods`). A client without a
training example (a population larger than the dataset) answers ``empty`` = 1 with no arrays and
touches no state. A device whose node config declares ``memory-budget`` trains with the largest
batch that fits it (:mod:`client.budget`), or refuses the round (``refused`` = 1, no arrays)
when none does; every trained reply names its ``batch-size``. See the README's "Federation"
section for exactly what travels.
"""

from __future__ import annotations

from dataclasses import replace

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.budget import budget_of, choose_batch
from client.exchange import receive, reply_arrays
from client.hostile import hostile_reply
from client.mods import round_footprint
from client.state import client_state_dir
from core import codec, federated
from core.codec import ARRAYS, METRICS, REFUSAL, model_spec
from core.config import from_run_config

__all__ = ["app"]

app = ClientApp(mods=[round_footprint, hostile_reply])  # hostile: no-op unless federation.attack


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One federated round on this device: sync replica -> local training -> 1-bit update."""
    cfg = from_run_config(context.run_config)
    federated.set_threads(cfg)
    data = federated.local_data(cfg, context.node_config)
    if len(data.train_idx) == 0:  # a population larger than the dataset: nothing to train on
        empty = {codec.NUM_EXAMPLES: 0, codec.EMPTY: 1}
        return Message(RecordDict({METRICS: MetricRecord(empty)}), reply_to=msg)
    budget = budget_of(context.node_config)
    if budget is not None:  # the device's memory budget caps the batch, or rules the round out
        shape = tuple(data.dataset.images.shape[1:])
        choice = choose_batch(
            cfg, budget, shape, data.dataset.num_classes, len(data.train_idx),
            cache_dir=client_state_dir(cfg, context.node_config),
        )  # fmt: skip
        if choice.refused:
            refusal = {codec.NUM_EXAMPLES: 0, codec.REFUSED: 1, codec.MEMORY_BUDGET: budget,
                       codec.MEMORY_NEED: choice.need_bytes}  # fmt: skip
            content = {
                METRICS: MetricRecord(refusal),
                REFUSAL: ConfigRecord({"reason": choice.reason}),
            }
            return Message(RecordDict(content), reply_to=msg)
        cfg = replace(cfg, train=replace(cfg.train, batch_size=choice.batch))
    model = federated.new_model(cfg, data.dataset)
    spec = model_spec(model)

    seed = federated.version_zero(model, spec)  # what the server calls version 0
    start = receive(msg, spec, cfg, dict(context.node_config), seed)  # decode
    if start.weights is None:  # no usable replica: ask for the full model, send no update
        need = {codec.NUM_EXAMPLES: 0, codec.MODEL_VERSION: start.have_version, codec.NEED_FULL: 1}
        return Message(RecordDict({METRICS: MetricRecord(need)}), reply_to=msg)

    federated.load_state(model, start.weights, spec)  # core
    moments = start.state.moments if start.state is not None else None  # lowcost-bop's Bop
    server_round = int(msg.content[codec.CONFIG][codec.SERVER_ROUND])
    result = federated.fit_local(model, data, cfg, server_round, moments)

    metrics = {  # encode
        codec.NUM_EXAMPLES: int(result.num_examples),
        codec.LOSS: float(result.loss),
        codec.ACCURACY: float(result.accuracy),
        codec.MODEL_VERSION: int(msg.content[codec.CONFIG][codec.VERSION]),
        codec.BATCH_SIZE: int(cfg.train.batch_size),
    }
    arrays = reply_arrays(model, spec, start, cfg)
    return Message(RecordDict({ARRAYS: arrays, METRICS: MetricRecord(metrics)}), reply_to=msg)
