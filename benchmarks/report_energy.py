"""The energy section of ``BENCHMARKS.md``, rendered from ``benchmarks/results/energy.json``.

Modelled energy per training step (``core.energy``: counted operations x Horowitz's 45 nm
per-operation energies + counted memory traffic x DRAM energy per byte), its compute / memory
split and the ``standard / recipe`` ratio beside the paper's claim (Wang et al., arXiv
2102.04270: 2-6x less energy); the valgrind (callgrind cache simulator) counts of real steps
and how far their ratios agree with the model's; the constants and their sources; the 30-round
MNIST federation's modelled device energy, 1-bit vs float32 FedAvg, over Wi-Fi and LTE. Every
figure is read from the result; :func:`render_energy` is registered in ``benchmarks/report.py``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["PAPER_RANGE", "render_energy"]

#: The paper's claimed energy drop, standard / low-cost (Wang et al., arXiv 2102.04270, abstract).
PAPER_RANGE = (2.0, 6.0)

Doc = list[str]


def _x(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}×"


def _sig(value: float) -> str:
    """Three significant digits, without an exponent for large values: 0.0557, 5.6, 1,422."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _mj(joules: float) -> str:
    return _sig(joules * 1e3)


def _table(header: list[str], rows: list[list[str]]) -> Doc:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _versus_paper(ratio: float) -> str:
    lo, hi = PAPER_RANGE
    return "within" if lo <= ratio <= hi else ("below" if ratio < lo else "above")


def _models(res: dict[str, Any]) -> Doc:
    """Per model and recipe: J/step, compute vs memory, ratios, the paper's range beside."""
    lo, hi = PAPER_RANGE
    rows = []
    for m in res["models"]:
        for r in m["rows"]:
            ratio = r["ratio"] or {}
            std = r["recipe"] == "standard"
            rows.append(
                [
                    m["model"],
                    str(m["batch"]),
                    r["recipe"],
                    _mj(r["total_j"]),
                    _mj(r["compute_j"]),
                    _mj(r["memory_j"]),
                    f"{100 * r['memory_j'] / r['total_j']:.0f} %",
                    "1" if std else _x(ratio.get("total")),
                    "" if std else _x(ratio.get("compute")),
                    "" if std else _x(ratio.get("memory")),
                    "" if std else f"{lo:g}–{hi:g}× ({_versus_paper(ratio['total'])})",
                ]
            )
    lows = [
        (m["model"], r["ratio"]["total"])
        for m in res["models"]
        for r in m["rows"]
        if r["recipe"] == "lowcost" and r["ratio"]
    ]
    within = [f"{name} {_x(v)}" for name, v in lows if lo <= v <= hi]
    outside = [f"{name} {_x(v)}" for name, v in lows if not lo <= v <= hi]
    verdict = (
        f"Modelled `standard / lowcost`: {', '.join(within) or 'none'} within the paper's "
        f"{lo:g}–{hi:g}×" + (f"; outside it: {', '.join(outside)}" if outside else "") + "."
    )
    doc = [
        "**Modelled, not measured** (these machines have no power meter, no RAPL and no "
        "hardware counters): for one training step (forward, backward, optimizer update) "
        "`core.energy` counts the operations by kind (`n_k`) and the bytes of memory traffic by "
        "category (`b_c`) from the model's traced layer shapes and the recipe, then prices them: "
        "`E = Σ_k n_k·e_k + e_mem·Σ_c b_c`. *Compute* is the first sum, *memory* the second; "
        "*memory share* is memory / total. Ratios are `standard / recipe` (above 1: the recipe "
        "needs less); the paper's claim is "
        f"{res['config'].get('paper', {}).get('claim', 'a 2–6× drop')}.",
        "",
    ]
    doc += _table(
        ["model", "batch", "recipe", "mJ/step", "compute mJ", "memory mJ", "memory share",
         "std / recipe", "compute ×", "memory ×", "paper"],
        rows,
    )  # fmt: skip
    return doc + [verdict, ""] + _sensitivity(res)


def _sensitivity(res: dict[str, Any]) -> Doc:
    """How the lowcost ratio moves with the price of a byte (the other device classes)."""
    parts = []
    for m in res["models"]:
        low = next((r for r in m["rows"] if r["recipe"] == "lowcost"), None)
        by_class = (low or {}).get("ratio_by_device_class")
        if by_class:
            default = low["energy"]["device_class"]
            cells = ", ".join(f"{n} {_x(v)}" for n, v in by_class.items() if n != default)
            parts.append(f"{m['model']}: {cells}")
    if not parts:
        return []
    return [
        "The same `standard / lowcost` with every byte priced at DRAM's high end "
        "(`horowitz-45nm-dram-high`) or as 1 MB on-chip SRAM (`horowitz-45nm-sram`): "
        + "; ".join(parts)
        + ". Where bytes are cheap the "
        "arithmetic dominates and its saving (16-bit and 1-bit operations) shows.",
        "",
    ]


def _paper_settings(res: dict[str, Any]) -> Doc:
    rows = []
    for p in res.get("paper_settings") or []:
        rows.append(
            [
                p["model"],
                str(p["batch"]),
                f"{p['paper_lowcost_j_per_batch']:g}",
                f"{p['paper_average_power_w']:.2f}",
                _mj(p["modelled_j"]["lowcost"]),
                _mj(p["modelled_j"]["standard"]),
                f"{100 * p['modelled_lowcost_share_of_measured']:.2f} %",
            ]
        )
    if not rows:
        return []
    device = res["config"].get("paper", {}).get("device", "their device")
    return [
        f"At the paper's own settings, against its measured energy per batch on a {device} "
        "(board power × step time):",
        "",
        *_table(
            [
                "model",
                "batch",
                "paper J/batch (lowcost)",
                "paper mean W",
                "modelled mJ lowcost",
                "modelled mJ standard",
                "modelled / measured",
            ],
            rows,
        ),  # fmt: skip
        "The model prices only the arithmetic and the tensor traffic the algorithm needs; "
        "the board's static power, the interpreter and the kernels' overheads are the rest of "
        "the measured joules, so compare ratios with the paper's, not joules.",
        "",
    ]


def _valgrind(res: dict[str, Any]) -> Doc:
    """The measured cross-check: callgrind's counts of real steps, ratio beside the model's."""
    vg = res.get("valgrind") or {}
    comparison = res.get("comparison") or []
    if "skipped" in vg or not comparison:
        why = vg.get("skipped", "not run")
        return [f"Valgrind cross-check: {why}.", ""]
    rows, sentences = [], []
    for c in comparison:
        mr, vr, agree = c["model_ratio"], c["valgrind_ratio"], c["agreement"]
        rows.append(
            [
                c["model"],
                str(c["batch"]),
                _x(mr["total_energy"]),
                _x(mr["compute_energy"]),
                _x(mr["memory_energy"]),
                _x(vr["instructions"]),
                _x(vr["data_refs"]),
                _x(vr["dram_bytes"]),
                _x(vr["memory_energy"]),
                f"{agree['dram_bytes_vs_model_traffic']:.2f}",
            ]
        )
        traffic = c["model_traffic_bytes"]
        model_traffic = traffic["standard"] / traffic["lowcost"]
        direction = (
            "confirms the direction of the modelled saving"
            if vr["dram_bytes"] > 1
            else "contradicts it: lowcost misses the last-level cache more than standard"
        )
        sentences.append(
            f"- **{c['model']}** (batch {c['batch']}): the model's traffic falls "
            f"{_x(model_traffic)}, valgrind's DRAM bytes {_x(vr['dram_bytes'])} (agreement "
            f"{agree['dram_bytes_vs_model_traffic']:.2f}; 1 = the same saving), which "
            f"{direction}; lowcost executes {_x(1 / vr['instructions'], 1)} the instructions "
            f"of standard where the model counts {_x(mr['compute_energy'], 1)} less arithmetic "
            "energy."
        )
    doc = [
        f"Measured cross-check: real training steps under `{vg.get('tool', 'valgrind')}` "
        f"({vg.get('valgrind', '')}), counted rather than timed, with simulated caches of "
        f"{vg.get('cache_model', 'the flags ' + ' '.join(vg.get('cache_flags', [])))}; "
        "*DRAM bytes* are last-level read and write misses × 64 B (a lower bound: write-backs "
        "are not simulated), *memory energy* prices L1 accesses, L1 misses and last-level "
        "misses with the same Horowitz constants. All ratios `standard / lowcost`; *agreement* "
        "is valgrind's DRAM-byte ratio over the model's traffic ratio.",
        "",
        *_table(
            [
                "model",
                "batch",
                "model total",
                "model compute",
                "model memory",
                "vg instructions",
                "vg data refs",
                "vg DRAM bytes",
                "vg memory energy",
                "agreement",
            ],
            rows,
        ),  # fmt: skip
        "Agreement, stated:",
        "",
        *sentences,
        "",
        "The model counts the work the algorithm needs with ideal kernels (each operand read "
        "once, 16-bit and 1-bit arithmetic at their own cost); valgrind counts the kernels "
        "PyTorch and bitfed actually run on this x86 CPU, where the low-cost recipe's 16-bit "
        "operations take slower paths (see the run note below). Where the two disagree, the "
        "measured counts describe bitfed's current kernels on this CPU, the model what the "
        "algorithm needs.",
        "",
    ]
    if vg.get("note"):
        doc += [f"Valgrind run: {vg['note']}", ""]
    return doc


def _constants(res: dict[str, Any]) -> Doc:
    k = res["config"]["constants"]
    ops = [
        ("float32 add / multiply", f"{k['fp32_add_pj']:g} / {k['fp32_mult_pj']:g}"),
        ("16-bit float add / multiply", f"{k['fp16_add_pj']:g} / {k['fp16_mult_pj']:g}"),
        ("int8 add / multiply", f"{k['int8_add_pj']:g} / {k['int8_mult_pj']:g}"),
        ("int32 add / multiply", f"{k['int32_add_pj']:g} / {k['int32_mult_pj']:g}"),
        ("binary MAC (XNOR-popcount; derived: int8 add / 8)", f"{k['binary_mac_pj']:g}"),
        (
            "64-bit access: 8 KB / 32 KB / 1 MB SRAM, DRAM",
            f"{k['sram_8kb_pj']:g} / {k['sram_32kb_pj']:g} / {k['sram_1mb_pj']:g} / "
            f"{k['dram_pj']:g}",
        ),
    ]
    doc = [
        f"Constants (device class `{k['device_class']}`, every counted byte priced at "
        f"`{k['memory_level']}`): Horowitz, \"Computing's energy problem (and what we can do "
        'about it)", ISSCC 2014, 45 nm, in pJ; the derived entries and the rules are in '
        "`core/energy/constants.py` and `core/energy/count.py`.",
        "",
        *_table(["operation", "pJ"], [[name, value] for name, value in ops]),
    ]
    radios = []
    for name in ("wifi", "lte"):
        r = k.get(name)
        if not r:
            continue
        up = 8e-9 * (r["alpha_up_mw_per_mbps"] + r["beta_mw"] / r["throughput_up_mbps"])
        down = 8e-9 * (r["alpha_down_mw_per_mbps"] + r["beta_mw"] / r["throughput_down_mbps"])
        burst = 1e-3 * (r["promotion_mw"] * r["promotion_s"] + r["tail_mw"] * r["tail_s"])
        radios.append(
            [
                name,
                f"{up * 1e6:.2f}",
                f"{down * 1e6:.2f}",
                f"{burst:.3g}",
                f"{r['throughput_up_mbps']:g} / {r['throughput_down_mbps']:g}",
                r.get("source", ""),
            ]
        )
    if radios:
        doc += [
            "Radio (per device and round: bytes × J/byte, plus a promotion and a tail for each "
            "of the round's two bursts; Huang et al., \"A Close Examination of Performance and "
            'Power Characteristics of 4G LTE Networks", MobiSys 2012, power model `P = α_u·t_u '
            "+ α_d·t_d + β`):",
            "",
            *_table(
                [
                    "radio",
                    "µJ/byte up",
                    "µJ/byte down",
                    "J per burst",
                    "Mbit/s up / down",
                    "source",
                ],
                radios,
            ),  # fmt: skip
        ]
    return doc


def _federation(res: dict[str, Any]) -> Doc:
    """1-bit vs float32 FedAvg: modelled device energy over the 30-round MNIST federation."""
    fed = res.get("federation30")
    if not fed:
        return ["Federation energy: no `federation30.json` when this result was made.", ""]
    rows = []
    for run in fed["runs"]:
        rows.append(
            [
                run["partition"],
                run["variant"],
                f"{run['final_accuracy']:.4f}",
                _sig(sum(r["compute_j"] for r in run["wifi"]["rounds"])),
                _sig(run["wifi"]["total_j"]),
                _sig(run["lte"]["total_j"]),
            ]
        )
    ratios = fed.get("ratios") or []
    sentences = [
        f"- {r['partition']}: {r['baseline']} / {r['variant']} = **{_x(r['wifi'])} over Wi-Fi**, "
        f"**{_x(r['lte'])} over LTE**."
        for r in ratios
    ]
    rounds = max((len(run["wifi"]["rounds"]) for run in fed["runs"]), default=0)
    first = fed["runs"][0]["partition"] if fed["runs"] else ""
    tail = res["config"]["constants"].get("lte", {}).get("tail_s")
    tail_txt = f"{tail:.1f} s " if tail else ""
    return [
        f"Modelled energy of one device over the {rounds}-round MNIST federation of section 4b "
        f"(`{fed['source']}`; MLP, batch 100): per round, {fed['steps_per_round']} local steps × "
        "the recipe's modelled J/step above, plus the radio energy of the bytes that device "
        "actually sent and received that round (from the run's own per-round bytes), summed "
        "over the rounds. Nothing was retrained for this: "
        + (fed.get("refreshed") or "computed from the saved JSON")
        + ".",
        "",
        *_table(
            [
                "partition",
                "variant",
                "final accuracy",
                "compute J",
                "total J, Wi-Fi",
                "total J, LTE",
            ],
            rows,
        ),  # fmt: skip
        "1-bit vs float32 FedAvg, device energy (above 1: the 1-bit exchange spends less):",
        "",
        *sentences,
        "",
        "Where the joules go:",
        "",
        *[f"- {_shares(run)}." for run in fed["runs"] if run["partition"] == first],
        "",
        f"Over LTE each burst's promotion and {tail_txt}high-power tail cost the same for "
        "either model, so the ratio shrinks toward 1 there. Live runs record "
        "the same per-round figures in `metrics.json` (`energy_*` fields; column `J/dev` of the "
        "round table).",
        "",
    ]


def _shares(run: dict[str, Any]) -> str:
    """``variant: Wi-Fi a % compute, b % radio bytes, c % bursts; LTE ...`` of one run."""
    parts = []
    for radio, label in (("wifi", "Wi-Fi"), ("lte", "LTE")):
        rounds, total = run[radio]["rounds"], run[radio]["total_j"]
        compute = sum(r["compute_j"] for r in rounds)
        bursts = sum(r["radio_tail_j"] for r in rounds)
        rest = total - compute - bursts
        parts.append(
            f"{label} {100 * compute / total:.0f} % training, {100 * rest / total:.0f} % "
            f"bytes, {100 * bursts / total:.0f} % promotions and tails"
        )
    return f"{run['variant']} ({run['partition']}): " + "; ".join(parts)


def render_energy(res: dict[str, Any]) -> Doc:
    """The energy section: models, paper settings, valgrind, constants, federation."""
    return _models(res) + _paper_settings(res) + _valgrind(res) + _constants(res) + _federation(res)
