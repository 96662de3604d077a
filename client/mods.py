"""Flower mods of the ClientApp: what every reply reports besides the update itself.

A mod wraps the handler (``mod(msg, context, call_next) -> reply``), so the handler stays
decode -> core -> encode and the measuring lives here.
"""

from __future__ import annotations

import time

from flwr.app import Context, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable

from core import codec
from core.memory.process import process_peak_rss_bytes, reset_process_peak
from glue.records import wire_bytes

__all__ = ["round_footprint"]


def round_footprint(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Add this round's peak memory, handler time and bytes to the reply's metrics.

    ``peak-memory``: the process's resident-set high-water mark, reset before the handler (so it
    is this round's, not the process's); ``train-time``: seconds in the handler; ``bytes-sent`` /
    ``bytes-received``: Flower's serialized size of the reply's and the message's arrays.
    """
    reset_process_peak()
    started = time.perf_counter()
    reply = call_next(msg, context)
    if reply.has_error() or codec.METRICS not in reply.content.metric_records:
        return reply
    metrics: MetricRecord = reply.content[codec.METRICS]
    if metrics.get(codec.NEED_FULL) == 1:
        return reply
    received = msg.content.array_records.get(codec.ARRAYS)
    sent = reply.content.array_records.get(codec.ARRAYS)
    metrics[codec.PEAK_MEMORY] = process_peak_rss_bytes()
    metrics[codec.TRAIN_TIME] = float(time.perf_counter() - started)
    metrics[codec.BYTES_SENT] = wire_bytes(sent) if sent is not None else 0
    metrics[codec.BYTES_RECEIVED] = wire_bytes(received) if received is not None else 0
    return reply
