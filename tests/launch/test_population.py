"""bitfed-sim at population scale: the pre-round check and the two Flower engine patches."""

import queue
import threading
from types import SimpleNamespace

import pytest
from flwr.compat.client import run_info_store
from flwr.server.superlink.fleet.vce import vce_api
from flwr.supercore.run import Run

from core.config import ExperimentConfig, FederationConfig, PartitionConfig
from core.data import DataError
from core.federated import check_population
from core.hydra_entry import APP_DIR
from launch import sim
from launch.sim import dispatch_pending, population_scale


def test_fused_run_config_is_built_once_for_all_nodes(monkeypatch):
    calls = []
    original = run_info_store.get_fused_config_from_dir

    def counted(path, overrides):
        calls.append(path)
        return original(path, overrides)

    monkeypatch.setattr(run_info_store, "get_fused_config_from_dir", counted)
    sweep = vce_api.add_messages_to_queue
    run = Run.create_empty(run_id=7)
    run.override_config = {"federation.num_rounds": 3}
    with population_scale():
        assert vce_api.add_messages_to_queue.func is dispatch_pending
        stores = vce_api._register_node_info_stores({n: n for n in range(500)}, run, str(APP_DIR))
    assert len(calls) == 1
    configs = [s.retrieve_context(7).run_config for s in stores.values()]
    assert all(c == configs[0] for c in configs) and configs[0]["federation.num_rounds"] == 3
    assert len({id(c) for c in configs}) == 500  # each node's Context keeps its own copy
    assert run_info_store.get_fused_config_from_dir is counted  # restored
    assert vce_api.add_messages_to_queue is sweep


class FakeState:
    """The in-memory link state's surface that dispatch uses: a message store and its lock."""

    def __init__(self, dst_nodes):
        self.lock = threading.RLock()
        self.message_ins_store = {
            f"m{i}": SimpleNamespace(metadata=SimpleNamespace(dst_node_id=n, delivered_at=""))
            for i, n in enumerate(dst_nodes)
        }
        self.asked = []

    def get_message_ins(self, node_id, limit):
        self.asked.append(node_id)
        for msg in self.message_ins_store.values():
            if msg.metadata.dst_node_id == node_id and not msg.metadata.delivered_at:
                msg.metadata.delivered_at = "now"
                return [msg]
        return []


def test_dispatch_asks_only_nodes_with_a_waiting_message():
    state, out, stop = FakeState([5, 9, 9]), queue.Queue(), threading.Event()
    nodes = {n: n for n in range(100_000)}
    thread = threading.Thread(target=dispatch_pending, args=(None, state, out, nodes, stop))
    thread.start()
    got = [out.get(timeout=10).metadata.dst_node_id for _ in range(3)]
    stop.set()
    thread.join(timeout=10)
    assert sorted(got) == [5, 9, 9]  # one message per node per sweep, as Flower's loop
    assert set(state.asked) == {5, 9} and len(state.asked) <= 10


def test_dispatch_falls_back_to_flower_for_another_state():
    seen = []
    dispatch_pending(lambda *a: seen.append(a), object(), "q", {1: 0}, "stop")
    assert len(seen) == 1 and seen[0][2] == {1: 0}


def digits(**fed):
    return ExperimentConfig(federation=FederationConfig(**fed))


def test_population_larger_than_the_dataset_is_allowed():
    examples, empty = check_population(digits(num_clients=3000, clients_per_round=10))
    assert (examples, empty) == (1438, 3000 - 1438)


def test_impossible_configs_are_refused_before_round_1(tmp_path, monkeypatch):
    monkeypatch.setattr(sim, "simulate", lambda cfg: pytest.fail("the simulation started"))
    cfg = digits(num_clients=1000, clients_per_round=10)
    cfg.partition = PartitionConfig(kind="shards", shards_per_client=2)
    cfg.output_dir = str(tmp_path / "run")
    with pytest.raises(DataError, match=r"1000 clients x 2 shards = 2000 shards but only 1438"):
        sim.run(cfg)
    few = digits(num_clients=2, clients_per_round=2, min_clients=2)
    few.partition = PartitionConfig(kind="iid")
    assert check_population(few) == (1438, 0)
    lonely = digits(num_clients=1440, clients_per_round=1440, min_clients=1439)
    with pytest.raises(ValueError, match=r"min_clients \(1439\) exceeds the 1438 clients"):
        check_population(lonely)
