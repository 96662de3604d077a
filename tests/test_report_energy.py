"""BENCHMARKS.md's energy section (benchmarks/report_energy.py) on the real energy.json."""

import copy
import json

import pytest

from benchmarks.common import RESULTS_DIR
from benchmarks.report import ORDER, RENDERERS, load_results, render
from benchmarks.report_energy import render_energy

ENERGY = RESULTS_DIR / "energy.json"
pytestmark = pytest.mark.skipif(not ENERGY.exists(), reason="no benchmarks/results/energy.json")


@pytest.fixture(scope="module")
def result():
    return json.loads(ENERGY.read_text())


def test_registered_after_the_other_sections():
    assert RENDERERS["energy"] is render_energy
    names = list(ORDER)
    before = names[: names.index("energy")]
    assert ORDER["energy"].startswith("9. Energy")
    assert all(int(ORDER[n].split(".")[0].rstrip("abcdefgh")) < 9 for n in before)


def test_per_model_rows_ratios_and_the_papers_claim(result):
    text = "\n".join(render_energy(result))
    for m in result["models"]:
        std = next(r for r in m["rows"] if r["recipe"] == "standard")
        low = next(r for r in m["rows"] if r["recipe"] == "lowcost")
        row = next(
            line for line in text.splitlines() if line.startswith(f"| {m['model']} | ")
            and "| lowcost |" in line
        )  # fmt: skip
        cells = [c.strip() for c in row.strip("|").split("|")]
        ratio = std["total_j"] / low["total_j"]
        assert cells[7] == f"{ratio:.2f}×"
        assert float(cells[4].replace(",", "")) == pytest.approx(low["compute_j"] * 1e3, rel=5e-3)
        assert float(cells[5].replace(",", "")) == pytest.approx(low["memory_j"] * 1e3, rel=5e-3)
        where = "within" if 2 <= ratio <= 6 else ("below" if ratio < 2 else "above")
        assert cells[10] == f"2–6× ({where})"
    assert "Modelled, not measured" in text and "arXiv 2102.04270" in text


def test_valgrind_agreement_constants_and_federation(result):
    text = "\n".join(render_energy(result))
    for c in result["comparison"]:
        agree = c["agreement"]["dram_bytes_vs_model_traffic"]
        assert f"(agreement {agree:.2f}; 1 = the same saving)" in text
    assert "contradicts it" in text  # CNV: lowcost misses the last level more (valgrind)
    assert "ISSCC 2014" in text and "MobiSys 2012" in text
    assert "| float32 add / multiply | 0.9 / 3.7 |" in text
    assert "| 64-bit access: 8 KB / 32 KB / 1 MB SRAM, DRAM | 10 / 20 / 100 / 1300 |" in text
    for r in result["federation30"]["ratios"]:
        assert (
            f"- {r['partition']}: float32 fedavg / {r['variant']} = **{r['wifi']:.2f}× over "
            f"Wi-Fi**, **{r['lte']:.2f}× over LTE**."
        ) in text


def test_without_valgrind_or_federation(result):
    bare = copy.deepcopy(result)
    bare["valgrind"] = {"skipped": "--skip-valgrind"}
    bare.pop("comparison")
    bare["federation30"] = None
    text = "\n".join(render_energy(bare))
    assert "Valgrind cross-check: --skip-valgrind." in text
    assert "no `federation30.json`" in text and "| mlp | 100 | lowcost |" in text


def test_the_whole_report_renders_the_section(tmp_path):
    doc = render(load_results(RESULTS_DIR), RESULTS_DIR, tmp_path)
    section = doc.split("## 9. Energy", 1)[1]
    assert "Cannot render" not in section.split("\n## ", 1)[0]
    assert "| mlp | 100 | lowcost |" in section
