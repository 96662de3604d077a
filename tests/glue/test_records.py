"""Flower records <-> codec arrays: nothing is built from a size the sender chose."""

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from core.codec import CodecError
from glue.records import RAW_STYPE, from_record, to_record, wire_bytes


def test_raw_round_trip_and_wire_bytes():
    arrays = {"signs": np.arange(10, dtype=np.uint8), "real": np.ones(3, np.float16)}
    record = to_record(arrays)
    assert all(a.stype == RAW_STYPE for a in record.values())
    back = from_record(record, max_bytes=100)
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value)
    assert 16 < wire_bytes(record) < 2000


def test_numpy_round_trip():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(from_record(to_record({"w": w}, raw=False), max_bytes=48)["w"], w)


def _npy(value):
    buf = io.BytesIO()
    np.save(buf, value)
    return buf.getvalue()


@pytest.mark.parametrize(
    "array",
    [
        Array(dtype="uint8", shape=(10,), stype=RAW_STYPE, data=bytes(1000)),  # over the bound
        Array(dtype="uint8", shape=(5,), stype=RAW_STYPE, data=bytes(10)),  # shape lies
        Array(dtype="object", shape=(1,), stype=RAW_STYPE, data=bytes(8)),  # dtype not allowed
        Array(dtype="float32", shape=(3,), stype=RAW_STYPE, data=bytes(10)),  # partial item
        Array(dtype="uint8", shape=(3,), stype="pickle", data=bytes(3)),  # unknown stype
        # a .npy header promising a million floats inside a 200-byte message
        Array(
            dtype="float32",
            shape=(3,),
            stype="numpy.ndarray",
            data=_npy(np.zeros(10**6, np.float32))[:200],
        ),
        Array(
            dtype="float32", shape=(2,), stype="numpy.ndarray", data=_npy(np.zeros(3, np.float32))
        ),
        Array(
            dtype="float32", shape=(3,), stype="numpy.ndarray", data=_npy(np.zeros(3, np.float64))
        ),
        Array(dtype="float32", shape=(3,), stype="numpy.ndarray", data=b"garbage" * 5),
    ],
)
def test_hostile_arrays_raise_codec_error(array):
    with pytest.raises(CodecError):
        from_record(ArrayRecord({"x": array}), max_bytes=100)


def test_not_a_record():
    with pytest.raises(CodecError):
        from_record({"x": np.zeros(3)}, max_bytes=100)
