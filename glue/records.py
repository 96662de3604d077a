"""Flower records <-> the numpy arrays of :mod:`core.codec`, for the ClientApp and the ServerApp.

``core.codec`` speaks ``dict[str, np.ndarray]``; Flower speaks ``ArrayRecord``. Sign updates and
full models travel as raw bytes (``stype="bitfed.raw"``, no ``.npy`` header); the float32
``fedavg`` baseline uses Flower's own ``numpy.ndarray`` arrays so Flower's ``FedAvg`` can average
them. Reading a record builds no array from a size the sender chose: byte lengths are bounded
first and raw bytes are viewed (``np.frombuffer``), not copied.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from core.codec import CodecError

__all__ = [
    "RAW_STYPE",
    "to_record",
    "from_record",
    "wire_bytes",
    "state_to_record",
    "record_to_state",
]

RAW_STYPE = "bitfed.raw"  # raw little-endian bytes of a 1-D array, dtype in _RAW_DTYPES
_NUMPY_STYPE = "numpy.ndarray"
_RAW_DTYPES = ("uint8", "float16", "float32")
_MAX_ARRAYS = 4096  # more arrays than any model here has tensors: reject before iterating
_NPY_HEADER_SLACK = 4096  # generous bound on a .npy header


def to_record(arrays: dict[str, np.ndarray], *, raw: bool = True) -> ArrayRecord:
    """Wrap codec arrays in an ``ArrayRecord`` (raw bytes, or Flower's numpy format)."""
    if not raw:
        return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    out = {}
    for key, value in arrays.items():
        flat = np.ascontiguousarray(value).ravel()
        out[key] = Array(
            dtype=str(flat.dtype), shape=(int(flat.size),), stype=RAW_STYPE, data=flat.tobytes()
        )
    return ArrayRecord(out)


def from_record(record: Any, max_bytes: int) -> dict[str, np.ndarray]:
    """Unwrap an ``ArrayRecord`` into numpy arrays, refusing anything over ``max_bytes`` each.

    ``max_bytes`` is the receiver's own bound (e.g. 4 bytes per model weight). Raises
    :class:`core.codec.CodecError` for a non-record, too many arrays, an unknown ``stype`` or
    dtype, a byte length that disagrees with the declared shape, or an oversized array.
    """
    if not isinstance(record, ArrayRecord):
        raise CodecError(f"expected an ArrayRecord, got {type(record).__name__}")
    if len(record) > _MAX_ARRAYS:
        raise CodecError(f"{len(record)} arrays in one record (at most {_MAX_ARRAYS})")
    out: dict[str, np.ndarray] = {}
    for key, arr in record.items():
        out[key] = _to_numpy(key, arr, max_bytes)
    return out


def _to_numpy(key: str, arr: Array, max_bytes: int) -> np.ndarray:
    size = len(arr.data)
    if arr.stype == RAW_STYPE:
        if arr.dtype not in _RAW_DTYPES:
            raise CodecError(f"{key!r}: dtype {arr.dtype!r} not allowed (one of {_RAW_DTYPES})")
        if size > max_bytes:
            raise CodecError(f"{key!r}: {size} bytes, more than this model allows ({max_bytes})")
        itemsize = np.dtype(arr.dtype).itemsize
        if size % itemsize or tuple(arr.shape) != (size // itemsize,):
            raise CodecError(f"{key!r}: declared shape {tuple(arr.shape)} != its {size} bytes")
        return np.frombuffer(arr.data, dtype=np.dtype(arr.dtype).newbyteorder("<"))
    if arr.stype == _NUMPY_STYPE:
        return _read_npy(key, arr, max_bytes)
    raise CodecError(f"{key!r}: unknown stype {arr.stype!r}")


def _read_npy(key: str, arr: Array, max_bytes: int) -> np.ndarray:
    """Read a float32 ``.npy`` payload without ``np.load`` (which allocates what the header says).

    The header's shape must equal the ``Array``'s declared shape, fit in ``max_bytes`` and
    account for every byte; the data is then viewed in place.
    """
    declared = tuple(int(d) for d in arr.shape)
    if arr.dtype != "float32" or any(d < 0 for d in declared):
        raise CodecError(f"{key!r}: numpy array of dtype {arr.dtype!r} shape {declared} refused")
    nbytes = 4 * math.prod(declared)
    if nbytes > max_bytes or len(arr.data) > max_bytes + _NPY_HEADER_SLACK:
        raise CodecError(f"{key!r}: {len(arr.data)} bytes, more than this model allows")
    fh = io.BytesIO(arr.data)
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"npy version {version}")
    except ValueError as exc:
        raise CodecError(f"{key!r}: unreadable numpy header ({exc})") from None
    offset = fh.tell()
    if tuple(shape) != declared or fortran or dtype != np.dtype("<f4"):
        raise CodecError(f"{key!r}: numpy header {dtype} {shape} disagrees with {declared}")
    if len(arr.data) - offset != nbytes:
        raise CodecError(f"{key!r}: {len(arr.data) - offset} data bytes, expected {nbytes}")
    return np.frombuffer(arr.data, dtype="<f4", offset=offset).reshape(declared)


def wire_bytes(obj: Any) -> int:
    """Bytes Flower serializes for ``obj`` and its children (arrays, their chunks), deduplicated.

    This is what a record costs on the wire apart from the message envelope.
    """
    seen: set[str] = set()

    def walk(o: Any) -> int:
        oid = o.object_id
        if oid in seen:
            return 0
        seen.add(oid)
        return len(o.deflate()) + sum(walk(c) for c in (o.children or {}).values())

    return walk(obj)


def state_to_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    """Wrap a model state in Flower's float32 ``ArrayRecord`` (what ``Strategy.start`` carries)."""
    return ArrayRecord(
        {k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}
    )


def record_to_state(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Inverse of :func:`state_to_record`, for the server's own records (trusted input only)."""
    return {k: np.asarray(v.numpy(), dtype=np.float32) for k, v in record.items()}
