"""BENCHMARKS.md's compose section, rendered from a literal result (benchmarks/report_compose)."""

from benchmarks.report import render
from benchmarks.report_compose import render_compose

MIB = 2**20


def _device(total_mib: int, anon_mib: int) -> dict:
    return {"total": total_mib * MIB, "anon": anon_mib * MIB}


def _result(device_mib: int, image_bytes: int) -> dict:
    return {
        "name": "compose",
        "label": "one-container",
        "topology": "one container per device",
        "machine": {"date": "2026-12-02"},
        "image_bytes": image_bytes,
        "rounds": {"0": {"accuracy": 0.1}, "1": {"accuracy": 0.75}, "2": {"accuracy": 0.85}},
        "run_seconds": 94.1,
        "devices": {
            "device-1": _device(device_mib, device_mib - 17),
            "device-2": _device(300, 290),
            "device-3": _device(301, 290),
        },
        "processes": {
            "supernode-1": {
                "flower-supernode": {"peak_rss": 133 * MIB, "processes": 1},
                "flwr-clientapp": {"peak_rss": 334 * MIB, "processes": 3},
            }
        },
        "import_floors": {
            "flower-supernode": {"peak_rss": 120 * MIB, "anon": 85 * MIB},
            "flwr-clientapp": {"peak_rss": 300 * MIB, "anon": 205 * MIB},
        },
        "history": {
            "two-containers": {
                "label": "two-containers",
                "topology": "two containers per device",
                "machine": {"date": "2026-12-01"},
                "image_bytes": None,
                "devices": {f"device-{k}": {"total": 510 * MIB, "anon": None} for k in (1, 2, 3)},
            }
        },
    }


def test_section_judges_the_largest_device_and_the_image_against_their_targets() -> None:
    text = "\n".join(render_compose(_result(418, 1_199_892_506)))
    assert "largest device peak **418 MiB**" in text and "(**missed**)" in text
    assert "image **1,199,892,506 bytes** against 1.2 GB (**met**)" in text
    met = "\n".join(render_compose(_result(399, 1_200_000_001)))
    assert "largest device peak **399 MiB**" in met and "400 MiB target (**met**)" in met
    assert "1.2 GB (**missed**)" in met


def test_section_shows_history_before_this_run_and_sums_the_import_floors() -> None:
    lines = render_compose(_result(418, 1_199_892_506))
    rows = [line for line in lines if line.startswith("| `")]
    assert rows[0].startswith("| `two-containers` (2026-12-01) | two containers per device | 510")
    assert rows[1].startswith("| `one-container, this run` (2026-12-02)")
    assert "| 418 | 300 | 301 | 1,199,892,506 |" in rows[1]
    text = "\n".join(lines)
    assert "import floors alone hold **290 MiB**" in text  # 85 + 205
    assert "1: 0.750, 2: 0.850" in text


def test_report_places_compose_as_section_11(tmp_path) -> None:
    doc = render({"compose": _result(418, 1)}, tmp_path, tmp_path)
    assert "## 11. Compose federation: device footprint and image" in doc
    assert "largest device peak **418 MiB**" in doc
