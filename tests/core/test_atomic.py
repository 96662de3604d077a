import json
import stat

import pytest

from core.atomic import atomic_write, atomic_write_json


def test_replaces_whole_file_with_mode(tmp_path):
    path = tmp_path / "sub" / "key"
    atomic_write(path, b"old")
    atomic_write(path, b"secret", mode=0o600)
    assert path.read_bytes() == b"secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["key"]  # no temp file left


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"round": 1})

    def broken(fh):
        fh.write(b"{half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"round": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
