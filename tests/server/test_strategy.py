"""BitFedStrategy: three literal replies, one hand-computed expected array (FedMedian-style)."""

import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.metadata import Metadata

from core import codec
from core.codec import ModelSpec, TensorSpec
from core.config import ExperimentConfig, FederationConfig, StrategyConfig
from glue.records import from_record, record_to_state, state_to_record, to_record
from server.strategies import build_strategy

SPEC = ModelSpec((TensorSpec("w", (4,), "sign"), TensorSpec("bn", (2,), "real")))
GLOBAL = {"w": np.array([1.0, 2.0, 3.0, 4.0], np.float32), "bn": np.zeros(2, np.float32)}
# client: (packed signs, scale, examples, real state)
#   A: + + - -  -> 0b0011_0000 = 48     B: + - + -  -> 0b0101_0000 = 80
#   C: - - - +  -> 0b1110_0000 = 224
LITERAL = {
    11: (48, 0.5, 10, [1.0, 2.0]),
    12: (80, 1.0, 30, [3.0, 4.0]),
    13: (224, 0.25, 60, [5.0, 6.0]),
}


pytestmark = pytest.mark.usefixtures("flower_task_identity")


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def make_reply(node, arrays, metrics, *, raw=True):
    meta = Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="x",
        group_id="",
        created_at=time.time(),
        ttl=100.0,
        message_type="train",
    )
    content = RecordDict({codec.METRICS: MetricRecord(metrics)})
    if arrays is not None:
        content[codec.ARRAYS] = to_record(arrays, raw=raw)
    return Message(metadata=meta, content=content)


def sign_reply(node, bits, scale, examples, real, version=0, **changes):
    arrays = {
        codec.SIGNS: np.array([bits], np.uint8),
        codec.SCALES: np.array([scale], np.float32),
        codec.REAL: np.array(real, np.float16),
    }
    arrays.update(changes)
    metrics = {codec.NUM_EXAMPLES: examples, codec.MODEL_VERSION: version, codec.LOSS: 1.0}
    return make_reply(node, arrays, metrics)


def strategy(
    rule="mean", min_clients=2, max_examples=100_000, spec=SPEC, start=GLOBAL, vote="margin", **fed
):
    cfg = ExperimentConfig(
        strategy=StrategyConfig(
            name=rule, majority_step=0.001, max_examples=max_examples, vote=vote
        ),
        federation=FederationConfig(
            num_clients=3, clients_per_round=3, min_clients=min_clients, **fed
        ),
    )
    s = build_strategy(cfg, spec, lineage="abc")
    list(s.configure_train(1, state_to_record(start), ConfigRecord(), FakeGrid(LITERAL)))
    return s


def literal_replies():
    return [sign_reply(n, *v) for n, v in LITERAL.items()]


def test_mean_rule_hand_computed():
    s = strategy("mean")
    arrays, metrics = s.aggregate_train(1, literal_replies())
    # weights 0.1, 0.3, 0.6: step = [0.2, -0.4, 0.1, -0.2]; downlink scale mean|step| = 0.225
    new = record_to_state(arrays)
    np.testing.assert_allclose(new["w"], [1.225, 1.775, 3.225, 3.775], rtol=1e-6)
    np.testing.assert_allclose(new["bn"], [3.0, 4.0])  # trimmed mean of 3 = the median
    np.testing.assert_allclose(s.residual["w"], [-0.025, -0.175, -0.125, 0.025], atol=1e-6)
    assert s.version == 1 and metrics["valid"] == 3 and metrics["clipped"] == 0


@pytest.mark.parametrize("vote", ["margin", "sign"])
def test_majority_rule_hand_computed(vote):
    s = strategy("majority", vote=vote)
    arrays, _ = s.aggregate_train(1, literal_replies())
    new = record_to_state(arrays)
    # votes of the 3 replies: +1, -1, -1, -1 (margin 1/3 everywhere), fixed step 0.001
    step = 0.001 / 3 if vote == "margin" else 0.001
    np.testing.assert_allclose(new["w"], GLOBAL["w"] + step * np.array([1, -1, -1, -1]), rtol=1e-6)
    np.testing.assert_allclose(new["bn"], [3.0, 4.0])  # trimmed mean of 3 = the median


BINARY = ModelSpec((TensorSpec("w", (4,), "sign", binary=True), TensorSpec("bn", (2,), "real")))
BINARY_GLOBAL = {"w": np.array([-0.5, -0.5, 0.5, 0.5], np.float32), "bn": np.zeros(2, np.float32)}


@pytest.mark.parametrize(
    ("rule", "nodes", "expected"),
    [
        # weighted step [0.2, -0.4, 0.1, -0.2] (as above): its signs are the vote
        ("mean", (11, 12, 13), [0.5, -0.5, 0.5, -0.5]),
        # A + B one vote each: [2, 0, 0, -2]; the two ties keep the current weights
        ("majority", (11, 12), [0.5, -0.5, 0.5, -0.5]),
        # A + B + C: [1, -1, -1, -1]
        ("majority", (11, 12, 13), [0.5, -0.5, -0.5, -0.5]),
    ],
)
def test_packed_binary_weights_take_the_vote_of_the_replies(rule, nodes, expected):
    """lowcost-bop: replies' signs are the clients' weights; the global weight is the vote's sign
    at magnitude BINARY_MAGNITUDE, sent absolute, no residual kept (docs/method.md §2h)."""
    s = strategy(rule, spec=BINARY, start=BINARY_GLOBAL)
    replies = [sign_reply(n, *LITERAL[n]) for n in nodes]
    arrays, _ = s.aggregate_train(1, replies)
    new = record_to_state(arrays)
    np.testing.assert_array_equal(new["w"], np.float32(expected))
    np.testing.assert_array_equal(s.residual["w"], np.zeros(4, np.float32))
    delta = codec.decode_update(from_record(s.last_delta, BINARY.float32_bytes), BINARY)
    assert delta.scales["w"] == codec.BINARY_MAGNITUDE
    replica = {k: v.copy() for k, v in BINARY_GLOBAL.items()}
    delta.apply(replica, BINARY)  # what a client's replica does with the downlink
    np.testing.assert_array_equal(replica["w"], new["w"])


def test_downlink_delta_reproduces_new_global_exactly():
    s = strategy("mean")
    arrays, _ = s.aggregate_train(1, literal_replies())
    delta = codec.decode_update(from_record(s.last_delta, SPEC.float32_bytes), SPEC)
    replica = GLOBAL["w"] + delta.dense(SPEC)["w"]
    assert np.array_equal(replica, record_to_state(arrays)["w"])
    # the nodes that replied now get the delta, a newcomer the full model
    assert s.payload_for(11) == codec.DELTA and s.payload_for(99) == codec.FULL


def test_fedavg_rule_is_weighted_float32_mean():
    s = strategy("fedavg")
    replies = []
    for node, w, ex in ((11, 1.0, 10), (12, 2.0, 30), (13, 3.0, 60)):
        state = {"w": np.full(4, w, np.float32), "bn": np.full(2, w, np.float32)}
        metrics = {codec.NUM_EXAMPLES: ex, codec.MODEL_VERSION: 0}
        replies.append(make_reply(node, codec.encode_float32(state, SPEC), metrics, raw=False))
    arrays, _ = s.aggregate_train(1, replies)
    np.testing.assert_allclose(record_to_state(arrays)["w"], np.full(4, 2.5), rtol=1e-6)


def test_malformed_reply_is_rejected_and_rest_aggregated(flwr_log):
    s = strategy("mean")
    bad = sign_reply(
        13, 224, 0.25, 60, [5.0, 6.0], **{codec.SCALES: np.array([np.nan], np.float32)}
    )
    arrays, metrics = s.aggregate_train(1, literal_replies()[:2] + [bad])
    assert arrays is not None and metrics["valid"] == 2 and metrics["rejected"] == 1
    assert any("rejected reply from node 13" in m and "NaN" in m for m in flwr_log)


@pytest.mark.parametrize(
    "reply",
    [
        lambda: sign_reply(13, 224, 0.25, 60, [5.0, 6.0], version=7),  # wrong model version
        lambda: sign_reply(13, 224, 0.25, 0, [5.0, 6.0]),  # no examples
        lambda: sign_reply(13, 224, 0.25, 60, [5.0, 6.0], **{codec.SIGNS: np.zeros(9, np.uint8)}),
        lambda: sign_reply(13, 224, -1.0, 60, [5.0, 6.0]),  # negative scale
        lambda: make_reply(13, {"x": np.zeros(3, np.float32)}, {codec.NUM_EXAMPLES: 5}),
        lambda: make_reply(13, None, {codec.NUM_EXAMPLES: 5, codec.MODEL_VERSION: 0}),
    ],
)
def test_each_kind_of_bad_reply_is_rejected(reply):
    s = strategy("mean")
    _, metrics = s.aggregate_train(1, literal_replies()[:2] + [reply()])
    assert metrics["valid"] == 2 and metrics["rejected"] == 1


def test_too_few_valid_replies_skip_the_round(flwr_log):
    s = strategy("mean", min_clients=3)
    arrays, metrics = s.aggregate_train(1, literal_replies()[:2])
    assert arrays is None and metrics["skipped"] == 1 and s.version == 0
    assert any("round 1 skipped" in m and "min_clients=3" in m for m in flwr_log)


def test_claimed_examples_are_capped():
    s = strategy("mean", max_examples=10)  # every client weighs 10: plain mean of scale*sign
    arrays, _ = s.aggregate_train(1, literal_replies())
    # step = [1.25, -0.75, 0.25, -1.25] / 3; mean|step| = 3.5/12, signs + - + -
    a = 3.5 / 12
    np.testing.assert_allclose(
        record_to_state(arrays)["w"], [1 + a, 2 - a, 3 + a, 4 - a], rtol=1e-6
    )


def test_node_wait_deadline_gives_up_with_counts(flwr_log):
    s = strategy("mean", node_wait_timeout=0.3)
    t0 = time.monotonic()
    msgs = list(s.configure_train(2, state_to_record(GLOBAL), ConfigRecord(), FakeGrid([11])))
    assert msgs == [] and time.monotonic() - t0 < 5
    assert any("gave up waiting for nodes" in m and "saw 1, needed 3" in m for m in flwr_log)


def test_configure_train_payloads():
    s = strategy("mean")
    arrays, _ = s.aggregate_train(1, literal_replies())
    msgs = list(s.configure_train(2, arrays, ConfigRecord(), FakeGrid([11, 12, 99])))
    kinds = {m.metadata.dst_node_id: m.content[codec.CONFIG][codec.PAYLOAD] for m in msgs}
    assert kinds == {11: codec.DELTA, 12: codec.DELTA, 99: codec.FULL}
    conf = msgs[0].content[codec.CONFIG]
    assert conf[codec.VERSION] == 1 and conf[codec.BASE_VERSION] == 0


def test_a_round_short_of_nodes_waits_once_not_every_round():
    """flwr run's default of 2 simulated nodes against 3 asked: wait once, then go ahead."""
    cfg = ExperimentConfig(
        federation=FederationConfig(
            num_clients=3, clients_per_round=3, min_clients=2, node_wait_timeout=0.5
        )
    )
    s = build_strategy(cfg, SPEC, lineage="abc")
    grid = FakeGrid([11, 12])
    t0 = time.monotonic()
    assert sorted(s.sample(grid, 1)) == [11, 12]
    first = time.monotonic() - t0
    t0 = time.monotonic()
    assert sorted(s.sample(grid, 2)) == [11, 12]
    second = time.monotonic() - t0
    assert first >= 0.5 and second < 0.25
    grid.nodes = [11, 12, 13]  # the third node came back: sampling asks for all three again
    assert sorted(s.sample(grid, 3)) == [11, 12, 13]
    grid.nodes = [11, 12]
    t0 = time.monotonic()
    s.sample(grid, 4)
    assert time.monotonic() - t0 >= 0.5


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_server_momentum_accumulates_the_step(beta):
    """With momentum b the aggregate after two equal rounds moves (1 + (1 + b)) steps."""
    cfg = ExperimentConfig(
        strategy=StrategyConfig(name="mean", server_momentum=beta),
        federation=FederationConfig(num_clients=3, clients_per_round=3, min_clients=2),
    )
    s = build_strategy(cfg, SPEC, lineage="abc")
    arrays = state_to_record(GLOBAL)
    for r in (1, 2):
        list(s.configure_train(r, arrays, ConfigRecord(), FakeGrid(LITERAL)))
        replies = [sign_reply(n, *v, version=r - 1) for n, v in LITERAL.items()]
        arrays, _ = s.aggregate_train(r, replies)
    moved = s.global_model(record_to_state(arrays))["w"] - GLOBAL["w"]
    plain = build_strategy(
        ExperimentConfig(
            strategy=StrategyConfig(name="mean"),
            federation=FederationConfig(num_clients=3, clients_per_round=3),
        ),
        SPEC,
        lineage="abc",
    )
    list(plain.configure_train(1, state_to_record(GLOBAL), ConfigRecord(), FakeGrid(LITERAL)))
    one, _ = plain.aggregate_train(1, literal_replies())
    step = plain.global_model(record_to_state(one))["w"] - GLOBAL["w"]
    np.testing.assert_allclose(moved, (2.0 + beta) * step, rtol=1e-5, atol=1e-6)
    assert (s.checkpoint_residual.keys() > {"w"}) == (beta > 0)  # momentum is checkpointed
