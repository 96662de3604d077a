"""Server checkpoints: atomic, complete, and loud when unreadable."""

import numpy as np
import pytest

from client.state import ClientState, sync_replica
from core.codec import FULL, ModelSpec, TensorSpec, encode_full
from server.checkpoint import CHECKPOINT_FILE, Checkpoint


def test_round_trip_leaves_no_temp_files(tmp_path):
    ck = Checkpoint(
        3,
        2,
        "lin",
        "fp",
        {"w": np.arange(6, dtype=np.float32)},
        {"w": np.ones(6, np.float32)},
        [{"round": 1, "accuracy": 0.5}],
    )
    ck.save(tmp_path)
    ck.save(tmp_path)  # overwrite in place
    back = Checkpoint.load(tmp_path)
    assert (back.round, back.version, back.lineage, back.history) == (3, 2, "lin", ck.history)
    assert np.array_equal(back.global_state["w"], ck.global_state["w"])
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]


def test_missing_is_none_and_corrupt_is_an_error(tmp_path):
    assert Checkpoint.load(tmp_path) is None
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(ValueError, match="federation.resume=false"):
        Checkpoint.load(tmp_path)


def test_client_state_of_another_lineage_is_ignored(tmp_path):
    spec = ModelSpec((TensorSpec("w", (4,), "sign"), TensorSpec("b", (2,), "real")))
    state = {"w": np.arange(4, dtype=np.float32), "b": np.zeros(2, np.float32)}
    synced = sync_replica(None, FULL, "run-a", 5, 4, encode_full(state, spec), spec)
    synced.save(tmp_path / "c.npz")
    assert ClientState.load(tmp_path / "c.npz", "run-a").version == 5
    assert ClientState.load(tmp_path / "c.npz", "run-b") is None
    (tmp_path / "c.npz").write_bytes(b"junk")
    assert ClientState.load(tmp_path / "c.npz", "run-a") is None
