import subprocess
import sys

import numpy as np
import pytest

from core.config import PartitionConfig
from core.data.stats import format_stats, partition_stats, save_stats_png
from launch.data import main
from tests.core.data.conftest import write_mnist


def test_partition_stats_prints_table_and_png(tmp_path, capsys):
    png = tmp_path / "plots" / "stats.png"
    argv = ["partition-stats", "--clients", "4", "--kind", "shards", "--png", str(png)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("digits train: 1438 examples, 4 clients, shards, 2 shards/client")
    rows = [ln for ln in lines if ln.strip() and ln.split()[0].isdigit() and "|" in ln]
    assert len(rows) == 4
    sizes = [int(r.split()[1]) + int(r.split()[2]) for r in rows]
    assert sum(sizes) == 1438
    hist_sum = [sum(int(v) for v in r.split("|")[1].split()) for r in rows]
    assert hist_sum == sizes
    assert "mean label entropy" in lines[-2] and f"wrote {png}" in lines[-1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in png.parent.iterdir() if p.name != "stats.png"]  # no temp left


def test_partition_stats_on_mnist_folder(tmp_path, capsys):
    write_mnist(tmp_path, n=30)
    assert (
        main(
            [
                "partition-stats",
                "--dataset",
                "mnist",
                "--root",
                str(tmp_path),
                "--clients",
                "3",
                "--kind",
                "dirichlet",
                "--alpha",
                "0.2",
            ]
        )
        == 0
    )
    assert "mnist train: 30 examples, 3 clients, dirichlet, alpha=0.2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (
            ["partition-stats", "--clients", "5000", "--kind", "shards"],
            "5000 clients x 2 shards = 10000 shards but only 1438 examples",
        ),
        (["partition-stats", "--kind", "dirichlet", "--alpha", "0"], "alpha must be > 0"),
        (["partition-stats", "--dataset", "svhn"], "svhn: no root folder given"),
        (
            ["partition-stats", "--dataset", "mnist", "--root", "/nonexistent/m"],
            "bitfed-data download mnist --root /nonexistent/m",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, pattern, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bitfed-data: error: ") and pattern in err


def test_download_command(serve, mnist_root, tmp_path, capsys):
    url, _ = serve(mnist_root)
    assert main(["download", "mnist", "--root", str(tmp_path), "--base-url", url]) == 0
    out = capsys.readouterr().out
    assert out.count(": verified") == 4 and "4 file(s) verified" in out
    assert main(["download", "mnist", "--root", str(tmp_path), "--base-url", url]) == 0
    assert capsys.readouterr().out.count("present and verified, skipped") == 4


def test_download_unreachable_exit_2(tmp_path, capsys):
    argv = [
        "download",
        "fashion-mnist",
        "--root",
        str(tmp_path),
        "--base-url",
        "http://127.0.0.1:1",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "download failed" in err and err.count("\n") == 1


def test_console_script_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "launch.data", "partition-stats", "--clients", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "bitfed-data: error: num_clients must be >= 1, got 0"


def test_stats_values():
    labels = np.repeat(np.arange(4), 5)
    stats = partition_stats(labels, 2, PartitionConfig(kind="shards", shards_per_client=2), 4)
    np.testing.assert_array_equal(stats.histograms.sum(axis=1), stats.train_sizes + stats.val_sizes)
    assert stats.histograms.sum() == 20 and stats.entropy.shape == (2,)
    text = format_stats(stats, "t")
    assert text.splitlines()[0] == "t" and "mean label entropy" in text


def test_png_write_failure_leaves_nothing(tmp_path, monkeypatch):
    import matplotlib.figure

    labels = np.repeat(np.arange(3), 4)
    stats = partition_stats(labels, 2, PartitionConfig(), 3)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", boom)
    with pytest.raises(OSError, match="disk full"):
        save_stats_png(stats, tmp_path / "s.png", "t")
    assert list(tmp_path.iterdir()) == []
