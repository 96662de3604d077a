"""1-bit rules: clients send ``scale * sign`` updates, the server answers with a 1-bit delta.

Before a rule sees them, :meth:`SignStrategy.bound_payloads` clips every reply's scales to
``strategy.scale_clip`` x the round's median scale per tensor and its real-valued state into a
band around the round's median (``strategy.real_band``); the real state is then aggregated by a
coordinate-wise trimmed mean (``strategy.real_trim``) in every rule. Both rules below turn the
round's bounded :class:`core.codec.SignUpdate` s into one dense step per weight tensor and one
real-valued state (:mod:`server.aggregate`); the shared
:class:`SignStrategy` multiplies the step by ``strategy.server_lr`` and binarizes it again for the
downlink with a server-side error-feedback residual (``scale * sign``, as on the clients), so
every client reproduces the new global model exactly from 1 bit per weight. Each node gets the
smallest payload that brings its replica to the current version: nothing, the last delta, or the
full model (float16) once.
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord
from flwr.supercore import log

from core import codec
from core.codec import (
    BINARY_MAGNITUDE,
    ModelSpec,
    SignUpdate,
    compress,
    decode_update,
    encode_full,
    encode_update,
    pack_signs,
)
from core.config import ExperimentConfig
from glue.records import to_record
from server.aggregate import (
    aligned_mean,
    bound_real,
    clip_scales,
    majority_vote,
    mean_of_signs,
    robust_real,
    vote_steps,
)
from server.strategies.base import BitFedStrategy, Reply, ResumeState
from server.strategies.downlink import DeltaHistory

__all__ = ["SignStrategy", "SignMean", "SignAligned", "SignMajority"]

_MOMENTUM = "momentum/"  # checkpoint key prefix of the server momentum buffer


class SignStrategy(BitFedStrategy):
    """Base of the 1-bit rules: downlink payloads, server error feedback, the broadcast model.

    With a ``last_delta`` in ``resume``, a node this server has no record of is presumed to hold
    ``version - 1`` (the replica every client of the interrupted run got) and is sent that delta,
    not the full model; a client whose replica does not match says so (``need-full``) and gets
    the full model next round.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        spec: ModelSpec,
        *,
        lineage: str,
        resume: ResumeState | None = None,
    ) -> None:
        super().__init__(cfg, spec, lineage=lineage, resume=resume)
        resume = resume or ResumeState()
        self.residual = resume.residual or {
            t.name: np.zeros(t.shape, np.float32) for t in spec.sign
        }
        self._last_delta_arrays = resume.last_delta  # downlink from version - 1 to version
        self.last_delta = to_record(resume.last_delta) if resume.last_delta else None
        self._presumed = resume.version - 1 if resume.last_delta else None
        self._nodes: list[int] = []  # node ids of the updates being aggregated, in order
        self.history = DeltaHistory(
            cfg.federation.delta_history, spec.sign_numel * 2 + spec.real_numel * 2
        )
        if resume.last_delta:
            self.history.add(resume.version, resume.last_delta)
        self.momentum = {
            k.removeprefix(_MOMENTUM): v
            for k, v in (resume.residual or {}).items()
            if k.startswith(_MOMENTUM)
        }
        self.residual = {k: v for k, v in self.residual.items() if not k.startswith(_MOMENTUM)}

    def offer_version_zero(self, digest: str) -> None:
        """Let nodes never heard of build version 0 from the seed (its ``digest``) themselves."""
        self.history.seed_digest = digest

    # --- the rule ---------------------------------------------------------------------------
    def step(
        self, updates: Sequence[SignUpdate], weights: Sequence[float]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Dense weight step and real-valued state from the round's updates."""
        raise NotImplementedError

    # --- payloads ---------------------------------------------------------------------------
    def payload_for(self, node: int) -> str:
        """Return the cheapest exact payload for ``node`` (:mod:`server.strategies.downlink`)."""
        return self.history.choose(self.node_version.get(node, self._presumed), self.version)[0]

    def base_for(self, node: int, payload: str) -> int:
        """Return the version the payload for ``node`` starts from."""
        return self.history.choose(self.node_version.get(node, self._presumed), self.version)[1]

    def payload_config(self, payload: str, base: int) -> dict[str, str]:
        """Return the version-0 digest with a chain from version 0 (the node may build it)."""
        if payload == codec.CHAIN and base == 0 and self.history.seed_digest:
            return {codec.SEED_DIGEST: self.history.seed_digest}
        return {}

    def payload_record(self, payload: str, base: int | None = None) -> ArrayRecord | None:
        """Return the full model in float16, the last delta, a chain of deltas, or nothing."""
        if payload == codec.FULL:
            assert self._global is not None
            return to_record(encode_full(self._global, self.spec))
        if payload == codec.DELTA:
            return self.last_delta
        if payload == codec.CHAIN and base is not None and base < self.version:
            return to_record(self.history.chain_arrays(base, self.version))
        return None

    def decode(self, arrays: dict[str, np.ndarray]) -> SignUpdate:
        """Return a validated sign update."""
        return decode_update(arrays, self.spec)

    def bound_payloads(self, decoded: list[SignUpdate]) -> tuple[list[SignUpdate], list[str]]:
        """Clip scales (:func:`~server.aggregate.clip_scales`) and real state (``bound_real``)."""
        strat = self.cfg.strategy
        scales, n_scales = clip_scales([u.scales for u in decoded], self.spec, strat.scale_clip)
        reals, n_real = bound_real([u.real for u in decoded], self.spec, strat.real_band)
        bounded = [SignUpdate(u.signs, s, r) for u, s, r in zip(decoded, scales, reals)]
        notes = []
        for u, s, k, j in zip(decoded, scales, n_scales, n_real):
            what = []
            if k:
                worst = max(u.scales[n] / max(s[n], 1e-30) for n in s)
                what.append(f"scales of {k} tensor(s), up to {worst:.3g}x the bound")
            if j:
                what.append(f"{j} real-valued state value(s)")
            notes.append(", ".join(what))
        return bounded, notes

    # --- aggregation ------------------------------------------------------------------------
    def aggregate(self, replies: list[Reply]) -> dict[str, np.ndarray]:
        """Apply :meth:`step` x ``server_lr``, binarize it for the downlink, keep the residual."""
        updates = [r.decoded for r in replies]
        self._nodes = [r.node for r in replies]
        step, real = self.step(updates, [float(r.examples) for r in replies])
        real = {k: v.astype(np.float16).astype(np.float32) for k, v in real.items()}  # as sent
        lr, beta = self.cfg.strategy.server_lr, self.cfg.strategy.server_momentum
        step = {k: lr * v for k, v in step.items()}
        if beta > 0:  # server momentum (FedAvgM: Hsu et al., arXiv 1909.06335; Reddi et al.)
            self.momentum = {
                k: beta * self.momentum.get(k, np.zeros_like(v)) + v for k, v in step.items()
            }
            step = self.momentum
        signs, scales, self.residual = compress(step, self.residual, self.spec)
        assert self._global is not None
        for t in self.spec.sign:
            if t.binary:  # packed binary weights: the step's sign is the vote, sent as is
                signs[t.name], scales[t.name] = binary_vote(step[t.name], self._global[t.name])
        down = SignUpdate(signs, scales, {k: v.astype(np.float16) for k, v in real.items()})
        self._last_delta_arrays = encode_update(down, self.spec)
        self.last_delta = to_record(self._last_delta_arrays)
        self.history.add(self.version + 1, self._last_delta_arrays)
        new = dict(self._global)
        down.apply(new, self.spec)  # exactly what every client's replica does
        return new

    def global_model(self, broadcast: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return the aggregate of the clients' updates: the broadcast model plus the residual.

        The server binarizes each aggregated step again for the downlink and keeps what the sign
        could not carry (error feedback), so ``aggregate = broadcast + residual``.
        """
        return {k: v + self.residual[k] if k in self.residual else v for k, v in broadcast.items()}

    @property
    def checkpoint_residual(self) -> dict[str, np.ndarray]:
        """The downlink residual (what the broadcast model still owes the aggregate), momentum."""
        return self.residual | {_MOMENTUM + k: v for k, v in self.momentum.items()}

    @property
    def last_delta_arrays(self) -> dict[str, np.ndarray] | None:
        """Codec arrays of the downlink from ``version - 1`` to ``version``."""
        return self._last_delta_arrays


def binary_vote(step: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, float]:
    """Downlink of a packed binary weight tensor (``lowcost-bop``): the new global weights.

    A binary client's reply carries its trained weights as its signs (docs/method.md §2h), so a
    rule's dense step is a vote over them (``mean``: example- and scale-weighted, ``aligned``:
    trust-weighted, ``majority``: one per client; with ``strategy.server_momentum`` the votes of
    past rounds count too). The new global weight is ``sign(step)``, the current one where the
    vote ties (``step == 0``); it travels absolute, as packed signs with the scale
    ``BINARY_MAGNITUDE`` (:meth:`core.codec.SignUpdate.apply` sets the replica to it).
    """
    vote = np.where(step == 0, np.where(current < 0, -1.0, 1.0), step)
    return pack_signs(vote), BINARY_MAGNITUDE


class SignMean(SignStrategy):
    """Example-weighted mean of the clients' ``scale * sign`` (EF-signSGD, arXiv 1901.09847).

    ``step_k = sum_i w_i s_ik sign_ik / sum_i w_i`` over the clipped scales and capped weights;
    the real-valued state is the trimmed mean.
    """

    def step(self, updates, weights):
        """Weighted mean of scaled signs; trimmed mean of the real state."""
        real = robust_real([u.real for u in updates], self.spec, self.cfg.strategy.real_trim)
        return mean_of_signs(updates, weights, self.spec), real


class SignAligned(SignStrategy):
    """Mean of ``scale * sign`` weighted by agreement with the majority vote (``aligned``).

    ``step_k = sum_i w_i t_i s_ik sign_ik / sum_i w_i t_i`` with the trust ``t_i`` of reply ``i``:
    its agreement with the vote of the other replies over the whole model, relative to the
    round's median agreement and clipped to [0, 1] (:func:`~server.aggregate.aligned_mean`); the
    real-valued state is the trimmed mean. Replies with zero trust are counted per round
    (``distrusted``) and named in one line.
    """

    def step(self, updates, weights):
        """Trust-weighted mean of scaled signs; trimmed mean of the real state."""
        step, trust = aligned_mean(updates, weights, self.spec)
        zero = [i for i, t in enumerate(trust) if t == 0.0]
        self.extra_stats["distrusted"] = len(zero)
        if zero:
            nodes = ", ".join(str(self._nodes[i]) for i in zero)
            log(INFO, "round %d: no trust in node(s) %s", self.run_round, nodes)
        real = robust_real([u.real for u in updates], self.spec, self.cfg.strategy.real_trim)
        return step, real


class SignMajority(SignStrategy):
    """signSGD with majority vote (Bernstein et al., arXiv 1810.05291): one vote per client.

    ``strategy.vote=margin`` (default): ``step_kj = a_k * (sum_i sign_ikj) / n``, each coordinate
    moved by the vote's margin; ``strategy.vote=sign``: ``step_kj = a_k * sign(sum_i sign_ikj)``
    (0 on a tie). Neither example counts nor scales carry weight; the real-valued state is the
    trimmed mean. The step ``a_k`` is sized from the round (:func:`~server.aggregate.vote_steps`:
    the median scale, times the mean vote margin for ``sign``, which follows the clients'
    learning-rate schedule as their scales do) or, with ``strategy.majority_step > 0``, is that
    step on the clients' schedule: ``round_lr(majority_step, round)``.
    """

    def step(self, updates, weights):
        """Majority vote of the signs; trimmed mean of the real state."""
        strat = self.cfg.strategy
        if strat.majority_step > 0:
            fixed = self.cfg.federation.round_lr(strat.majority_step, self.run_round)
            steps = {t.name: fixed for t in self.spec.sign}
        else:
            steps = vote_steps(updates, self.spec, strat.vote)
        real = robust_real([u.real for u in updates], self.spec, strat.real_trim)
        return majority_vote(updates, self.spec, steps, strat.vote), real
