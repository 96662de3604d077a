"""The wire format of bitfed: 1-bit model updates, compact full models, and their validation.

Everything a client or the server puts on the wire is built and checked here (numpy/torch only;
the Flower apps turn these ``dict[str, np.ndarray]`` into ``ArrayRecord`` s and back).

Bit convention (decided once, here)
-----------------------------------
A sign tensor ``x`` of ``n`` elements is flattened row-major (C order) and packed 8 signs per
byte, first element in the most significant bit (``np.packbits`` ``bitorder="big"``)::

    x      = [+0.3, -1.2,  0.0, -0.1, +2.0, -0.5, +0.7, +0.1,  -4.0]
    bit    = [   0,    1,    0,    1,    0,    1,    0,    0,     1]     bit set <=> x < 0
    bytes  = [0b01010100, 0b10000000]                                   last byte zero-padded

so ``sign(0) = +1`` and ``unpack(pack(x)) = where(x < 0, -1, +1)``. Padding bits must be zero:
the decoder rejects a byte stream whose padding is not.

Messages
--------
*Sign update* (uplink every round; downlink "delta" after the first round), Bernstein et al.'s
signSGD (arXiv 1802.04434) with Karimireddy et al.'s error feedback (arXiv 1901.09847):

==========  =========  ============================  ==============================================
key         dtype      length                        content
==========  =========  ============================  ==============================================
``signs``   uint8      sum_k ceil(n_k / 8)           packed sign bits of each weight tensor, spec
                                                     order, each tensor starting on a new byte
``scales``  float32    K (number of weight tensors)  one scale per weight tensor, finite and >= 0
``real``    float16    sum_j m_j                     the real-valued state (batch-norm shift and
                                                     running statistics), spec order
==========  =========  ============================  ==============================================

The update of weight tensor ``k`` is ``scales[k] * unpack(signs_k)``.

*Full model* (downlink to a client without a current replica): ``latent`` (float16, sum_k n_k,
the latent weights) and ``real`` as above: 16 bits per weight, once.

*Float32 state* (the ``fedavg`` baseline only): one float32 array per tensor, keyed by its name.

Decoding never trusts a size from the sender: every expected length comes from the receiver's
own :class:`ModelSpec`, lengths are checked before any array is built, and the only error raised
is :class:`CodecError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    # record keys (the only names that ever appear on the wire)
    "ARRAYS",
    "CONFIG",
    "METRICS",
    "SIGNS",
    "SCALES",
    "REAL",
    "LATENT",
    "BINARY_MAGNITUDE",
    "SERVER_ROUND",
    "LINEAGE",
    "VERSION",
    "BASE_VERSION",
    "PAYLOAD",
    "FULL",
    "DELTA",
    "CURRENT",
    "FLOAT32",
    "CHAIN",
    "SEED_DIGEST",
    "MAX_CHAIN",
    "encode_chain",
    "decode_chain",
    "state_digest",
    "NUM_EXAMPLES",
    "LOSS",
    "ACCURACY",
    "BYTES_SENT",
    "BYTES_RECEIVED",
    "PEAK_MEMORY",
    "TRAIN_TIME",
    "MODEL_VERSION",
    "NEED_FULL",
    "EMPTY",
    "BATCH_SIZE",
    "REFUSED",
    "MEMORY_BUDGET",
    "MEMORY_NEED",
    "REFUSAL",
    # errors and specs
    "CodecError",
    "TensorSpec",
    "ModelSpec",
    "model_spec",
    # bit packing
    "pack_signs",
    "unpack_signs",
    # sign updates
    "SignUpdate",
    "compress",
    "encode_update",
    "decode_update",
    "validate_update",
    # full models
    "encode_full",
    "decode_full",
    "encode_float32",
    "decode_float32",
]

# --- record keys ---------------------------------------------------------------------------------
ARRAYS = "arrays"  # the ArrayRecord of a message (update, full model or float32 state)
CONFIG = "config"  # the ConfigRecord of a server message
METRICS = "metrics"  # the MetricRecord of a client reply
SIGNS = "signs"  # packed sign bits of all weight tensors
SCALES = "scales"  # one float32 scale per weight tensor
REAL = "real"  # float16 real-valued state (batch-norm shift and statistics)
LATENT = "latent"  # float16 latent weights (full-model downlink only)

#: Replica value of a packed binary weight (``lowcost-bop``): ``BINARY_MAGNITUDE * sign``,
#: strictly inside (-1, 1), so that a client's change ``local (+-1) - replica`` is never 0 and
#: its sign is the client's trained binary weight itself (docs/method.md §2h).
BINARY_MAGNITUDE = 0.5

_SIGN_KEYS = frozenset({SIGNS, SCALES, REAL})
_FULL_KEYS = frozenset({LATENT, REAL})


class CodecError(ValueError):
    """A payload does not match the model it claims to update (the message names the problem)."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the model as the wire sees it.

    ``kind`` is ``"sign"`` for a weight tensor (sent as signs + one scale) and ``"real"`` for
    real-valued state (batch-norm shift and running statistics, sent as float16). ``binary``
    marks a weight tensor the model keeps as packed bits (``lowcost-bop``): its replica value is
    ``BINARY_MAGNITUDE * sign``, a downlink update *sets* it to ``scale * sign`` instead of adding
    (the server's vote), and it keeps no error-feedback residual (docs/method.md §2h).
    """

    name: str
    shape: tuple[int, ...]
    kind: Literal["sign", "real"]
    binary: bool = False

    @property
    def numel(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def packed_bytes(self) -> int:
        """Bytes of its packed signs: ``ceil(numel / 8)``."""
        return (self.numel + 7) // 8


@dataclass(frozen=True)
class ModelSpec:
    """Names, shapes and kinds of every tensor that travels, in a fixed order.

    Built by the receiver from its own model (:func:`model_spec`), never from a message.
    """

    tensors: tuple[TensorSpec, ...]

    @property
    def sign(self) -> tuple[TensorSpec, ...]:
        """The weight tensors (sent as signs + scale)."""
        return tuple(t for t in self.tensors if t.kind == "sign")

    @property
    def real(self) -> tuple[TensorSpec, ...]:
        """The real-valued state tensors (sent as float16)."""
        return tuple(t for t in self.tensors if t.kind == "real")

    @property
    def sign_bytes(self) -> int:
        """Length of the ``signs`` array."""
        return sum(t.packed_bytes for t in self.sign)

    @property
    def sign_numel(self) -> int:
        """Number of latent weights (length of ``latent``)."""
        return sum(t.numel for t in self.sign)

    @property
    def real_numel(self) -> int:
        """Length of the ``real`` array."""
        return sum(t.numel for t in self.real)

    @property
    def float32_bytes(self) -> int:
        """Raw bytes of the whole state in float32: the baseline a ratio is measured against."""
        return 4 * sum(t.numel for t in self.tensors)

    @property
    def digest(self) -> str:
        """Short hash of names, shapes and kinds: equal digests mean compatible models."""
        text = ";".join(
            f"{t.name}:{t.kind}{'/binary' if t.binary else ''}:{'x'.join(map(str, t.shape))}"
            for t in self.tensors
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_spec(model: Any) -> ModelSpec:
    """Describe what of ``model`` (a ``torch.nn.Module``) travels on the wire.

    Floating-point parameters with two or more dimensions are weight tensors (``"sign"``); every
    other floating-point entry of the ``state_dict`` (batch-norm shift, running mean and
    l1-deviation, biases) is real-valued state (``"real"``). Integer and bool entries (batch
    counters, packed gradient bits kept by binary layers) are local bookkeeping and never travel.
    A layer whose binary weights are packed bits (``lowcost-bop``: a module with
    ``packed_weight`` set) travels as the weight tensor ``"<layer>.weight"`` (``"sign"``, the
    weight's shape) in place of its ``"<layer>.weight_bits"``: the same spec as under ``lowcost``
    (docs/method.md §2h says what its update means).
    """
    params = {name for name, _ in model.named_parameters()}
    packed = {
        f"{name}.weight_bits" if name else "weight_bits": tuple(int(d) for d in m.weight.shape)
        for name, m in model.named_modules()
        if getattr(m, "packed_weight", False)
    }
    tensors = []
    for name, value in model.state_dict().items():
        if name in packed:
            tensors.append(TensorSpec(name.removesuffix("_bits"), packed[name], "sign", True))
            continue
        if not value.is_floating_point():
            continue
        kind = "sign" if name in params and value.dim() >= 2 else "real"
        tensors.append(TensorSpec(name, tuple(int(s) for s in value.shape), kind))
    if not any(t.kind == "sign" for t in tensors):
        raise CodecError("model has no weight tensor (float parameter with >= 2 dims) to send")
    return ModelSpec(tuple(tensors))


# --- bit packing ---------------------------------------------------------------------------------
def pack_signs(x: np.ndarray) -> np.ndarray:
    """Pack ``x < 0`` row-major into uint8, 8 per byte, MSB first; ``sign(0) = +1`` (bit 0).

    >>> pack_signs(np.array([0.3, -1.2, 0.0, -0.1, 2.0, -0.5, 0.7, 0.1, -4.0])).tolist()
    [84, 128]
    """
    return np.packbits(np.ravel(x) < 0, bitorder="big")


def unpack_signs(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_signs`: ``n`` float32 values in {-1, +1} (bit set -> -1).

    The opposite of the training core's in-memory bits (:func:`core.functional.bits_to_signs`).

    >>> unpack_signs(np.array([84, 128], dtype=np.uint8), 9).tolist()
    [1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0]
    """
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), count=n, bitorder="big")
    return 1.0 - 2.0 * bits.astype(np.float32)


# --- sign updates --------------------------------------------------------------------------------
@dataclass
class SignUpdate:
    """A decoded 1-bit update: per weight tensor packed signs and a scale, plus real state.

    ``signs[name]`` is uint8 (``packed_bytes``,), ``scales[name]`` a float >= 0 and
    ``real[name]`` float16 with the tensor's shape.
    """

    signs: dict[str, np.ndarray]
    scales: dict[str, float]
    real: dict[str, np.ndarray]

    def apply(self, replica: dict[str, np.ndarray], spec: ModelSpec) -> None:
        """Bring ``replica`` (float32 by name) forward by this update, in place.

        Weight tensors: ``replica += scale * sign``; binary ones (``TensorSpec.binary``): ``replica
        = scale * sign`` (the server's vote, absolute). Real state: replaced by ``real``.
        """
        for t in spec.sign:
            step = self.scales[t.name] * unpack_signs(self.signs[t.name], t.numel).reshape(t.shape)
            replica[t.name] = step if t.binary else replica[t.name] + step
        for t in spec.real:
            replica[t.name] = self.real[t.name].astype(np.float32)

    def dense(self, spec: ModelSpec) -> dict[str, np.ndarray]:
        """``scale * sign`` per weight tensor, float32 with the tensor's shape."""
        return {
            t.name: self.scales[t.name] * unpack_signs(self.signs[t.name], t.numel).reshape(t.shape)
            for t in spec.sign
        }


def compress(
    delta: Mapping[str, np.ndarray], residual: Mapping[str, np.ndarray] | None, spec: ModelSpec
) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, np.ndarray]]:
    """Binarize an update with error feedback (Karimireddy et al., arXiv 1901.09847, Alg. 2).

    Per weight tensor ``k``: ``u = delta_k + e_k``, ``s = mean|u|``, sent ``s * sign(u)``,
    kept ``e_k <- u - s * sign(u)``. ``s`` is the l2-optimal scale for a fixed sign pattern up to
    the sign(0) choice. ``residual=None`` means no error feedback (``e = 0``). A binary tensor
    (``TensorSpec.binary``) keeps no residual: its update is the client's weights themselves.

    Returns
    -------
    signs, scales, new_residual
        Packed signs, float scales and the float32 residual to keep on the device.
    """
    signs: dict[str, np.ndarray] = {}
    scales: dict[str, float] = {}
    new_residual: dict[str, np.ndarray] = {}
    for t in spec.sign:
        u = np.asarray(delta[t.name], dtype=np.float32).reshape(t.shape)
        if residual is not None and not t.binary:
            u = u + residual[t.name]
        scale = float(np.float32(np.mean(np.abs(u)))) if u.size else 0.0  # as it travels
        sent = np.where(u < 0, -scale, scale).astype(np.float32)
        signs[t.name] = pack_signs(u)
        scales[t.name] = scale
        new_residual[t.name] = np.zeros_like(u) if t.binary else u - sent
    return signs, scales, new_residual


def encode_update(update: SignUpdate, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Concatenate ``update`` into the three wire arrays ``signs``, ``scales`` and ``real``."""
    for t in spec.sign:
        if update.signs[t.name].size != t.packed_bytes:
            raise CodecError(
                f"signs of {t.name}: {update.signs[t.name].size} bytes, expected {t.packed_bytes}"
            )
    signs = [np.asarray(update.signs[t.name], dtype=np.uint8).ravel() for t in spec.sign]
    real = [np.asarray(update.real[t.name], dtype=np.float16).ravel() for t in spec.real]
    return {
        SIGNS: np.concatenate(signs) if signs else np.zeros(0, np.uint8),
        SCALES: np.array([update.scales[t.name] for t in spec.sign], dtype=np.float32),
        REAL: np.concatenate(real) if real else np.zeros(0, np.float16),
    }


def _check_keys(arrays: Mapping[str, Any], expected: frozenset[str]) -> None:
    if not isinstance(arrays, Mapping):
        raise CodecError(f"payload must be a mapping of arrays, got {type(arrays).__name__}")
    keys = set(arrays)
    if keys != expected:
        missing, extra = sorted(expected - keys), sorted(map(str, keys - expected))[:5]
        raise CodecError(f"wrong keys: missing {missing}, unexpected {extra}")


def _check_array(arrays: Mapping[str, Any], key: str, dtype: str, length: int) -> np.ndarray:
    value = arrays[key]
    if not isinstance(value, np.ndarray):
        raise CodecError(f"{key!r} must be a numpy array, got {type(value).__name__}")
    if value.dtype != np.dtype(dtype):
        raise CodecError(f"{key!r} has dtype {value.dtype}, expected {dtype}")
    if value.shape != (length,):
        raise CodecError(f"{key!r} has shape {value.shape}, expected ({length},) for this model")
    return value


def _check_finite(key: str, value: np.ndarray) -> None:
    if not np.isfinite(value).all():
        raise CodecError(f"{key!r} contains NaN or infinity")


def validate_update(arrays: Mapping[str, Any], spec: ModelSpec) -> None:
    """Check a sign-update payload against ``spec`` without building anything from it.

    Raises :class:`CodecError` naming the first problem: wrong keys, dtype, shape or byte
    length, non-zero padding bits, NaN/infinite/negative scales, NaN/infinite real state.
    Lengths are compared before any element is read, so an absurd size costs nothing.
    """
    _check_keys(arrays, _SIGN_KEYS)
    signs = _check_array(arrays, SIGNS, "uint8", spec.sign_bytes)
    scales = _check_array(arrays, SCALES, "float32", len(spec.sign))
    real = _check_array(arrays, REAL, "float16", spec.real_numel)
    _check_finite(SCALES, scales)
    if (scales < 0).any():
        raise CodecError(f"{SCALES!r} contains a negative scale")
    _check_finite(REAL, real)
    offset = 0
    for t in spec.sign:
        offset += t.packed_bytes
        pad = 8 * t.packed_bytes - t.numel
        if pad and int(signs[offset - 1]) & ((1 << pad) - 1):
            raise CodecError(f"{SIGNS!r}: non-zero padding bits after tensor {t.name}")


def decode_update(arrays: Mapping[str, Any], spec: ModelSpec) -> SignUpdate:
    """Validate (:func:`validate_update`) and split a sign-update payload per tensor."""
    validate_update(arrays, spec)
    signs, scales, offset = {}, {}, 0
    for i, t in enumerate(spec.sign):
        signs[t.name] = arrays[SIGNS][offset : offset + t.packed_bytes]
        scales[t.name] = float(arrays[SCALES][i])
        offset += t.packed_bytes
    return SignUpdate(signs, scales, _split(arrays[REAL], spec.real))


def _split(flat: np.ndarray, tensors: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for t in tensors:
        out[t.name] = flat[offset : offset + t.numel].reshape(t.shape)
        offset += t.numel
    return out


# --- full models ---------------------------------------------------------------------------------
def encode_full(state: Mapping[str, np.ndarray], spec: ModelSpec) -> dict[str, np.ndarray]:
    """Encode a whole model compactly: ``latent`` weights and ``real`` state, both float16."""
    latent = [np.asarray(state[t.name], dtype=np.float16).ravel() for t in spec.sign]
    real = [np.asarray(state[t.name], dtype=np.float16).ravel() for t in spec.real]
    return {
        LATENT: np.concatenate(latent),
        REAL: np.concatenate(real) if real else np.zeros(0, np.float16),
    }


def decode_full(arrays: Mapping[str, Any], spec: ModelSpec) -> dict[str, np.ndarray]:
    """Validate and unpack :func:`encode_full` output into float32 tensors by name."""
    _check_keys(arrays, _FULL_KEYS)
    latent = _check_array(arrays, LATENT, "float16", spec.sign_numel)
    real = _check_array(arrays, REAL, "float16", spec.real_numel)
    _check_finite(LATENT, latent)
    _check_finite(REAL, real)
    out = _split(latent, spec.sign) | _split(real, spec.real)
    return {t.name: out[t.name].astype(np.float32) for t in spec.tensors}


def encode_chain(deltas: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Encode consecutive sign updates (each :func:`encode_update` output) as one payload.

    Keys are ``"<i>/signs"``, ``"<i>/scales"``, ``"<i>/real"`` for step ``i = 0, 1, ...``; step
    ``i`` takes a replica from ``base + i`` to ``base + i + 1``.
    """
    return {f"{i}/{key}": value for i, delta in enumerate(deltas) for key, value in delta.items()}


def decode_chain(arrays: Mapping[str, Any], spec: ModelSpec, length: int) -> list[SignUpdate]:
    """Validate and split a chain of ``length`` sign updates (the receiver's own count).

    ``length`` comes from the message's versions, never from the arrays; it must be in
    ``[0, MAX_CHAIN]``, the keys must be exactly those of ``length`` steps, and each step is
    checked as :func:`decode_update` checks an update.
    """
    if not 0 <= length <= MAX_CHAIN:
        raise CodecError(f"a chain of {length} deltas (at most {MAX_CHAIN})")
    _check_keys(arrays, frozenset(f"{i}/{k}" for i in range(length) for k in _SIGN_KEYS))
    return [decode_update({k: arrays[f"{i}/{k}"] for k in _SIGN_KEYS}, spec) for i in range(length)]


def state_digest(state: Mapping[str, np.ndarray], spec: ModelSpec) -> str:
    """Digest of a model as it travels in full (float16 weights and real state), 32 hex chars.

    Two replicas with equal digests are equal bit for bit in what the wire can carry.
    """
    h = hashlib.sha256()
    for value in encode_full(state, spec).values():
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()[:32]


def encode_float32(state: Mapping[str, np.ndarray], spec: ModelSpec) -> dict[str, np.ndarray]:
    """Encode the ``fedavg`` baseline's payload: every tensor in float32 with its shape."""
    return {
        t.name: np.asarray(state[t.name], dtype=np.float32).reshape(t.shape) for t in spec.tensors
    }


def decode_float32(arrays: Mapping[str, Any], spec: ModelSpec) -> dict[str, np.ndarray]:
    """Validate a float32 state (keys, dtype, shapes, finiteness) and return it by name."""
    _check_keys(arrays, frozenset(t.name for t in spec.tensors))
    out = {}
    for t in spec.tensors:
        value = arrays[t.name]
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            raise CodecError(f"{t.name!r} must be a float32 array")
        if value.shape != t.shape:
            raise CodecError(f"{t.name!r} has shape {value.shape}, expected {t.shape}")
        _check_finite(t.name, value)
        out[t.name] = value
    return out


# --- message keys beyond the arrays (ConfigRecord of a server message, MetricRecord of a reply) ---
SERVER_ROUND = "server-round"  # int: the round this message belongs to
LINEAGE = "lineage"  # str: identity of the server's run; a replica of another lineage is void
VERSION = "version"  # int: global-model version after applying this message's payload
BASE_VERSION = "base-version"  # int: version a "delta" payload applies to
PAYLOAD = "payload"  # str: one of the payload kinds below
FULL, DELTA, CURRENT, FLOAT32 = "full", "delta", "current", "float32"  # payload kinds
CHAIN = "chain"  # payload kind: the deltas base-version + 1 .. version, in order (encode_chain)
SEED_DIGEST = "seed-digest"  # str: digest of version 0, which a client builds from cfg.seed
MAX_CHAIN = 256  # most deltas one chain may carry (a receiver refuses longer ones)
NUM_EXAMPLES = "num-examples"  # int: examples trained on (capped by strategy.max_examples)
LOSS = "loss"  # float: mean local training loss
ACCURACY = "accuracy"  # float: local training accuracy
BYTES_SENT = "bytes-sent"  # int: serialized bytes of the reply's ArrayRecord
BYTES_RECEIVED = "bytes-received"  # int: serialized bytes of the received ArrayRecord
PEAK_MEMORY = "peak-memory"  # int: peak resident memory of the client process this round
TRAIN_TIME = "train-time"  # float: seconds of local training
MODEL_VERSION = "model-version"  # int: global-model version the update was trained from
NEED_FULL = "need-full"  # int 1: the client has no usable replica and sent no update
EMPTY = "empty"  # int 1: the client holds no training example (K > N) and sent no update
BATCH_SIZE = "batch-size"  # int: the training batch the client used (its memory budget may cap it)
REFUSED = "refused"  # int 1: the client declined the round (no batch fits its memory budget)
MEMORY_BUDGET = "memory-budget"  # int: bytes the device allows a training step (node config)
MEMORY_NEED = "memory-need"  # int: measured step peak (bytes) at the smallest batch, when refused
REFUSAL = "refusal"  # ConfigRecord of a refusing reply: {"reason": one line}
