"""BENCHMARKS.md's aarch64 sections (benchmarks/report_arm64.py): made-up results with known
answers, then the real arm64.json / arm64_compose.json when they exist."""

import copy

import pytest

from benchmarks.common import RESULTS_DIR
from benchmarks.report import ORDER, RENDERERS, load_results, render
from benchmarks.report_arm64 import render_arm64, render_arm64_compose
from benchmarks.run_all import ON_REQUEST


def _runs(table: dict[tuple[str, int], float]) -> list[dict]:
    return [{"recipe": r, "seed": s, "accuracy": a, "seconds": 1.0} for (r, s), a in table.items()]


TRAIN = {
    "name": "arm64",
    "config": {
        "model": "mlp",
        "dataset": "digits",
        "epochs": 10,
        "seeds": [0, 1],
        "recipes": ["standard", "lowcost"],
        "batch": 100,
        "threads": 1,
    },
    "platforms": {
        "x86_64": {
            "environment": {"machine": "x86_64", "torch": "2.13.0+cpu", "capability": "AVX2"},
            "runs": _runs(
                {
                    ("standard", 0): 0.9415,
                    ("standard", 1): 0.9387,
                    ("lowcost", 0): 0.9582,
                    ("lowcost", 1): 0.9471,
                }
            ),  # fmt: skip
            "wall_seconds": 12.0,
        },
        "aarch64": {
            "environment": {"machine": "aarch64", "torch": "2.9.1", "capability": "DEFAULT"},
            "runs": _runs(
                {
                    ("standard", 0): 0.9526,
                    ("standard", 1): 0.9471,
                    ("lowcost", 0): 0.9582,
                    ("lowcost", 1): 0.9471,
                }
            ),  # fmt: skip
            "qemu_cpu": "cortex-a72",
            "wall_seconds": 600.0,
        },
    },
}


def _row(text: str, start: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_registered_as_section_12_after_the_others_and_run_on_request():
    assert RENDERERS["arm64"] is render_arm64
    assert RENDERERS["arm64_compose"] is render_arm64_compose
    names = list(ORDER)
    assert names[-2:] == ["arm64", "arm64_compose"]
    assert ORDER["arm64"].startswith("12. ") and ORDER["arm64_compose"].startswith("12b. ")
    assert {"arm64", "arm64_compose"} <= set(ON_REQUEST)


def test_accuracy_per_seed_the_difference_and_the_means():
    text = "\n".join(render_arm64(TRAIN))
    assert _row(text, "| standard | 0 |") == ["standard", "0", "0.9415", "0.9526", "+1.11"]
    assert _row(text, "| standard | 1 |") == ["standard", "1", "0.9387", "0.9471", "+0.84"]
    assert _row(text, "| lowcost | 1 |") == ["lowcost", "1", "0.9471", "0.9471", "+0.00"]
    assert _row(text, "| **standard mean** |")[2:] == ["0.9401", "0.9499", "+0.98"]
    assert "`lowcost`: identical on both CPUs for every seed" in text
    assert "`standard`: differs by up to 1.11 points" in text
    one = copy.deepcopy(TRAIN)
    one["platforms"]["aarch64"]["runs"][3]["accuracy"] = 0.9500  # lowcost seed 1
    text = "\n".join(render_arm64(one))
    assert "`lowcost`: identical for seed 0, differs by up to 0.29 points" in text
    assert "torch 2.9.1" in text and "emulated cortex-a72" in text and "torch 2.13.0+cpu" in text
    assert "10.0 minutes under emulation" in text


def test_a_seed_missing_on_one_side_is_left_out():
    partial = copy.deepcopy(TRAIN)
    partial["platforms"]["aarch64"]["runs"] = [
        r for r in partial["platforms"]["aarch64"]["runs"] if r["seed"] == 0
    ]
    text = "\n".join(render_arm64(partial))
    assert "| standard | 1 |" not in text
    assert _row(text, "| **standard mean** |")[2:] == ["0.9415", "0.9526", "+1.11"]


COMPOSE = {
    "name": "arm64_compose",
    "config": {
        "rounds": 2,
        "devices": 3,
        "arm64_device": 3,
        "arm64_device_memory": "1g",
        "emulation_patch": "a window widened to 600 s",
        "round_timeout": 3600.0,
    },
    "images": {
        "amd64": "bitfed:src-abc-data",
        "arm64": "bitfed:src-abc-data-arm64",
        "arm64_bytes": 1_300_000_000,
        "amd64_bytes": 1_200_000_000,
        "arm64_architecture": "linux/arm64/v8",
        "arm64_full_build_seconds": 1800.0,
        "arm64_build": {"seconds": 115, "date": "2026-12-02 07:35 UTC"},
    },
    "arm64_device": {"service": "supernode-3", "uname_m": "aarch64", "clientapp_processes": 2},
    "completed": True,
    "all_replies_valid": True,
    "rounds": {
        "0": {"accuracy": 0.1},
        "1": {"accuracy": 0.74, "sampled": 3, "valid": 3},
        "2": {"accuracy": 0.84, "sampled": 3, "valid": 3},
    },
    "seconds_per_round": 150.0,
    "round_seconds": [200.0, 100.0],
    "run_seconds": 400.0,
    "containers": {
        "supernode-3": {"peak": 700 * 2**20},
        "supernode-1": {"peak": 300 * 2**20},
        "superlink": {"peak": None},
    },
    "clientapp_peak_rss": {"supernode-3": 500 * 2**20},
    "platforms": {"supernode-3": "linux/arm64/v8", "supernode-1": "linux/amd64"},
}


def test_compose_section_image_rounds_time_and_peaks():
    text = "\n".join(render_arm64_compose(COMPOSE))
    assert "**1,300,000,000 bytes** (1,240 MiB; amd64 1,144 MiB)" in text
    assert "from scratch **1,800 s** (30 min); this image, reusing cached layers 115 s" in text
    assert "`uname -m` = `aarch64`" in text and "capped at 1g" in text
    assert "**completed**: 2 of 2 rounds, every round with all replies valid" in text
    assert "**150 s per round** (200, 100 s)" in text
    assert "- emulation only: a window widened to 600 s." in text
    assert _row(text, "| 2 |") == ["2", "0.8400", "3/3"]
    assert _row(text, "| supernode-3 |") == ["supernode-3", "linux/arm64/v8", "700", "500"]
    assert _row(text, "| superlink |") == ["superlink", "?", "–", "–"]


def test_compose_section_says_so_when_a_round_lacked_a_reply():
    short = copy.deepcopy(COMPOSE) | {"all_replies_valid": False}
    short["images"]["arm64_full_build_seconds"] = None
    short["images"]["arm64_build"] = None
    text = "\n".join(render_arm64_compose(short))
    assert "**not every round had all replies valid**" in text
    assert "not recorded (built elsewhere)" in text


@pytest.mark.skipif(
    not (RESULTS_DIR / "arm64.json").exists() or not (RESULTS_DIR / "arm64_compose.json").exists(),
    reason="no benchmarks/results/arm64.json or arm64_compose.json",
)
def test_the_whole_report_renders_both_sections(tmp_path):
    doc = render(load_results(RESULTS_DIR), RESULTS_DIR, tmp_path)
    for title in ("## 12. aarch64", "## 12b. A compose"):
        section = doc.split(title, 1)[1].split("\n## ", 1)[0]
        assert "Cannot render" not in section and "Not run yet" not in section
    assert "| **lowcost mean** |" in doc and "valid / sampled replies" in doc
