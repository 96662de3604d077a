"""Property tests (hypothesis): hostile payloads meet only CodecError and bounded memory.

The decoders (``validate_update``/``decode_update``/``decode_full``/``decode_float32`` and the
Flower unwrapping ``from_record``) are fed random payloads and mutations of valid ones. For each:
either it decodes into exactly the spec's shapes, or it raises :class:`CodecError`; never any
other exception; and the memory it allocates (numpy buffers included: numpy reports them to
``tracemalloc``) stays below the model's own float32 size plus a small constant, however large
the sizes the sender claims.
"""

import io
import tracemalloc

import numpy as np
from flwr.app import Array, ArrayRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import codec
from core.codec import (
    CodecError,
    ModelSpec,
    SignUpdate,
    TensorSpec,
    decode_float32,
    decode_full,
    decode_update,
    encode_float32,
    encode_full,
    encode_update,
    validate_update,
)
from glue.records import RAW_STYPE, from_record, to_record

# Odd sizes so every sign tensor has padding bits: 15 -> 2 bytes, 7 -> 1 byte, 9 -> 2 bytes.
SPEC = ModelSpec(
    (
        TensorSpec("fc1.weight", (3, 5), "sign"),
        TensorSpec("bn.shift", (4,), "real"),
        TensorSpec("fc2.weight", (7, 1), "sign"),
        TensorSpec("fc3.weight", (9, 1, 1), "sign"),
        TensorSpec("bn.mean", (3,), "real"),
    )
)
SLACK = 64 * 1024  # Python objects of a decode (dicts, error strings, views): not payload data
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = [codec.SIGNS, codec.SCALES, codec.REAL, codec.LATENT, "fc1.weight", "bn.shift", "x", ""]
DTYPES = ["uint8", "int8", "bool", "float16", "float32", "float64", "int64", "complex64"]


def measured(fn, *args):
    """Run ``fn(*args)``; return (result or the CodecError, bytes allocated at the peak)."""
    tracemalloc.start()  # traces only what the decoder allocates, not its (large) input
    try:
        out = fn(*args)
    except CodecError as exc:  # the only error a decoder may raise
        out = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return out, peak


def valid_update(rng):
    state = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors}
    signs, scales, _ = codec.compress(state, None, SPEC)
    real = {t.name: state[t.name].astype(np.float16) for t in SPEC.real}
    return encode_update(SignUpdate(signs, scales, real), SPEC)


def check_decoded_update(out):
    if isinstance(out, CodecError):
        return
    assert isinstance(out, SignUpdate)
    for t in SPEC.sign:
        assert out.signs[t.name].shape == (t.packed_bytes,)
        assert np.isfinite(out.scales[t.name]) and out.scales[t.name] >= 0
    for t in SPEC.real:
        assert out.real[t.name].shape == t.shape and np.isfinite(out.real[t.name]).all()


# --- strategies -------------------------------------------------------------------------------
@st.composite
def arrays_of_any_kind(draw):
    """A small or absurdly long numpy array of any dtype, or something that is not an array."""
    kind = draw(st.sampled_from(["array", "long", "scalar", "junk"]))
    if kind == "junk":
        return draw(st.one_of(st.none(), st.integers(), st.text(max_size=5), st.just([1, 2])))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if kind == "scalar":
        return np.zeros((), dtype)
    if kind == "long":  # far more than the model: must be refused without being copied
        return np.zeros(draw(st.integers(10**4, 3 * 10**5)), dtype)
    shape = tuple(draw(st.lists(st.integers(0, 12), max_size=3)))
    raw = draw(st.binary(min_size=0, max_size=256))
    flat = np.frombuffer(raw.ljust(dtype.itemsize * int(np.prod(shape)), b"\x00"), np.uint8)
    return flat[: dtype.itemsize * int(np.prod(shape))].view(dtype).reshape(shape)


payloads = st.dictionaries(st.sampled_from(KEYS), arrays_of_any_kind(), max_size=5)


@st.composite
def mutated_updates(draw):
    """A valid update with one field damaged: bytes, length, dtype, padding, scales, real."""
    arrays = dict(valid_update(np.random.default_rng(draw(st.integers(0, 2**16)))))
    key = draw(st.sampled_from([codec.SIGNS, codec.SCALES, codec.REAL]))
    value = arrays[key].copy()
    how = draw(st.sampled_from(["byte", "truncate", "extend", "dtype", "special", "drop"]))
    if how == "byte":
        raw = bytearray(value.tobytes())
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        value = np.frombuffer(bytes(raw), value.dtype)
    elif how == "truncate":
        value = value[: draw(st.integers(0, value.size - 1))]
    elif how == "extend":
        value = np.concatenate([value, np.zeros(draw(st.integers(1, 10**5)), value.dtype)])
    elif how == "dtype":
        value = value.astype(draw(st.sampled_from(["float64", "int16", "uint16", "float32"])))
    elif how == "special" and value.dtype.kind == "f":
        value[draw(st.integers(0, value.size - 1))] = draw(
            st.sampled_from([np.nan, np.inf, -np.inf, -1.0, -0.0, 65504.0])
        )
    elif how == "drop":
        del arrays[key]
        return arrays
    arrays[key] = value
    return arrays


@st.composite
def hostile_records(draw):
    """An ArrayRecord of Flower Arrays with arbitrary dtype, declared shape, stype and bytes."""
    record = {}
    for i in range(draw(st.integers(1, 3))):
        stype = draw(st.sampled_from([RAW_STYPE, "numpy.ndarray", "pickle", ""]))
        dtype = draw(st.sampled_from(DTYPES + ["object", "<U8"]))
        claim = draw(st.sampled_from(["honest", "absurd", "random"]))
        n = draw(st.integers(0, 64))
        if stype == "numpy.ndarray" and draw(st.booleans()):  # a real .npy header that may lie
            shape = (2**40,) if claim == "absurd" else (n,)
            header = {"descr": np.dtype("<f4").str, "fortran_order": False, "shape": shape}
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, header)
            data = buf.getvalue() + draw(st.binary(max_size=4 * n + 8))
        else:
            data = draw(st.binary(max_size=300))
        shape = {
            "honest": (n,),
            "absurd": (2**40, 2**20),
            "random": tuple(draw(st.lists(st.integers(0, 2**31), max_size=3))),
        }[claim]
        record[f"k{i}"] = Array(dtype=dtype, shape=shape, stype=stype, data=data)
    return ArrayRecord(record)


# --- properties -------------------------------------------------------------------------------
@SETTINGS
@given(payloads)
def test_random_payloads_raise_only_codec_error_with_bounded_memory(arrays):
    for decode in (decode_update, decode_full, decode_float32):
        out, used = measured(decode, arrays, SPEC)
        assert used <= SPEC.float32_bytes + SLACK, (decode.__name__, used)
        assert isinstance(out, CodecError), "a random payload was accepted"


@SETTINGS
@given(mutated_updates())
def test_mutated_updates_decode_exactly_or_raise_codec_error(arrays):
    out, used = measured(decode_update, arrays, SPEC)
    assert used <= SPEC.float32_bytes + SLACK
    check_decoded_update(out)
    ok, _ = measured(validate_update, arrays, SPEC)
    assert (ok is None) == (not isinstance(out, CodecError))  # validate agrees with decode


@SETTINGS
@given(hostile_records())
def test_hostile_flower_records_raise_only_codec_error_with_bounded_memory(record):
    out, used = measured(from_record, record, SPEC.float32_bytes)
    assert used <= SPEC.float32_bytes + SLACK
    if not isinstance(out, CodecError):
        assert all(v.nbytes <= SPEC.float32_bytes for v in out.values())
        out, used = measured(decode_update, out, SPEC)
        assert used <= SPEC.float32_bytes + SLACK
        check_decoded_update(out)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.sampled_from(["full", "float32", "update"]))
def test_valid_payloads_round_trip_through_flower_records(seed, kind):
    rng = np.random.default_rng(seed)
    state = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors}
    if kind == "full":
        back = decode_full(from_record(to_record(encode_full(state, SPEC)), 1 << 20), SPEC)
        for t in SPEC.tensors:
            np.testing.assert_allclose(back[t.name], state[t.name], rtol=1e-3, atol=1e-3)
    elif kind == "float32":
        record = to_record(encode_float32(state, SPEC), raw=False)
        back = decode_float32(from_record(record, SPEC.float32_bytes), SPEC)
        assert all(np.array_equal(back[t.name], state[t.name]) for t in SPEC.tensors)
    else:
        arrays = valid_update(rng)
        update = decode_update(from_record(to_record(arrays), SPEC.float32_bytes), SPEC)
        assert encode_update(update, SPEC)[codec.SIGNS].tobytes() == arrays[codec.SIGNS].tobytes()


def test_an_absurd_claim_costs_nothing_on_a_real_model():
    """A reply claiming 2**40 floats, against the real digits MLP: refused, nothing allocated."""
    from core import federated
    from core.config import ExperimentConfig, TrainConfig

    cfg = ExperimentConfig(train=TrainConfig(num_threads=1))
    spec = codec.model_spec(federated.new_model(cfg, federated.load_split(cfg, "test")))
    header = {"descr": "<f4", "fortran_order": False, "shape": (2**40,)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    lie = Array(dtype="float32", shape=(2**40,), stype="numpy.ndarray", data=buf.getvalue())
    out, used = measured(from_record, ArrayRecord({codec.SIGNS: lie}), spec.float32_bytes)
    assert isinstance(out, CodecError) and used < SLACK
    big = {codec.SIGNS: np.zeros(50 * spec.sign_bytes, np.uint8)}
    big |= {codec.SCALES: np.ones(len(spec.sign), np.float32)}
    big |= {codec.REAL: np.zeros(spec.real_numel, np.float16)}
    out, used = measured(decode_update, big, spec)
    assert isinstance(out, CodecError) and "shape" in str(out) and used < SLACK
