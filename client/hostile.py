"""Hostile devices: a Flower mod that turns this device's honest reply into an attack.

With ``federation.attack=<name>`` and ``federation.attackers=f`` in the run config, the devices
with ``partition-id < f`` train honestly, then :func:`hostile_reply` rewrites the reply before it
leaves; every other device (and every device under ``attack=none``) is untouched. Each attack
yields a well-formed reply that passes the codec's checks: only the server's aggregation can
blunt it (``server.aggregate``). ``bitfed-sim federation.attack=scale federation.attackers=2``
reproduces a robustness figure with one command.

==============  ===============================================  ==================================
attack          1-bit reply (``scale * sign`` + float16 state)   float32 reply (``fedavg``)
==============  ===============================================  ==================================
``flip``        every sign inverted, scales kept                 the local change negated:
                                                                 ``2 g - w``
``scale``       honest signs, every scale x 1000                 ``g + 1000 (w - g)``
``real``        honest update, every real-valued state value     same, in float32
                (batch-norm statistics, shifts) set to 6e4
``examples``    ``flip``, claiming 10^5 examples (the weight     same
                of ~20 honest MNIST devices)
``random``      uniformly random signs (seeded by round and      ``g + mean|w - g| * random sign``
                device), honest scales                           per tensor
``alie``        colluding "a little is enough" (Baruch et al.,   the change negated on the same
                arXiv 1902.06156) in the sign domain: all        coordinates, then scaled to
                attackers invert their own sign on the same      0.95 x ``scale_clip`` x its norm
                half of the coordinates, drawn from the round
                number (no communication), and send
                0.95 x ``strategy.scale_clip`` x their honest
                scale: just under the server's clipping bound
                as they estimate it
==============  ===============================================  ==================================

``g`` is the global model the device received, ``w`` its honestly trained model.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from core import codec, federated
from core.codec import ModelSpec, SignUpdate, pack_signs, unpack_signs
from core.config import ExperimentConfig, from_run_config
from core.names import AttackName
from glue.records import from_record, to_record

__all__ = [
    "SCALE_FACTOR",
    "POISON_VALUE",
    "CLAIMED_EXAMPLES",
    "ALIE_FRACTION",
    "ALIE_MARGIN",
    "is_attacker",
    "attack_sign_update",
    "attack_float32",
    "flip_signs",
    "hostile_reply",
]

SCALE_FACTOR = 1000.0  # ``scale``: what every scale (float32: the change) is multiplied by
POISON_VALUE = 6.0e4  # ``real``: every real-valued state value (float16's largest is 65504)
CLAIMED_EXAMPLES = 100_000  # ``examples``: the claimed count (strategy.max_examples' default)
ALIE_FRACTION = 0.5  # ``alie``: share of each tensor's coordinates the attackers push
ALIE_MARGIN = 0.95  # ``alie``: scales at this fraction of the clipping bound they estimate
_ALIE_SEED = 0xA11E  # the attackers' shared secret: with the round number, picks the coordinates


def is_attacker(cfg: ExperimentConfig, node_config: dict) -> bool:
    """Return whether this device is hostile: an attack is set and its partition id is < f."""
    if cfg.federation.attack == AttackName.NONE or "partition-id" not in node_config:
        return False
    return int(node_config["partition-id"]) < cfg.federation.attackers


def _pushed(rng: np.random.Generator, numel: int) -> np.ndarray:
    """Draw the coordinates all attackers push this round (the same draw on every attacker)."""
    return rng.random(numel) < ALIE_FRACTION


def attack_sign_update(
    update: SignUpdate,
    spec: ModelSpec,
    attack: str,
    *,
    server_round: int,
    partition: int,
    scale_clip: float,
) -> SignUpdate:
    """Return the hostile version of an honest 1-bit ``update`` (see the module's table)."""
    attack = AttackName(attack)
    signs, scales, real = dict(update.signs), dict(update.scales), dict(update.real)
    if attack in (AttackName.FLIP, AttackName.EXAMPLES):
        signs = flip_signs(signs, spec)
    elif attack == AttackName.SCALE:
        scales = {k: v * SCALE_FACTOR for k, v in scales.items()}
    elif attack == AttackName.REAL:
        real = {k: np.full_like(v, POISON_VALUE, dtype=np.float16) for k, v in real.items()}
    elif attack == AttackName.RANDOM:
        rng = np.random.default_rng([server_round, partition])
        signs = {t.name: pack_signs(rng.random(t.numel) - 0.5) for t in spec.sign}
    elif attack == AttackName.ALIE:
        rng = np.random.default_rng([_ALIE_SEED, server_round])  # shared by every attacker
        for t in spec.sign:
            own = unpack_signs(signs[t.name], t.numel)
            signs[t.name] = pack_signs(np.where(_pushed(rng, t.numel), -own, own))
        scales = {k: v * ALIE_MARGIN * scale_clip for k, v in scales.items()}
    return SignUpdate(signs, scales, real)


def flip_signs(signs: dict[str, np.ndarray], spec: ModelSpec) -> dict[str, np.ndarray]:
    """Invert every sign of packed sign tensors; padding bits stay zero."""
    ones = {t.name: pack_signs(-np.ones(t.numel, np.float32)) for t in spec.sign}  # no padding
    return {name: np.bitwise_xor(signs[name], ones[name]) for name in ones}


def attack_float32(
    state: dict[str, np.ndarray],
    start: dict[str, np.ndarray],
    spec: ModelSpec,
    attack: str,
    *,
    server_round: int,
    partition: int,
    scale_clip: float,
) -> dict[str, np.ndarray]:
    """Return the hostile version of an honest float32 ``state`` trained from ``start``."""
    attack = AttackName(attack)
    out = dict(state)
    if attack == AttackName.REAL:
        return out | {t.name: np.full(t.shape, POISON_VALUE, np.float32) for t in spec.real}
    alie = np.random.default_rng([_ALIE_SEED, server_round])
    rng = np.random.default_rng([server_round, partition])
    for t in spec.sign:
        g, change = start[t.name], state[t.name] - start[t.name]
        if attack in (AttackName.FLIP, AttackName.EXAMPLES):
            change = -change
        elif attack == AttackName.SCALE:
            change = SCALE_FACTOR * change
        elif attack == AttackName.RANDOM:
            change = np.mean(np.abs(change)) * np.where(rng.random(t.shape) < 0.5, -1.0, 1.0)
        elif attack == AttackName.ALIE:
            pushed = _pushed(alie, t.numel).reshape(t.shape)
            change = ALIE_MARGIN * scale_clip * np.where(pushed, -change, change)
        out[t.name] = (g + change).astype(np.float32)
    return out


def hostile_reply(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: on a hostile device, rewrite the honest reply into the configured attack.

    A no-op unless ``federation.attack`` is set and this device's ``partition-id`` is below
    ``federation.attackers``; replies without an update (errors, ``need-full``) pass unchanged.
    """
    reply = call_next(msg, context)
    cfg = from_run_config(context.run_config)
    if not is_attacker(cfg, dict(context.node_config)) or reply.has_error():
        return reply
    if codec.ARRAYS not in reply.content.array_records:  # need-full: nothing to attack
        return reply
    if cfg.federation.attack == AttackName.ABSENT:  # the reference: no update, as from a
        empty = MetricRecord({codec.NUM_EXAMPLES: 0, codec.EMPTY: 1})  # device without data
        return Message(RecordDict({codec.METRICS: empty}), reply_to=msg)
    data = federated.local_data(cfg, dict(context.node_config))
    spec = codec.model_spec(federated.new_model(cfg, data.dataset))
    conf = msg.content[codec.CONFIG]
    kwargs = {
        "server_round": int(conf[codec.SERVER_ROUND]),
        "partition": int(context.node_config["partition-id"]),
        "scale_clip": cfg.strategy.scale_clip,
    }
    attack = cfg.federation.attack
    sent = from_record(reply.content[codec.ARRAYS], spec.float32_bytes)
    if str(conf[codec.PAYLOAD]) == codec.FLOAT32:
        received = from_record(msg.content[codec.ARRAYS], spec.float32_bytes)
        start = codec.decode_float32(received, spec)
        state = codec.decode_float32(sent, spec)
        record = to_record(attack_float32(state, start, spec, attack, **kwargs), raw=False)
    else:
        update = attack_sign_update(codec.decode_update(sent, spec), spec, attack, **kwargs)
        record = to_record(codec.encode_update(update, spec))
    metrics = MetricRecord(dict(reply.content[codec.METRICS]))
    if attack == AttackName.EXAMPLES:
        metrics[codec.NUM_EXAMPLES] = CLAIMED_EXAMPLES
    return Message(RecordDict({codec.ARRAYS: record, codec.METRICS: metrics}), reply_to=msg)
