"""The float32 baseline: Flower's own FedAvg average behind the same sampling, checks, bounds."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from core import codec
from core.codec import ARRAYS, METRICS, decode_float32, encode_float32
from glue.records import record_to_state, state_to_record, to_record
from server.aggregate import bound_real, robust_real
from server.strategies.base import BitFedStrategy, Reply

__all__ = ["FedAvgBaseline"]


class FedAvgBaseline(BitFedStrategy):
    """Float32 models both ways, averaged by Flower's ``aggregate_arrayrecords`` (McMahan et al.).

    ``w = sum_i n_i w_i / sum_i n_i`` over the (capped) example counts ``n_i`` for the weight
    tensors, each reply's change ``w_i - g`` of a weight tensor first clipped to
    ``strategy.scale_clip`` x the round's median l2 norm of that change (the float32 analogue of
    the 1-bit rules' scale clip); the real-valued state is bounded and trimmed-mean aggregated as
    in the 1-bit rules. What the 1-bit rules are measured against.
    """

    def payload_for(self, node: int) -> str:
        """Return the float32 state (always)."""
        return codec.FLOAT32

    def payload_record(self, payload: str, base: int | None = None) -> ArrayRecord | None:
        """Flower's numpy arrays of the global model."""
        assert self._global is not None
        return to_record(encode_float32(self._global, self.spec), raw=False)

    def decode(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return a validated float32 state."""
        return decode_float32(arrays, self.spec)

    def bound_payloads(
        self, decoded: list[dict[str, np.ndarray]]
    ) -> tuple[list[dict[str, np.ndarray]], list[str]]:
        """Clip each weight tensor's change to ``scale_clip`` x the median norm; bound real state.

        ``w_i <- g + (w_i - g) * min(1, c * median_i |w_i - g| / |w_i - g|)`` per weight tensor.
        """
        assert self._global is not None
        strat = self.cfg.strategy
        out = [dict(d) for d in decoded]
        clipped = [0] * len(decoded)
        for t in self.spec.sign:
            g = self._global[t.name]
            norms = [float(np.linalg.norm(d[t.name] - g)) for d in decoded]
            bound = strat.scale_clip * float(np.median(norms))
            for i, norm in enumerate(norms):
                if norm > bound:
                    factor = np.float32(bound / norm)
                    out[i][t.name] = (g + (decoded[i][t.name] - g) * factor).astype(np.float32)
                    clipped[i] += 1
        reals, n_real = bound_real(decoded, self.spec, strat.real_band)
        for o, r in zip(out, reals):
            o.update(r)
        notes = [
            ", ".join(
                ([f"changes of {k} tensor(s)"] if k else [])
                + ([f"{j} real-valued state value(s)"] if j else [])
            )
            for k, j in zip(clipped, n_real)
        ]
        return out, notes

    def aggregate(self, replies: list[Reply]) -> dict[str, np.ndarray]:
        """Flower's example-weighted average of the weight tensors; trimmed mean of the rest."""
        contents = [
            RecordDict(
                {
                    ARRAYS: state_to_record({t.name: r.decoded[t.name] for t in self.spec.sign}),
                    METRICS: MetricRecord({codec.NUM_EXAMPLES: r.examples}),
                }
            )
            for r in replies
        ]
        new = record_to_state(aggregate_arrayrecords(contents, codec.NUM_EXAMPLES))
        real = robust_real([r.decoded for r in replies], self.spec, self.cfg.strategy.real_trim)
        return new | {t.name: real[t.name] for t in self.spec.real}
