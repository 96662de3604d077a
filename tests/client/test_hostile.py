"""Hostile devices: each attack on literal updates, the mod's selection, and one real round."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.hostile import (
    ALIE_FRACTION,
    CLAIMED_EXAMPLES,
    POISON_VALUE,
    SCALE_FACTOR,
    attack_float32,
    attack_sign_update,
    hostile_reply,
    is_attacker,
)
from core import codec
from core.codec import ModelSpec, SignUpdate, TensorSpec, compress, unpack_signs
from core.config import (
    ExperimentConfig,
    FederationConfig,
    StrategyConfig,
    TrainConfig,
    from_run_config,
    to_run_config,
)
from core.hydra_entry import compose_config
from glue.records import from_record, to_record

SPEC = ModelSpec(
    (
        TensorSpec("w", (3, 3), "sign"),  # 9 signs: 7 padding bits in the second byte
        TensorSpec("v", (40, 25), "sign"),
        TensorSpec("bn.running_sigma", (3,), "real"),
    )
)
KW = {"server_round": 4, "partition": 0, "scale_clip": 2.0}


def honest_update(seed=0):
    rng = np.random.default_rng(seed)
    delta = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.sign}
    signs, scales, _ = compress(delta, None, SPEC)
    return SignUpdate(signs, scales, {"bn.running_sigma": np.ones(3, np.float16)})


def dense(update):
    return update.dense(SPEC)


def roundtrip(update):
    """What the server decodes: every hostile update must pass the codec's checks."""
    return codec.decode_update(codec.encode_update(update, SPEC), SPEC)


def test_flip_inverts_every_sign_and_keeps_padding_zero():
    honest = honest_update()
    flipped = roundtrip(attack_sign_update(honest, SPEC, "flip", **KW))
    for name, value in dense(flipped).items():
        np.testing.assert_array_equal(value, -dense(honest)[name])
    assert int(flipped.signs["w"][1]) & 0x7F == 0


def test_scale_real_and_examples_attacks():
    honest = honest_update()
    scaled = roundtrip(attack_sign_update(honest, SPEC, "scale", **KW))
    assert scaled.scales["v"] == pytest.approx(SCALE_FACTOR * honest.scales["v"], rel=1e-6)
    assert all(np.array_equal(scaled.signs[k], honest.signs[k]) for k in honest.signs)
    poisoned = roundtrip(attack_sign_update(honest, SPEC, "real", **KW))
    assert (poisoned.real["bn.running_sigma"] == np.float16(POISON_VALUE)).all()
    assert poisoned.scales == honest.scales
    examples = roundtrip(attack_sign_update(honest, SPEC, "examples", **KW))
    np.testing.assert_array_equal(dense(examples)["v"], -dense(honest)["v"])


def test_random_signs_are_fresh_per_round_and_device():
    honest = honest_update()
    a = attack_sign_update(honest, SPEC, "random", **KW)
    again = attack_sign_update(honest, SPEC, "random", **KW)
    other = attack_sign_update(honest, SPEC, "random", **(KW | {"partition": 1}))
    assert np.array_equal(a.signs["v"], again.signs["v"])
    agree = np.mean(unpack_signs(a.signs["v"], 1000) == unpack_signs(other.signs["v"], 1000))
    assert 0.4 < agree < 0.6 and a.scales == honest.scales


def test_alie_attackers_push_the_same_coordinates_without_talking():
    one, two = honest_update(1), honest_update(2)  # two attackers, different honest signs
    a = attack_sign_update(one, SPEC, "alie", **KW)
    b = attack_sign_update(two, SPEC, "alie", **(KW | {"partition": 1}))

    def pushed(hostile, honest):
        return unpack_signs(hostile.signs["v"], 1000) != unpack_signs(honest.signs["v"], 1000)

    assert np.array_equal(pushed(a, one), pushed(b, two))  # agreed from the round number alone
    assert abs(pushed(a, one).mean() - ALIE_FRACTION) < 0.06
    later = attack_sign_update(one, SPEC, "alie", **(KW | {"server_round": 5}))
    assert not np.array_equal(pushed(later, one), pushed(a, one))
    assert a.scales["v"] == pytest.approx(0.95 * 2.0 * one.scales["v"])  # just under the clip


def test_float32_attacks():
    rng = np.random.default_rng(0)
    start = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors}
    noise = {k: 0.01 * rng.standard_normal(v.shape).astype(np.float32) for k, v in start.items()}
    state = {k: v + noise[k] for k, v in start.items()}
    flipped = attack_float32(state, start, SPEC, "flip", **KW)
    np.testing.assert_allclose(flipped["v"], 2 * start["v"] - state["v"], rtol=1e-6)
    scaled = attack_float32(state, start, SPEC, "scale", **KW)
    np.testing.assert_allclose(scaled["v"] - start["v"], 1e3 * (state["v"] - start["v"]), 1e-3)
    poisoned = attack_float32(state, start, SPEC, "real", **KW)
    assert (poisoned["bn.running_sigma"] == POISON_VALUE).all()
    np.testing.assert_array_equal(poisoned["v"], state["v"])


# --- the mod ------------------------------------------------------------------------------------
def test_attacker_selection():
    cfg = ExperimentConfig(federation=FederationConfig(attack="flip", attackers=2))
    assert [is_attacker(cfg, {"partition-id": p}) for p in range(4)] == [True, True, False, False]
    assert not is_attacker(ExperimentConfig(), {"partition-id": 0})  # attack "none"


def test_attack_is_selected_from_the_run_config_and_the_command_line():
    cfg = from_run_config({"federation.attack": "scale", "federation.attackers": "2"})
    assert (cfg.federation.attack, cfg.federation.attackers) == ("scale", 2)
    composed = compose_config(["federation.attack=alie", "federation.attackers=1"])
    assert (composed.federation.attack, composed.federation.attackers) == ("alie", 1)
    with pytest.raises(ValueError, match="unknown federation.attack 'nuke'; choose one of none"):
        FederationConfig(attack="nuke")
    with pytest.raises(ValueError, match=r"federation.attackers \(11\) exceeds"):
        FederationConfig(attackers=11)


def digits_spec(cfg):
    from core import federated

    return codec.model_spec(federated.new_model(cfg, federated.load_split(cfg, "train")))


def call(attack, partition, *, payload=codec.DELTA):
    """Run the mod around a fake handler whose honest reply is a fixed sign update."""
    cfg = ExperimentConfig(federation=FederationConfig(attack=attack, attackers=1))
    spec = digits_spec(cfg)
    rng = np.random.default_rng(0)
    delta = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in spec.sign}
    signs, scales, _ = compress(delta, None, spec)
    real = {t.name: np.ones(t.shape, np.float16) for t in spec.real}
    honest = SignUpdate(signs, scales, real)
    conf = ConfigRecord({codec.SERVER_ROUND: 3, codec.PAYLOAD: payload})
    msg = Message(RecordDict({codec.CONFIG: conf}), dst_node_id=1, message_type="train")
    reply = Message(
        RecordDict(
            {
                codec.ARRAYS: to_record(codec.encode_update(honest, spec)),
                codec.METRICS: MetricRecord({codec.NUM_EXAMPLES: 150}),
            }
        ),
        reply_to=msg,
    )
    context = Context(1, 1, {"partition-id": partition}, RecordDict(), to_run_config(cfg))
    out = hostile_reply(msg, context, lambda m, c: reply)
    return out, reply, honest, spec


@pytest.mark.usefixtures("flower_task_identity")
def test_mod_is_a_no_op_for_honest_devices():
    out, reply, _, _ = call("none", 0)
    assert out is reply
    out, reply, _, _ = call("flip", 1)  # partition 1 of attackers=1: honest
    assert out is reply


@pytest.mark.usefixtures("flower_task_identity")
def test_mod_turns_the_reply_into_the_attack():
    out, _, honest, spec = call("examples", 0)
    sent = codec.decode_update(from_record(out.content[codec.ARRAYS], spec.float32_bytes), spec)
    name = spec.sign[0].name
    np.testing.assert_array_equal(sent.dense(spec)[name], -honest.dense(spec)[name])
    assert out.content[codec.METRICS][codec.NUM_EXAMPLES] == CLAIMED_EXAMPLES


@pytest.mark.usefixtures("flower_task_identity")
def test_absent_reference_sends_no_update_and_counts_as_empty():
    out, reply, _, _ = call("absent", 0)
    assert codec.ARRAYS in reply.content.array_records  # the device did train
    assert codec.ARRAYS not in out.content.array_records
    metrics = out.content[codec.METRICS]
    assert (metrics[codec.NUM_EXAMPLES], metrics[codec.EMPTY]) == (0, 1)
    out, reply, _, _ = call("absent", 1)  # partition 1 of attackers=1: honest
    assert out is reply


# --- one real round: the ClientApp's mod against the server's bounds -------------------------
@pytest.mark.usefixtures("flower_task_identity", "one_torch_thread")
def test_scale_attacker_in_a_real_round_is_clipped(tmp_path, flwr_log):
    from benchmarks.local_grid import LocalGrid
    from client.client_app import app
    from server.server_app import run_server

    cfg = ExperimentConfig(
        train=TrainConfig(max_batches=1, batch_size=50, num_threads=1),
        strategy=StrategyConfig(name="mean"),
        federation=FederationConfig(
            num_clients=3,
            clients_per_round=3,
            num_rounds=1,
            resume=False,
            attack="scale",
            attackers=1,
        ),  # fmt: skip
        output_dir=str(tmp_path / "run"),
    )

    def node(partition):
        context = Context(
            1, 100 + partition, {"partition-id": partition, "num-partitions": 3}, RecordDict(),
            to_run_config(cfg),
        )  # fmt: skip
        return lambda msg: app(msg, context)

    metrics = run_server(LocalGrid({100 + p: node(p) for p in range(3)}), cfg)
    row = metrics["rounds"][1]
    assert (row["valid"], row["rejected"]) == (3, 0) and row["clipped"] >= 1
    lines = [m for m in flwr_log if "clipped the reply of node" in m]
    hostile = [m for m in lines if "node 100:" in m]
    assert len(hostile) == 1 and "scales of 5 tensor(s)" in hostile[0]
    # with 3 replies an honest node may have a stray batch-norm value clipped, never its scales
    assert not any("scales" in m for m in lines if "node 100:" not in m)
