"""node config memory-budget: the batch a device trains with, or its refusal, in a real round."""

import pytest
from flwr.app import Context, RecordDict

from client import budget as budget_module
from client.budget import budget_of, choose_batch
from core import codec
from core.config import (
    ExperimentConfig,
    FederationConfig,
    RecipeConfig,
    TrainConfig,
    to_run_config,
)
from core.planner import MIN_TRAIN_BATCH, config_peak

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE, CLASSES = (1, 8, 8), 10  # digits


def test_budget_of_parses_sizes_and_names_the_key_on_bad_input():
    assert budget_of({}) is None and budget_of({"memory-budget": ""}) is None
    assert budget_of({"memory-budget": "48MiB"}) == 48 * 2**20
    assert budget_of({"memory-budget": "48MB"}) == 48_000_000
    assert budget_of({"memory-budget": 4096}) == 4096
    with pytest.raises(ValueError, match=r"node config memory-budget='48 parsecs'.*48MiB"):
        budget_of({"memory-budget": "48 parsecs"})


def test_configured_batch_is_the_ceiling_and_a_tiny_budget_refuses():
    cfg = ExperimentConfig(train=TrainConfig(batch_size=16))
    roomy = choose_batch(cfg, 2**30, SHAPE, CLASSES, examples=900)
    assert roomy.batch == 16 and roomy.plan.proof.batch == 16 and not roomy.plan.extrapolated
    few = choose_batch(cfg, 2**30, SHAPE, CLASSES, examples=5)  # fewer examples than a batch
    assert few.batch == 5
    tiny = choose_batch(cfg, 1024, SHAPE, CLASSES, examples=900)
    assert tiny.refused and tiny.batch == 0
    assert tiny.need_bytes == config_peak(cfg, MIN_TRAIN_BATCH, SHAPE, CLASSES)
    assert "memory-budget 0.00 MiB is below the measured step peak" in tiny.reason
    assert f"smallest batch {MIN_TRAIN_BATCH} (mlp/lowcost)" in tiny.reason


@pytest.mark.usefixtures("flower_task_identity")
def test_a_small_budget_trains_a_smaller_batch_and_a_tiny_one_refuses(
    tmp_path, flwr_log, monkeypatch
):
    """Two digits/MLP devices, train.batch_size 50: node 100's budget fits a batch of 20 but
    not 50, node 101's fits nothing. Both rounds complete on node 100 alone; node 101's refusal
    is counted and named; each device plans once for both rounds."""
    from benchmarks.local_grid import LocalGrid
    from client.client_app import app
    from server.server_app import run_server

    cfg = ExperimentConfig(
        train=TrainConfig(batch_size=50, max_batches=1, epochs=1, num_threads=1),
        federation=FederationConfig(
            num_clients=2, clients_per_round=2, min_clients=1, num_rounds=2, resume=False
        ),
        output_dir=str(tmp_path / "run"),
    )
    budget = config_peak(cfg, 20, SHAPE, CLASSES)  # fits 20, not 50 (peaks grow with the batch)
    assert config_peak(cfg, 50, SHAPE, CLASSES) > budget
    budget_module._PLANS.clear()
    plans = []
    real_plan = budget_module.plan_for_config

    def counted(*args, **kwargs):
        plans.append(args[1])
        return real_plan(*args, **kwargs)

    monkeypatch.setattr(budget_module, "plan_for_config", counted)
    replies = {100: [], 101: []}

    def node(node_id, partition, memory_budget):
        node_config = {"partition-id": partition, "num-partitions": 2,
                       "memory-budget": memory_budget}  # fmt: skip
        context = Context(1, node_id, node_config, RecordDict(), to_run_config(cfg))

        def handle(msg):
            reply = app(msg, context)
            replies[node_id].append(reply)
            return reply

        return handle

    grid = LocalGrid({100: node(100, 0, budget), 101: node(101, 1, "1KiB")}, concurrency=1)
    metrics = run_server(grid, cfg)

    trained = [r.content[codec.METRICS] for r in replies[100]]
    assert len(trained) == 2
    for m in trained:
        assert 20 <= m[codec.BATCH_SIZE] < 50 and m[codec.NUM_EXAMPLES] == m[codec.BATCH_SIZE]
    chosen = trained[0][codec.BATCH_SIZE]
    assert config_peak(cfg, chosen, SHAPE, CLASSES) <= budget
    assert config_peak(cfg, chosen + 1, SHAPE, CLASSES) > budget  # the largest that fits

    refusals = [r.content[codec.METRICS] for r in replies[101]]
    assert len(refusals) == 2 and not any(codec.ARRAYS in r.content for r in replies[101])
    for m in refusals:
        assert (m[codec.REFUSED], m[codec.NUM_EXAMPLES], m[codec.MEMORY_BUDGET]) == (1, 0, 1024)
        assert m[codec.MEMORY_NEED] > 1024

    for r in (1, 2):
        row = metrics["rounds"][r]
        assert (row["valid"], row["refused"], row["failed"], row["skipped"]) == (1, 1, 0, 0)
        assert row["version"] == r  # the round completed on node 100's update
        assert "memory-budget 0.00 MiB is below" in row["refused_nodes"]["101"]
    assert sum("node 101 refused: memory-budget" in m for m in flwr_log) == 2
    assert sorted(plans) == sorted([budget, 1024])  # one plan per device for both rounds


def test_bitfed_client_passes_the_budget_in_the_node_config():
    from flwr.common.config import parse_config_args

    from client.deploy import SuperNodeSpec, node_config

    spec = SuperNodeSpec(superlink="127.0.0.1:9092", data_root="/data", insecure=True,
                         partition_id=0, num_partitions=2, memory_budget="48MiB")  # fmt: skip
    assert node_config(spec).endswith(' memory-budget="48MiB"')
    assert budget_of(parse_config_args([node_config(spec)])) == 48 * 2**20  # as the app reads it
    with pytest.raises(ValueError, match=r"--memory-budget: memory size '48 parsecs' is not"):
        SuperNodeSpec(superlink="127.0.0.1:9092", data_root="/data", insecure=True,
                      memory_budget="48 parsecs")  # fmt: skip


def test_a_plan_is_kept_in_the_state_folder_for_the_next_process(tmp_path, monkeypatch):
    """Flower starts a ClientApp process per round: the next one reads the plan from disk."""
    cfg = ExperimentConfig(train=TrainConfig(batch_size=8))
    budget = config_peak(cfg, 5, SHAPE, CLASSES)
    budget_module._PLANS.clear()
    first = choose_batch(cfg, budget, SHAPE, CLASSES, examples=900, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("memory-plan-*.json"))) == 1
    budget_module._PLANS.clear()  # a fresh process

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(budget_module, "plan_for_config", no_measuring)
    again = choose_batch(cfg, budget, SHAPE, CLASSES, examples=900, cache_dir=tmp_path)
    assert again == first and 5 <= again.batch < 8 and again.plan.proof.batch == again.batch
    other = ExperimentConfig(train=TrainConfig(batch_size=8), recipe=RecipeConfig(name="standard"))
    budget_module._PLANS.clear()
    with pytest.raises(AssertionError, match="measured again"):  # another config: not reused
        choose_batch(other, budget, SHAPE, CLASSES, examples=900, cache_dir=tmp_path)
