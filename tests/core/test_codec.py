"""The wire format: bit convention, round trips, error feedback, and validation of bad payloads."""

import numpy as np
import pytest
import torch
from torch import nn

from core.codec import (
    LATENT,
    REAL,
    SCALES,
    SIGNS,
    CodecError,
    ModelSpec,
    SignUpdate,
    TensorSpec,
    compress,
    decode_float32,
    decode_full,
    decode_update,
    encode_float32,
    encode_full,
    encode_update,
    model_spec,
    pack_signs,
    unpack_signs,
    validate_update,
)

SPEC = ModelSpec(
    (
        TensorSpec("fc1.weight", (3, 5), "sign"),  # 15 signs: 2 bytes, 1 padding bit
        TensorSpec("bn1.beta", (3,), "real"),
        TensorSpec("fc2.weight", (2, 4), "sign"),  # 8 signs: exactly 1 byte
        TensorSpec("bn2.running_mean", (2,), "real"),
    )
)


def _state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors}


def _update_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    delta = _state(seed)
    signs, scales, _ = compress(delta, None, SPEC)
    real = {t.name: delta[t.name].astype(np.float16) for t in SPEC.real}
    return encode_update(SignUpdate(signs, scales, real), SPEC)


class TestBits:
    def test_convention_from_docstring(self):
        x = np.array([0.3, -1.2, 0.0, -0.1, 2.0, -0.5, 0.7, 0.1, -4.0])
        assert pack_signs(x).tolist() == [0b01010100, 0b10000000]
        assert unpack_signs(pack_signs(x), 9).tolist() == [1, -1, 1, -1, 1, -1, 1, 1, -1]

    @pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 5), (4, 3, 3, 2), (1000, 3)])
    def test_round_trip_and_size(self, shape):
        x = np.random.default_rng(1).standard_normal(shape)
        x.flat[0] = 0.0  # sign(0) = +1
        packed = pack_signs(x)
        n = x.size
        assert packed.dtype == np.uint8 and packed.nbytes == (n + 7) // 8
        assert np.array_equal(unpack_signs(packed, n), np.where(x.ravel() < 0, -1.0, 1.0))

    def test_row_major(self):
        x = np.array([[1.0, -1.0], [-1.0, 1.0]])
        assert pack_signs(x).tolist() == [0b01100000]
        assert pack_signs(np.asfortranarray(x)).tolist() == [0b01100000]


class TestCompress:
    def test_scale_is_mean_abs_and_residual_closes(self):
        delta = _state(2)
        signs, scales, residual = compress(delta, None, SPEC)
        for t in SPEC.sign:
            u = delta[t.name]
            assert scales[t.name] == pytest.approx(np.abs(u).mean(), rel=1e-6)
            sent = scales[t.name] * unpack_signs(signs[t.name], t.numel).reshape(t.shape)
            np.testing.assert_allclose(sent + residual[t.name], u, atol=1e-6)

    def test_error_feedback_adds_the_residual(self):
        delta = _state(3)
        _, _, residual = compress(delta, None, SPEC)
        zero = {k: np.zeros_like(v) for k, v in delta.items()}
        signs, scales, _ = compress(zero, residual, SPEC)
        t = SPEC.sign[0]
        expected = np.where(residual[t.name] < 0, -1, 1).ravel()
        assert np.array_equal(unpack_signs(signs[t.name], t.numel), expected)
        assert scales[t.name] == pytest.approx(np.abs(residual[t.name]).mean(), rel=1e-6)

    def test_accumulated_sent_tracks_accumulated_delta(self):
        # EF: sum of what was sent = sum of deltas - final residual (nothing is lost).
        rng = np.random.default_rng(4)
        residual, sent_sum, delta_sum = None, 0.0, 0.0
        t = SPEC.sign[0]
        for _ in range(20):
            delta = {
                k: rng.standard_normal(s.shape).astype(np.float32)
                for k, s in ((x.name, x) for x in SPEC.tensors)
            }
            signs, scales, residual = compress(delta, residual, SPEC)
            sent_sum = sent_sum + scales[t.name] * unpack_signs(signs[t.name], t.numel)
            delta_sum = delta_sum + delta[t.name].ravel()
        np.testing.assert_allclose(sent_sum + residual[t.name].ravel(), delta_sum, atol=1e-4)


class TestEncodeDecode:
    def test_round_trip(self):
        arrays = _update_arrays(5)
        assert set(arrays) == {SIGNS, SCALES, REAL}
        assert arrays[SIGNS].dtype == np.uint8 and arrays[SIGNS].shape == (3,)
        assert arrays[SCALES].dtype == np.float32 and arrays[SCALES].shape == (2,)
        assert arrays[REAL].dtype == np.float16 and arrays[REAL].shape == (5,)
        update = decode_update(arrays, SPEC)
        delta = _state(5)
        dense = update.dense(SPEC)
        for t in SPEC.sign:
            assert np.array_equal(np.sign(dense[t.name]), np.where(delta[t.name] < 0, -1, 1))
        np.testing.assert_array_equal(update.real["bn1.beta"], delta["bn1.beta"].astype(np.float16))

    def test_full_round_trip_is_float16(self):
        state = _state(6)
        arrays = encode_full(state, SPEC)
        assert set(arrays) == {LATENT, REAL}
        assert arrays[LATENT].dtype == np.float16 and arrays[LATENT].size == 15 + 8
        back = decode_full(arrays, SPEC)
        for t in SPEC.tensors:
            np.testing.assert_array_equal(back[t.name], state[t.name].astype(np.float16))

    def test_float32_round_trip(self):
        state = _state(7)
        back = decode_float32(encode_float32(state, SPEC), SPEC)
        for k in state:
            np.testing.assert_array_equal(back[k], state[k])


def _mutate(key, value):
    arrays = _update_arrays(8)
    arrays[key] = value
    return arrays


BAD_UPDATES = {
    "missing key": {SIGNS: np.zeros(3, np.uint8), SCALES: np.ones(2, np.float32)},
    "extra key": _update_arrays(8) | {"data": np.zeros(10, np.float32)},
    "float signs": _mutate(SIGNS, np.zeros(3, np.float32)),
    "short signs": _mutate(SIGNS, np.zeros(2, np.uint8)),
    "long signs": _mutate(SIGNS, np.zeros(4, np.uint8)),
    "absurd size": _mutate(SIGNS, np.zeros(10**6, np.uint8)),
    "2-d signs": _mutate(SIGNS, np.zeros((3, 1), np.uint8)),
    "padding bits": _mutate(SIGNS, np.array([0, 1, 0], np.uint8)),
    "nan scale": _mutate(SCALES, np.array([np.nan, 1], np.float32)),
    "inf scale": _mutate(SCALES, np.array([1, np.inf], np.float32)),
    "negative scale": _mutate(SCALES, np.array([1, -0.5], np.float32)),
    "float64 scales": _mutate(SCALES, np.ones(2, np.float64)),
    "float32 real": _mutate(REAL, np.zeros(5, np.float32)),
    "inf real": _mutate(REAL, np.array([0, 0, np.inf, 0, 0], np.float16)),
    "list not array": _mutate(REAL, [0.0] * 5),
}


@pytest.mark.parametrize("case", sorted(BAD_UPDATES))
def test_bad_updates_raise_codec_error(case):
    with pytest.raises(CodecError):
        validate_update(BAD_UPDATES[case], SPEC)
    with pytest.raises(CodecError):
        decode_update(BAD_UPDATES[case], SPEC)


def test_not_a_mapping():
    with pytest.raises(CodecError):
        validate_update([1, 2, 3], SPEC)


def test_bad_full_and_float32():
    full = encode_full(_state(), SPEC)
    with pytest.raises(CodecError):
        decode_full(full | {LATENT: full[LATENT][:-1]}, SPEC)
    with pytest.raises(CodecError):
        decode_full(full | {LATENT: np.full(23, np.nan, np.float16)}, SPEC)
    f32 = encode_float32(_state(), SPEC)
    with pytest.raises(CodecError):
        decode_float32(f32 | {"fc1.weight": np.zeros((5, 3), np.float32)}, SPEC)


class TestModelSpec:
    def test_from_torch_model(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(6, 4, bias=False).half()
                self.bn = nn.BatchNorm1d(4)
                self.register_buffer("grad_bits", torch.zeros(3, dtype=torch.uint8))

        spec = model_spec(Net())
        kinds = {t.name: t.kind for t in spec.tensors}
        assert kinds["fc.weight"] == "sign"
        assert kinds["bn.weight"] == kinds["bn.bias"] == kinds["bn.running_var"] == "real"
        assert "grad_bits" not in kinds and "bn.num_batches_tracked" not in kinds
        assert spec.sign_bytes == 3 and spec.float32_bytes == 4 * (24 + 4 * 4)
        assert spec.digest == model_spec(Net()).digest

    def test_uplink_is_about_one_bit_per_weight(self):
        spec = ModelSpec((TensorSpec("w", (256, 784), "sign"), TensorSpec("b", (256,), "real")))
        signs, scales, _ = compress({"w": np.ones((256, 784), np.float32)}, None, spec)
        arrays = encode_update(SignUpdate(signs, scales, {"b": np.zeros(256, np.float16)}), spec)
        sent = sum(a.nbytes for a in arrays.values())
        assert spec.float32_bytes / sent > 31


def test_docstring_examples():
    import doctest

    import core.codec

    result = doctest.testmod(core.codec)
    assert result.attempted >= 2 and result.failed == 0
