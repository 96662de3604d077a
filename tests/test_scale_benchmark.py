"""benchmarks/scale.py: the process-tree memory poll and the per-round summary."""

import subprocess
import sys
import time

from benchmarks.scale import MIB, summarize, tree_memory


def test_tree_memory_counts_children():
    alone, _ = tree_memory(subprocess.os.getpid())
    hog = (
        "b = bytearray(200 * 2**20); import time; b[::4096] = b'x' * len(b[::4096]); time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", hog])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            total, peaks = tree_memory(subprocess.os.getpid())
            if total - alone > 150 * MIB:
                break
            time.sleep(0.2)
        assert total - alone > 150 * MIB  # the child's 200 MiB is in the tree's sum
        assert peaks[child.pid] > 150 * MIB
    finally:
        child.kill()
        child.wait()


def test_summary_takes_seconds_per_round_from_the_server_clock():
    rows = [
        {"round": 0, "elapsed": 2.0, "accuracy": 0.1},
        {"round": 1, "elapsed": 12.0, "valid": 60, "empty": 40, "peak_memory": 3 * MIB},
        {"round": 2, "elapsed": 18.0, "valid": 58, "empty": 42, "skipped": 0, "accuracy": 0.2},
    ]
    res = summarize({"rounds": rows, "seconds": 20.0}, 100_000, 100, 50.0, {}, {})
    assert res["seconds_each_round"] == [10.0, 6.0] and res["seconds_per_round"] == 8.0
    assert res["startup_seconds"] == 30.0 and res["empty"] == [40, 42]
    assert res["client_peak_rss_mib"] == 3.0 and res["final_accuracy"] == 0.2
