"""Clients without a training example (population larger than the dataset): counted, not failed."""

import numpy as np
import pytest

from core import codec
from core.runs import RunFailed, check_trained
from glue.records import record_to_state
from server.report import format_table, summary
from tests.server.test_strategy import literal_replies, make_reply, strategy

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def empty_reply(node):
    return make_reply(node, None, {codec.NUM_EXAMPLES: 0, codec.EMPTY: 1})


def test_empty_reply_is_counted_apart_and_the_rest_aggregated(flwr_log):
    with_empty = strategy("mean")
    arrays, metrics = with_empty.aggregate_train(1, literal_replies()[:2] + [empty_reply(13)])
    without = strategy("mean")
    expected, _ = without.aggregate_train(1, literal_replies()[:2])
    np.testing.assert_array_equal(record_to_state(arrays)["w"], record_to_state(expected)["w"])
    counts = (metrics["valid"], metrics["empty"], metrics["rejected"], metrics["failed"])
    assert counts == (2, 1, 0, 0)
    stats = with_empty.round_stats["1"]
    assert stats["empty"] == 1 and stats["skipped"] == 0
    assert 13 not in with_empty.node_version  # it applied nothing: its replica did not move
    assert with_empty.node_version == {11: 0, 12: 0}  # they trained from version 0
    assert not any("rejected" in m or "failed" in m for m in flwr_log)


def test_a_round_of_only_empty_replies_is_skipped_and_such_a_run_fails(flwr_log):
    s = strategy("mean", min_clients=1)
    arrays, metrics = s.aggregate_train(1, [empty_reply(n) for n in (11, 12, 13)])
    assert arrays is None and metrics["skipped"] == 1 and s.version == 0
    stats = s.round_stats["1"]
    assert (stats["empty"], stats["rejected"], stats["failed"], stats["valid"]) == (3, 0, 0, 0)
    assert any("round 1 skipped" in m and "3 empty" in m for m in flwr_log)
    rounds = [{"round": 0, "accuracy": 0.1, "loss": 2.3}, stats | {"round": 1, "accuracy": 0.1}]
    rounds[1]["loss"] = 2.3
    with pytest.raises(RunFailed, match=r"3 clients without a training example"):
        check_trained(rounds)
    assert "3 empty clients" in summary({"rounds": rounds, "config": {}, "float32_bytes": 1})


def test_round_table_has_an_empty_column():
    rows = [{"round": 1, "accuracy": 0.5, "loss": 1.0, "valid": 58, "rejected": 0, "empty": 42}]
    head, line = format_table(rows).splitlines()
    assert head.split()[-1] == "empty" and line.split()[-1] == "42"
