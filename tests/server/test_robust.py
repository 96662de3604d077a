"""Robust bounds: literal mock replies, hand-computed aggregates (FedMedian-style).

Each hostile reply below is well-formed (the codec accepts it); the bounds must make it change
the aggregate exactly as an honest reply at the edge of the round's spread would.
"""

import numpy as np
import pytest
from flwr.app import ConfigRecord

from core import codec
from core.codec import ModelSpec, SignUpdate, TensorSpec, pack_signs
from core.config import ExperimentConfig, FederationConfig, StrategyConfig
from glue.records import record_to_state, state_to_record
from server.aggregate import (
    aligned_mean,
    bound_real,
    cap_examples,
    clip_scales,
    majority_vote,
    trimmed_mean,
    vote_steps,
)
from server.strategies import build_strategy
from tests.server.test_strategy import FakeGrid, make_reply

pytestmark = pytest.mark.usefixtures("flower_task_identity")

SPEC = ModelSpec(
    (
        TensorSpec("w", (4,), "sign"),
        TensorSpec("bn.running_mean", (2,), "real"),
        TensorSpec("bn.running_sigma", (2,), "real"),
    )
)
GLOBAL = {
    "w": np.array([1.0, 2.0, 3.0, 4.0], np.float32),
    "bn.running_mean": np.zeros(2, np.float32),
    "bn.running_sigma": np.ones(2, np.float32),
}
A, B, C, D = 48, 80, 224, 112  # packed signs: + + - - | + - + - | - - - + | + - - -
# node: (packed signs, scale, examples, running mean, running sigma)
HONEST = {
    11: (A, 0.5, 10, [1.0, 2.0], [0.5, 1.0]),
    12: (B, 1.0, 30, [3.0, 4.0], [1.0, 2.0]),
    13: (C, 0.25, 60, [5.0, 6.0], [2.0, 4.0]),
}


def reply(node, bits, scale, examples, mean, sigma):
    arrays = {
        codec.SIGNS: np.array([bits], np.uint8),
        codec.SCALES: np.array([scale], np.float32),
        codec.REAL: np.array(mean + sigma, np.float16),
    }
    metrics = {codec.NUM_EXAMPLES: examples, codec.MODEL_VERSION: 0}
    return make_reply(node, arrays, metrics)


def aggregate(extra, rule="mean", nodes=(11, 12, 13, 14), **strategy):
    """New global state and round metrics from the honest replies plus ``extra`` (node 14)."""
    cfg = ExperimentConfig(
        strategy=StrategyConfig(name=rule, **strategy),
        federation=FederationConfig(num_clients=4, clients_per_round=4, min_clients=2),
    )
    s = build_strategy(cfg, SPEC, lineage="abc")
    list(s.configure_train(1, state_to_record(GLOBAL), ConfigRecord(), FakeGrid(nodes)))
    replies = [reply(n, *v) for n, v in HONEST.items()] + [reply(14, *v) for v in extra]
    arrays, metrics = s.aggregate_train(1, replies)
    return record_to_state(arrays), metrics


def assert_same_state(a, b):
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_scale_x1000_counts_as_an_honest_reply_at_the_clip_bound(flwr_log):
    hostile, metrics = aggregate([(A, 500.0, 30, [3.0, 4.0], [1.0, 2.0])])
    # median scale of (0.5, 1, 0.25, 500) = 0.75, bound 2 x 0.75 = 1.5: node 14 weighs 30 x 1.5
    at_bound, clean_metrics = aggregate([(A, 1.5, 30, [3.0, 4.0], [1.0, 2.0])])
    assert_same_state(hostile, at_bound)
    # step = (10*0.5 A + 30*1 B + 60*0.25 C + 30*1.5 A) / 130 = (50 A + 30 B + 15 C) / 130
    step = np.array([65.0, 5.0, -35.0, -65.0]) / 130
    a = np.mean(np.abs(step))  # the downlink re-binarizes the step: mean|step| * sign(step)
    np.testing.assert_allclose(hostile["w"], GLOBAL["w"] + a * np.sign(step), rtol=1e-6)
    assert metrics["clipped"] == 1 and clean_metrics["clipped"] == 0
    lines = [m for m in flwr_log if "clipped the reply of node 14" in m]
    assert len(lines) == 1 and "scales of 1 tensor(s), up to 333x the bound" in lines[0]


def test_unbounded_scale_would_have_ruled_the_round():
    """The same reply with the clip far away: the 1000x scale dominates every coordinate."""
    hostile, _ = aggregate([(A, 500.0, 30, [3.0, 4.0], [1.0, 2.0])], scale_clip=1e9)
    assert np.array_equal(np.sign(hostile["w"] - GLOBAL["w"]), [1, 1, -1, -1])  # node 14's A


def test_6e4_float16_state_counts_as_an_honest_reply_at_the_top_of_the_range(flwr_log):
    big = float(np.float16(6e4))
    hostile, metrics = aggregate([(A, 0.5, 30, [big, big], [big, big])])
    top, _ = aggregate([(A, 0.5, 30, [5.0, 6.0], [2.0, 4.0])])  # a copy of the honest maximum
    assert_same_state(hostile, top)
    # trimmed mean of 4 drops the largest and the smallest value of each coordinate
    np.testing.assert_allclose(hostile["bn.running_mean"], [4.0, 5.0])
    np.testing.assert_allclose(hostile["bn.running_sigma"], [1.5, 3.0])
    assert metrics["clipped"] == 1
    assert any("node 14" in m and "4 real-valued state value(s)" in m for m in flwr_log)


def test_a_non_positive_spread_is_clipped_and_cannot_drag_the_aggregate(flwr_log):
    hostile, metrics = aggregate([(A, 0.5, 30, [3.0, 4.0], [-1.0, 0.0])])
    bottom, _ = aggregate([(A, 0.5, 30, [3.0, 4.0], [0.5, 1.0])])  # a copy of the honest minimum
    assert_same_state(hostile, bottom)
    assert metrics["clipped"] == 1 and (hostile["bn.running_sigma"] > 0).all()


def test_1e5_example_claim_counts_as_an_honest_reply_at_the_weight_cap(flwr_log):
    hostile, metrics = aggregate([(C, 0.5, 100_000, [3.0, 4.0], [1.0, 2.0])])
    # median claim of (10, 30, 60, 100000) = 45: weights are capped at 2 x 45 = 90
    capped, clean = aggregate([(C, 0.5, 90, [3.0, 4.0], [1.0, 2.0])])
    assert_same_state(hostile, capped)
    assert metrics["num_examples"] == 10 + 30 + 60 + 90 and clean["clipped"] == 0
    assert any("node 14" in m and "examples 100000 -> 90" in m for m in flwr_log)


def test_uniform_weights_ignore_every_claim():
    liar, _ = aggregate([(C, 0.25, 100_000, [3.0, 4.0], [1.0, 2.0])], example_cap=0)
    modest, _ = aggregate([(C, 0.25, 1, [3.0, 4.0], [1.0, 2.0])], example_cap=0)
    assert_same_state(liar, modest)


def test_majority_step_is_median_scale_times_vote_margin():
    new, _ = aggregate([], rule="majority", nodes=(11, 12, 13))
    # votes (A + B + C) = [+1, -1, -1, -1], margin 1/3 everywhere; median scale 0.5
    step = 0.5 / 3
    np.testing.assert_allclose(new["w"], GLOBAL["w"] + step * np.array([1, -1, -1, -1]), rtol=1e-6)


def test_majority_fixed_step_follows_the_clients_lr_schedule():
    cfg = ExperimentConfig(
        strategy=StrategyConfig(name="majority", majority_step=0.001),
        federation=FederationConfig(
            num_clients=3, clients_per_round=3, num_rounds=3, lr_schedule="cosine", lr_final=0.1
        ),
    )
    s = build_strategy(cfg, SPEC, lineage="abc")
    list(s.configure_train(3, state_to_record(GLOBAL), ConfigRecord(), FakeGrid(HONEST)))
    arrays, _ = s.aggregate_train(3, [reply(n, *v) for n, v in HONEST.items()])
    # round 3 of 3 under cosine: lr_final x majority_step = 1e-4, times the margin 1/3 everywhere
    expected = GLOBAL["w"] + 1e-4 / 3 * np.array([1, -1, -1, -1])
    np.testing.assert_allclose(record_to_state(arrays)["w"], expected, rtol=1e-6)


def test_majority_margin_vote_moves_each_coordinate_by_its_margin():
    spec = ModelSpec((TensorSpec("w", (4,), "sign"),))
    updates = [  # A ++--, B +-+-, D +---: votes [3, -1, -1, -3] of 3
        SignUpdate({"w": np.array([bits], np.uint8)}, {"w": scale}, {})
        for bits, scale in ((A, 0.5), (B, 4.0), (D, 0.25))
    ]
    margin = majority_vote(updates, spec, vote_steps(updates, spec, "margin"), "margin")
    np.testing.assert_allclose(margin["w"], 0.5 * np.array([1, -1 / 3, -1 / 3, -1]), rtol=1e-6)
    # sign: the same l1 (median 0.5 x mean margin 2/3) spread evenly over the coordinates
    sign = majority_vote(updates, spec, vote_steps(updates, spec, "sign"), "sign")
    np.testing.assert_allclose(sign["w"], 0.5 * 2 / 3 * np.array([1, -1, -1, -1]), rtol=1e-6)
    assert np.abs(margin["w"]).sum() == pytest.approx(np.abs(sign["w"]).sum())


def test_majority_ignores_a_scale_x1000_reply():
    hostile, _ = aggregate([(A, 500.0, 30, [3.0, 4.0], [1.0, 2.0])], rule="majority")
    honest, _ = aggregate([(A, 1.0, 30, [3.0, 4.0], [1.0, 2.0])], rule="majority")
    assert_same_state(hostile, honest)  # median of (0.5, 1, 0.25, x) is 0.75 for any x >= 1


def test_aligned_gives_no_weight_to_a_reply_that_disagrees_with_the_others(flwr_log):
    new, metrics = aggregate([(D, 1.0, 20, [3.0, 4.0], [1.0, 2.0])], rule="aligned")
    # each reply against the vote of the other three: A agrees +0 +0 +1 +1 = 0.5, B 0.5, D 1.0,
    # C agrees on 1 of 4 and disagrees on 3 = -0.5; median 0.5, so trust A, B, D 1 and C 0
    # step = (10 * 0.5 A + 30 * 1 B + 20 * 1 D) / (10 + 30 + 20)
    step = np.array([55.0, -45.0, 5.0, -55.0]) / 60
    expected = GLOBAL["w"] + np.mean(np.abs(step)) * np.sign(step)
    np.testing.assert_allclose(new["w"], expected, rtol=1e-6)
    assert metrics["distrusted"] == 1
    assert any("no trust in" in m and "node(s) 13" in m for m in flwr_log)


def test_aligned_leaves_each_reply_out_of_its_reference_vote():
    """Weakly correlated replies (non-IID data): a flipper agrees with a vote it is part of."""
    rng = np.random.default_rng(0)
    n, numel = 10, 4096
    common = rng.standard_normal(numel)
    signs = np.sign(0.3 * common + rng.standard_normal((n, numel))).astype(np.float32)
    signs[:2] *= -1  # two devices invert their honest signs
    spec = ModelSpec((TensorSpec("w", (numel,), "sign"),))
    updates = [SignUpdate({"w": pack_signs(s)}, {"w": 1.0}, {}) for s in signs]
    _, trust = aligned_mean(updates, [1.0] * n, spec)
    full_vote = np.sign(signs.sum(axis=0))
    assert min(float(signs[i] @ full_vote) / numel for i in range(2)) > 0.1  # what it would get
    assert trust[:2] == [0.0, 0.0]
    assert all(t > 0.2 for t in trust[2:])
    assert sum(t == 1.0 for t in trust) >= n // 2  # replies at or above the median: full


def test_aligned_trusts_a_reply_once_over_the_whole_model():
    """A flipper that agrees with the others in one small tensor gets no weight there either.

    Label-skewed data: in a class-specific tensor (the last layer) honest replies can disagree
    with the others' vote, and then an inverted reply agrees with it. Trusted per tensor, the
    flippers would keep full weight in the very tensor that decides the classes.
    """
    rng = np.random.default_rng(1)
    n, big, small = 10, 4096, 64
    body = np.sign(0.3 * rng.standard_normal(big) + rng.standard_normal((n, big)))
    groups = np.where(np.arange(n) < 4, 1.0, -1.0)[:, None]  # replies 0-3 see other classes
    head = groups * np.sign(rng.standard_normal(small))
    signs = np.concatenate([body, head], axis=1).astype(np.float32)
    signs[:2] *= -1  # replies 0 and 1 invert their honest signs
    spec = ModelSpec((TensorSpec("body", (big,), "sign"), TensorSpec("head", (small,), "sign")))
    scales = {"body": 1.0, "head": 1.0}
    updates = [
        SignUpdate({"body": pack_signs(s[:big]), "head": pack_signs(s[big:])}, scales, {})
        for s in signs
    ]
    votes = signs[:, big:].sum(axis=0)
    in_head = [float(signs[i, big:] @ np.sign(votes - signs[i, big:])) / small for i in range(n)]
    assert in_head[:2] == [1.0, 1.0] and in_head[2:4] == [-1.0, -1.0]  # per tensor: inverted
    step, trust = aligned_mean(updates, [1.0] * n, spec)
    assert trust[:2] == [0.0, 0.0]
    assert all(t > 0.2 for t in trust[2:])
    t = np.array(trust[2:])[:, None]
    np.testing.assert_allclose(step["head"], (t * signs[2:, big:]).sum(axis=0) / t.sum(), rtol=1e-6)


@pytest.mark.parametrize("rule", ["aligned", "mean"])
def test_a_sign_flipper_against_aligned_and_mean(rule):
    # three honest replies that mostly agree, and node 14 inverting the first one's signs
    replies = {11: 48, 12: 48, 13: 112, 14: 192}  # ++--, ++--, +---, --++
    cfg = ExperimentConfig(
        strategy=StrategyConfig(name=rule),
        federation=FederationConfig(num_clients=4, clients_per_round=4, min_clients=2),
    )
    s = build_strategy(cfg, SPEC, lineage="abc")
    list(s.configure_train(1, state_to_record(GLOBAL), ConfigRecord(), FakeGrid(replies)))
    arrays, _ = s.aggregate_train(
        1, [reply(n, bits, 1.0, 10, [1.0, 2.0], [1.0, 2.0]) for n, bits in replies.items()]
    )
    change = record_to_state(arrays)["w"] - GLOBAL["w"]
    if rule == "aligned":  # against the others' votes: each honest reply trust 0.5, 14 none
        honest = np.array([3.0, 1.0, -3.0, -3.0]) / 3  # the mean of the honest replies alone
        np.testing.assert_allclose(change, np.mean(np.abs(honest)) * np.sign(honest), rtol=1e-6)
    else:  # the plain mean: step [2, 0, -2, -2] / 4, the flipper cancels coordinate 1 and
        # shrinks the step to 0.375 per coordinate (the honest mean alone: 0.83)
        np.testing.assert_allclose(change, 0.375 * np.array([1.0, 1.0, -1.0, -1.0]), rtol=1e-6)


def float32_reply(node, w, examples, mean, sigma):
    state = {
        "w": np.asarray(w, np.float32),
        "bn.running_mean": np.asarray(mean, np.float32),
        "bn.running_sigma": np.asarray(sigma, np.float32),
    }
    metrics = {codec.NUM_EXAMPLES: examples, codec.MODEL_VERSION: 0}
    return make_reply(node, codec.encode_float32(state, SPEC), metrics, raw=False)


def test_fedavg_clips_each_change_to_twice_the_median_norm(flwr_log):
    cfg = ExperimentConfig(
        strategy=StrategyConfig(name="fedavg", error_feedback=False),
        federation=FederationConfig(num_clients=3, clients_per_round=3, min_clients=2),
    )
    s = build_strategy(cfg, SPEC, lineage="abc")
    list(s.configure_train(1, state_to_record(GLOBAL), ConfigRecord(), FakeGrid(HONEST)))
    g = GLOBAL["w"]
    changes = {11: [1.0, 0, 0, 0], 12: [0, 2.0, 0, 0], 13: [0, 0, 0, -1000.0]}  # norms 1, 2, 1000
    replies = [
        float32_reply(n, g + np.array(d, np.float32), 10, [n, n], [1.0, 1.0])
        for n, d in changes.items()
    ]
    new, metrics = s.aggregate_train(1, replies)
    # node 13's change is scaled to 2 x the median norm (2) = [0, 0, 0, -4]; equal weights
    expected = g + np.array([1.0, 2.0, 0.0, -4.0]) / 3
    np.testing.assert_allclose(record_to_state(new)["w"], expected, rtol=1e-6)
    np.testing.assert_allclose(record_to_state(new)["bn.running_mean"], [12.0, 12.0])  # median
    assert metrics["clipped"] == 1
    assert any("node 13" in m and "changes of 1 tensor(s)" in m for m in flwr_log)


# --- the pure bounds ------------------------------------------------------------------------------
def test_clip_scales_per_tensor():
    spec = ModelSpec((TensorSpec("a", (2, 2), "sign"), TensorSpec("b", (3, 1), "sign")))
    scales = [{"a": 1.0, "b": 0.1}, {"a": 2.0, "b": 0.2}, {"a": 9.0, "b": 0.3}]
    out, counts = clip_scales(scales, spec, 2.0)
    assert out == [{"a": 1.0, "b": 0.1}, {"a": 2.0, "b": 0.2}, {"a": 4.0, "b": 0.3}]
    assert counts == [0, 0, 1]


def test_cap_examples():
    assert cap_examples([10, 30, 60, 100_000], 2.0) == ([10, 30, 60, 90], [False] * 3 + [True])
    assert cap_examples([10, 30, 60], 0) == ([30, 30, 30], [False] * 3)  # uniform: no claim counts


@pytest.mark.parametrize(
    ("values", "trim", "expected"),
    [
        ([-1e6, 1, 2, 3, 4, 5, 6, 7, 8, 1e6], 0.2, 4.5),  # n = 10: 2 dropped each side
        ([-1e6, 1e6, 3, 4, 5, 6, 7, 8, -1e6, 1e6], 0.2, 5.5),  # 2 extremes at each end: gone
        ([1, 2, 1e6], 0.2, 2.0),  # n = 3: the median
        ([1, 5, 6, 1e6, 2], 0.2, 13 / 3),  # n = 5: ceil(1) = 1 each side
        ([1, 1e6], 0.2, 500000.5),  # n = 2: nothing can be dropped
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 1e6], 0.0, 100004.5),  # trim 0: the mean
    ],
)
def test_trimmed_mean_drops_ceil_trim_n_each_side(values, trim, expected):
    x = np.array(values, np.float64)[:, None]
    assert trimmed_mean(x, trim)[0] == pytest.approx(expected)


def test_bound_real_bands():
    spec = ModelSpec((TensorSpec("mu", (1,), "real"), TensorSpec("bn.running_var", (1,), "real")))
    reals = [{"mu": np.array([v]), "bn.running_var": np.array([s])} for v, s in
             ((0.0, 1.0), (1.0, 2.0), (2.0, 4.0), (100.0, 1e4))]  # fmt: skip
    out, counts = bound_real(reals, spec, 8.0)
    # mu: median 1.5, MAD 1 -> band 1.5 +- 8 (1 + tol); var: on a log scale, median log 2.83
    assert out[3]["mu"][0] == pytest.approx(1.5 + 8 * (1 + 2**-10 * 1.5 + 2**-14), rel=1e-6)
    assert out[3]["bn.running_var"][0] < 1e4 and counts == [0, 0, 0, 2]
    assert [o["mu"][0] for o in out[:3]] == [0.0, 1.0, 2.0]  # values inside stay bit-exact
