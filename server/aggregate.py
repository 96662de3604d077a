"""Aggregation rules and the bounds that keep one reply from dominating them (pure numpy).

The rules turn the clients' decoded :class:`core.codec.SignUpdate` s into one dense float32 step
per weight tensor (the server then binarizes it again for the downlink, :func:`core.codec.compress`,
with its own error-feedback residual). Before any rule sees a reply, the strategy bounds every
magnitude the reply carries relative to the round's robust statistics (docs/method.md §10):

* **scale** of a weight tensor: ``s_ik <- min(s_ik, c * median_i s_ik)`` (:func:`clip_scales`);
* **weight** (claimed examples): ``n_i <- min(n_i, k * median_i n_i)`` (:func:`cap_examples`);
* **real-valued state** (batch-norm statistics and shifts, biases): each coordinate clipped into
  a band around the round's coordinate-wise median (:func:`bound_real`), then aggregated by a
  coordinate-wise trimmed mean (:func:`trimmed_mean`).

A hostile reply can then move the aggregate no further than an honest reply at the edge of the
round's honest spread could (Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", arXiv 1803.01498, for the coordinate-wise median and trimmed mean).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from core.codec import ModelSpec, SignUpdate, TensorSpec, unpack_signs
from core.names import VoteKind

__all__ = [
    "POSITIVE_STATE",
    "is_positive_state",
    "mean_of_signs",
    "aligned_mean",
    "majority_vote",
    "vote_steps",
    "clip_scales",
    "cap_examples",
    "bound_real",
    "trimmed_mean",
    "robust_real",
]

#: Name endings of real-valued state that is a spread (a variance or a mean absolute deviation):
#: positive by construction, so it is bounded on a log scale.
POSITIVE_STATE = ("running_var", "running_sigma")
_F16_REL = 2.0**-10  # float16's relative resolution (10 mantissa bits)
_F16_TINY = 2.0**-14  # float16's smallest normal number


def is_positive_state(tensor: TensorSpec) -> bool:
    """Return whether ``tensor`` is a batch-norm spread (``running_var``/``running_sigma``)."""
    return tensor.name.endswith(POSITIVE_STATE)


# --- rules ---------------------------------------------------------------------------------------
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


def aligned_mean(
    updates: Sequence[SignUpdate], weights: Sequence[float], spec: ModelSpec
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Mean of ``scale * sign`` with each reply weighted by its agreement with the others' vote.

    For reply ``i``, the vote of the *other* replies on each weight coordinate is
    ``v_ij = sign(sum_{l != i} sign_lj)`` (0 on a tie) and its agreement over the whole model is
    ``a_i = (1/N) sum_j sign_ij v_ij`` (``N`` the number of sign coordinates of all tensors, so
    each tensor counts by its size). Its trust is relative to the round's median agreement
    ``m = median_i a_i``: ``t_i = clip(a_i / m, 0, 1)`` (``max(a_i, 0)`` when ``m <= 0``), and
    ``step_k = sum_i w_i t_i s_ik sign_ik / sum_i w_i t_i`` per tensor (zero where no reply is
    trusted). The trust score is FLTrust's ReLU-clipped agreement (Cao et al., arXiv 2012.13995)
    with a coordinate-wise majority (Bernstein et al., arXiv 1810.05291) as the reference, so it
    needs no server data.

    Two choices make it hold on label-skewed data, where honest replies are weakly correlated:

    - *The reference leaves the reply out.* A reply's own sign is one of the n votes, and with
      weakly correlated replies that alone makes every reply agree with the full vote by about
      1/4 for n = 10, a reply that inverts its signs included.
    - *One trust per reply, over the whole model.* Per tensor, an honest reply can disagree
      with the others on the class-specific tensors (the last layer) so that its inverse agrees
      there: a sign flipper then kept weight in exactly the tensors that decide the classes.
      Over the whole model an inverted reply's agreement is negative. The price: a reply that
      is honest in the large tensors and hostile only in a small one keeps its weight there
      (bounded by ``strategy.scale_clip`` like any reply's).

    Dividing by the median keeps every reply that agrees at least as much as the typical one at
    full weight (the rule is then the plain mean on clean rounds), and the median cannot be
    pulled past an honest agreement while fewer than half the replies are hostile. Memory: the
    vote counts of the whole model (int16 per coordinate) plus one tensor at a time. Returns the
    step and each reply's trust.
    """
    count_dtype = np.int16 if len(updates) < np.iinfo(np.int16).max else np.int32
    votes = {t.name: _vote_counts(updates, t, count_dtype) for t in spec.sign}
    total_numel = sum(t.numel for t in spec.sign)
    agreement = [
        sum(_agreement_with_others(u.signs[t.name], votes[t.name], t.numel) for t in spec.sign)
        / max(total_numel, 1)
        for u in updates
    ]
    typical = float(np.median(agreement)) if agreement else 0.0
    trust = [min(max(a / typical, 0.0), 1.0) if typical > 0 else max(a, 0.0) for a in agreement]
    out = {}
    for t in spec.sign:
        acc = np.zeros(t.numel, dtype=np.float32)
        total = 0.0
        for u, w, trust_i in zip(updates, weights, trust):
            if trust_i > 0:
                acc += (w * trust_i * u.scales[t.name]) * unpack_signs(u.signs[t.name], t.numel)
                total += w * trust_i
        out[t.name] = (acc / total if total > 0 else np.zeros_like(acc)).reshape(t.shape)
    return out, trust


def _vote_counts(
    updates: Sequence[SignUpdate], t: TensorSpec, dtype: type = np.int32
) -> np.ndarray:
    """``sum_i sign_ij`` over the replies, per coordinate of weight tensor ``t``."""
    votes = np.zeros(t.numel, dtype=dtype)
    for u in updates:
        votes += unpack_signs(u.signs[t.name], t.numel).astype(dtype)
    return votes


def _agreement_with_others(packed: np.ndarray, votes: np.ndarray, numel: int) -> float:
    """``sum_j sign_j * sign(votes_j - sign_j)``: summed agreement with the others' vote."""
    if numel == 0:
        return 0.0
    signs = unpack_signs(packed, numel)
    others = np.sign(votes.astype(np.int32) - signs.astype(np.int32)).astype(np.float32)
    return float(np.dot(signs, others))


def majority_vote(
    updates: Sequence[SignUpdate], spec: ModelSpec, steps: dict[str, float], vote: str = "margin"
) -> dict[str, np.ndarray]:
    """Vote as signSGD does (majority), one vote per client regardless of its count or scale.

    With ``V_kj = sum_i sign_ikj`` the votes of ``n`` clients on coordinate ``j`` of tensor
    ``k`` and ``a_k = steps[k]``:

    - ``vote="sign"``: ``a_k * sign(V_kj)`` (0 on a tie), signSGD with majority vote (Bernstein
      et al., "signSGD with Majority Vote is Communication Efficient and Fault Tolerant", arXiv
      1810.05291): every coordinate moves by the same step in the majority's direction.
    - ``vote="margin"``: ``a_k * V_kj / n``, the same direction moved by the vote's margin, so a
      unanimous coordinate moves by ``a_k`` and a near-tie (where the clients' signs are mostly
      noise) hardly moves. A minority of ``f`` clients changes any coordinate by at most
      ``2 f a_k / n``, where under ``sign`` it can turn a near-tie by ``2 a_k``.
    """
    n = max(len(updates), 1)
    out = {}
    for t in spec.sign:
        votes = _vote_counts(updates, t)
        direction = votes / n if vote == VoteKind.MARGIN else np.sign(votes)
        out[t.name] = (steps[t.name] * direction).astype(np.float32).reshape(t.shape)
    return out


def vote_steps(
    updates: Sequence[SignUpdate], spec: ModelSpec, vote: str = "margin"
) -> dict[str, float]:
    """Size a majority vote's step per weight tensor from robust statistics of the round.

    ``vote="margin"``: ``step_k = median_i s_ik``, the median client scale, which follows the
    clients' learning-rate schedule (each client's scale is the mean magnitude of its own local
    change); the vote then moves each coordinate as the unweighted mean of ``median-scale *
    sign`` would. ``vote="sign"``: ``step_k = median_i s_ik * mean_j |(1/n) sum_i sign_ikj|``, the
    median scale times the mean vote margin, so the vote moves the tensor as far, in l1, as that
    mean would, but every coordinate by the same amount. A minority of ``f`` clients changes a
    margin by at most ``f / n`` and cannot move the median past an honest scale.
    """
    n = len(updates)
    out = {}
    for t in spec.sign:
        median = float(np.median([u.scales[t.name] for u in updates]))
        if vote == VoteKind.MARGIN:
            out[t.name] = median
            continue
        votes = _vote_counts(updates, t)
        out[t.name] = median * (float(np.mean(np.abs(votes))) / n if t.numel else 0.0)
    return out


# --- bounds --------------------------------------------------------------------------------------
def clip_scales(
    scales: Sequence[dict[str, float]], spec: ModelSpec, clip: float
) -> tuple[list[dict[str, float]], list[int]]:
    """Clip each reply's scale per weight tensor to ``clip`` x the round's median scale.

    ``s_ik <- min(s_ik, clip * median_i s_ik)``. Returns the clipped scales and, per reply, how
    many of its tensors were clipped.
    """
    bound = {t.name: clip * float(np.median([s[t.name] for s in scales])) for t in spec.sign}
    out, counts = [], []
    for s in scales:
        over = [t.name for t in spec.sign if s[t.name] > bound[t.name]]
        out.append({k: min(v, bound[k]) if k in over else v for k, v in s.items()})
        counts.append(len(over))
    return out, counts


def cap_examples(examples: Sequence[int], cap: float) -> tuple[list[int], list[bool]]:
    """Cap each reply's weight at ``cap`` x the round's median claimed example count.

    ``n_i <- min(n_i, floor(cap * median_i n_i))`` (at least 1); ``cap = 0`` gives every reply the
    median count (uniform weights: no claim matters, so none counts as capped). Returns the
    weights and which replies were capped.
    """
    median = float(np.median(examples))
    if cap == 0:
        return [max(1, int(median))] * len(examples), [False] * len(examples)
    bound = max(1, math.floor(cap * median))
    weights = [min(n, bound) for n in examples]
    return weights, [w != n for w, n in zip(weights, examples)]


def bound_real(
    reals: Sequence[dict[str, np.ndarray]], spec: ModelSpec, band: float
) -> tuple[list[dict[str, np.ndarray]], list[int]]:
    """Clip each reply's real-valued state into a plausible band around the round's median.

    Per coordinate ``j`` with round median ``m_j`` and median absolute deviation
    ``d_j = median_i |x_ij - m_j|``, a value is kept within
    ``m_j +- band * (max(d_j, D) + tol_j)``, with ``D = mean_j d_j`` the tensor's typical
    spread (a floor: with few replies one coordinate's MAD can be near zero by chance; each
    ``d_j``, and so ``D``, stays within the honest spread while fewer than half are hostile) and
    ``tol_j = 2^-10 |m_j| + 2^-14`` (float16's resolution, so equal honest values leave room).
    A spread (:func:`is_positive_state`: a variance, an l1 deviation) is bounded the same way on
    a log scale, i.e. within a factor ``exp(band * (max(d_j, D) + 2^-10))`` of the median with
    ``d_j`` the MAD of ``log x``; a value <= 0, which no honest device can hold, goes to the
    lower bound. Returns the clipped states (float32) and, per reply, how many values were
    clipped.
    """
    out: list[dict[str, np.ndarray]] = [{} for _ in reals]
    counts = [0] * len(reals)
    for t in spec.real:
        x = np.stack([np.asarray(r[t.name], dtype=np.float32) for r in reals])
        if is_positive_state(t):
            y = np.log(np.maximum(x, _F16_TINY**2))
            lo, hi = _band(y, band, tol=np.full(y.shape[1:], _F16_REL, np.float32))
            clipped = np.exp(np.clip(y, lo, hi)).astype(np.float32)
            bad = (x <= 0) | (y < lo) | (y > hi)
        else:
            m = np.median(x, axis=0)
            lo, hi = _band(x, band, tol=_F16_REL * np.abs(m) + _F16_TINY)
            clipped = np.clip(x, lo, hi).astype(np.float32)
            bad = (x < lo) | (x > hi)
        clipped = np.where(bad, clipped, x)  # values inside the band stay bit-exact
        for i in range(len(reals)):
            out[i][t.name] = clipped[i]
            counts[i] += int(bad[i].sum())
    return out, counts


def _band(x: np.ndarray, band: float, tol: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``median +- band * (max(MAD, mean MAD) + tol)`` along axis 0."""
    m = np.median(x, axis=0)
    d = np.median(np.abs(x - m), axis=0)
    half = band * (np.maximum(d, np.mean(d)) + tol)
    return m - half, m + half


def trimmed_mean(x: np.ndarray, trim: float) -> np.ndarray:
    """Coordinate-wise trimmed mean along axis 0 (Yin et al., arXiv 1803.01498).

    Drops the ``b = min(ceil(trim * n), (n - 1) // 2)`` largest and smallest values of each
    coordinate and averages the rest: ``trim = 0.2`` and ``n = 10`` drop 2 each side; ``n = 3``
    gives the median; ``trim = 0`` the mean.
    """
    n = x.shape[0]
    b = min(math.ceil(trim * n - 1e-9), (n - 1) // 2)
    if b <= 0:
        return x.mean(axis=0)
    return np.sort(x, axis=0)[b : n - b].mean(axis=0)


def robust_real(
    reals: Sequence[dict[str, np.ndarray]], spec: ModelSpec, trim: float
) -> dict[str, np.ndarray]:
    """Coordinate-wise trimmed mean (:func:`trimmed_mean`) of each real-valued tensor, float32."""
    return {
        t.name: trimmed_mean(np.stack([np.asarray(r[t.name], np.float32) for r in reals]), trim)
        for t in spec.real
    }
