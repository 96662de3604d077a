"""Aggregation rules for 1-bit client updates (pure numpy; the strategy calls these).

Each rule turns the clients' decoded :class:`core.codec.SignUpdate` s into one dense float32 step
per weight tensor and one real-valued state; the server then binarizes that step again for the
downlink (:func:`core.codec.compress`, with its own error-feedback residual).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.codec import ModelSpec, SignUpdate, unpack_signs

__all__ = ["mean_of_signs", "majority_vote", "mean_real", "median_real"]


def mean_of_signs(
    updates: Sequence[SignUpdate], weights: Sequence[float], spec: ModelSpec
) -> dict[str, np.ndarray]:
    """Example-weighted mean of the clients' scaled signs.

    ``step_k = sum_i w_i * s_ik * sign_ik / sum_i w_i`` (EF-signSGD aggregation, Karimireddy et
    al., arXiv 1901.09847; FedAvg weighting, McMahan et al., arXiv 1602.05629).
    """
    total = float(sum(weights))
    out = {}
    for t in spec.sign:
        acc = np.zeros(t.numel, dtype=np.float32)
        for u, w in zip(updates, weights):
            acc += (w / total) * u.scales[t.name] * unpack_signs(u.signs[t.name], t.numel)
        out[t.name] = acc.reshape(t.shape)
    return out


def majority_vote(
    updates: Sequence[SignUpdate], spec: ModelSpec, step: float
) -> dict[str, np.ndarray]:
    """Vote as signSGD does (majority): ``step * sign(sum_i sign_ik)``, 0 on a tie.

    One vote per client regardless of its example count or scale (Bernstein et al., "signSGD
    with Majority Vote is Communication Efficient and Fault Tolerant", arXiv 1810.05291), which
    bounds what a minority of hostile clients can do.
    """
    out = {}
    for t in spec.sign:
        votes = np.zeros(t.numel, dtype=np.int32)
        for u in updates:
            votes += unpack_signs(u.signs[t.name], t.numel).astype(np.int32)
        out[t.name] = (step * np.sign(votes)).astype(np.float32).reshape(t.shape)
    return out


def mean_real(
    updates: Sequence[SignUpdate], weights: Sequence[float], spec: ModelSpec
) -> dict[str, np.ndarray]:
    """Example-weighted mean of the float16 real-valued state, computed in float32."""
    total = float(sum(weights))
    return {
        t.name: sum(
            (w / total) * u.real[t.name].astype(np.float32) for u, w in zip(updates, weights)
        )
        .astype(np.float16)
        .astype(np.float32)
        for t in spec.real
    }


def median_real(updates: Sequence[SignUpdate], spec: ModelSpec) -> dict[str, np.ndarray]:
    """Coordinate-wise median of the real-valued state (robust companion of the majority vote)."""
    return {
        t.name: np.median(np.stack([u.real[t.name].astype(np.float32) for u in updates]), axis=0)
        .astype(np.float16)
        .astype(np.float32)
        for t in spec.real
    }
