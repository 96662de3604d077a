"""The lowcost-bop section of ``BENCHMARKS.md``, rendered from ``benchmarks/results/bop.json``.

Issue 16's latent-free recipe against ``standard`` and ``lowcost`` (``python -m benchmarks.bop``):
the measured whole-step peak per model and recipe with its MemTracker categories, the process
peak, saved and state bytes, and the ``standard / recipe`` peak ratio beside the issue's targets;
the median step time of ``lowcost-bop`` against ``lowcost``; the MNIST MLP's test accuracy after
each epoch under both. Every figure is read from the result and every target is marked met or
missed from those figures; a part the run did not measure (``--quick``: the MLP only;
``--skip-accuracy``) is said to be missing. :func:`render_bop` is registered in
``benchmarks/report.py``.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.common import MIB

__all__ = ["PEAK_TARGETS", "ACCURACY_FLOOR", "ACCURACY_GAP_PP", "render_bop"]

Doc = list[str]

#: Issue 16: whole-step peak ratio ``standard / lowcost-bop`` at least this, per model.
PEAK_TARGETS = {"mlp": 4.0, "cnv": 8.0, "binarynet": 6.0}
#: Issue 16: lowcost-bop's MNIST MLP test accuracy at least this ...
ACCURACY_FLOOR = 0.95
#: ... and at most this many points below lowcost's.
ACCURACY_GAP_PP = 1.0
#: The issue's own words, printed as they are.
PEAK_TARGET_TEXT = "whole-step peak ratio ≥ 4× for the MLP, ≥ 8× for CNV, ≥ 6× for BinaryNet"
TIME_TARGET_TEXT = "no slower than lowcost for any model"
ACCURACY_TARGET_TEXT = "within 1 pp of lowcost and ≥ 95 %"

MODEL_NAMES = {"mlp": "MLP", "cnv": "CNV", "binarynet": "BinaryNet"}
RECIPES = ("standard", "lowcost", "lowcost-bop")
CATEGORIES = ("Parameter", "Buffer", "Gradient", "Optstate", "Activation", "Temp", "Other")
MET, MISSED = "**met**", "**missed**"

RECIPE_TEXT = (
    "`lowcost-bop` is `lowcost` without latent weights. Binary weights are stored packed, 1 bit "
    'each, and trained by Bop (Helwegen et al., "Latent Weights Do Not Exist", NeurIPS 2019, '
    "arXiv 1906.02107; `core/bop.py`): one float16 moment per weight, an exponential moving "
    "average of the layer's 1-bit weight gradients, flips a weight once it exceeds the "
    "threshold τ with the weight's own sign. The first and last layers are treated as in "
    "`lowcost` (binary in MLP, CNV and BinaryNet, so packed here too), and so is the "
    "real-valued state: batch norm, biases and full-precision layers (ResNetE-18's stem and "
    "classifier) keep float16 storage stepped by `LowCostAdam`; saved activations stay 1 bit "
    "and weight gradients binarized, as in `lowcost`."
)


def _mib(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value / MIB:,.{digits}f}"


def _x(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}×"


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def _table(header: list[str], rows: list[list[str]]) -> Doc:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _model(name: str) -> str:
    return MODEL_NAMES.get(name, name)


def _mark(ok: bool) -> str:
    return MET if ok else MISSED


def _models(res: dict[str, Any]) -> list[str]:
    """Models of this run in its own order: the config's, else those with any figure."""
    cfg = res.get("config") or {}
    seen = [r.get("model") for r in (res.get("memory") or []) + (res.get("timing") or [])]
    return list(dict.fromkeys([*(cfg.get("models") or []), *(m for m in seen if m)]))


def _not_run_models(res: dict[str, Any], models: list[str]) -> str:
    missing = [_model(m) for m in PEAK_TARGETS if m not in models]
    if not missing:
        return ""
    why = " (quick run: the MLP only)" if res.get("quick") else ""
    return f"{', '.join(missing)}: not run{why}."


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def _categories(measured: dict[str, Any]) -> str:
    cats = measured.get("peak_categories") or {}
    names = [c for c in CATEGORIES if c in cats] + [c for c in cats if c not in CATEGORIES]
    return ", ".join(f"{c} {_mib(cats[c])}" for c in names) or "no breakdown recorded"


def _peak_ratios(res: dict[str, Any]) -> dict[tuple[str, str], float | None]:
    """``standard / recipe`` of the measured whole-step peak, from the memory rows."""
    peak = {
        (r.get("model"), r.get("recipe")): (r.get("measured") or {}).get("peak_step_bytes")
        for r in res.get("memory") or []
    }
    return {
        (model, recipe): _ratio(peak.get((model, "standard")), value)
        for (model, recipe), value in peak.items()
    }


def _memory(res: dict[str, Any], models: list[str]) -> Doc:
    rows_of = res.get("memory") or []
    if not rows_of:
        return ["Memory: not measured in this run.", ""]
    ratios = _peak_ratios(res)
    doc = [
        "**Memory of one warm training step** (MiB), each model and recipe in a fresh "
        "subprocess with glibc returning freed blocks at once. *Measured peak*: every tensor "
        "alive at the step's high point, from `torch.distributed._tools.mem_tracker.MemTracker`; "
        "*process peak*: the same step as the rise of the process's resident-set high-water "
        "mark; *saved*: bytes autograd kept for backward; *state*: weights + gradients + "
        "optimizer state + buffers between steps. The ratio is `standard ÷ recipe` of the "
        "measured peak.",
        "",
    ]
    for model in models:
        mine = [r for r in rows_of if r.get("model") == model]
        if not mine:
            doc += [f"{_model(model)}: memory not measured in this run.", ""]
            continue
        batches = sorted({str(r["batch"]) for r in mine if "batch" in r})
        doc += [f"*{_model(model)}, batch {', '.join(batches) or '?'}:*", ""]
        rows, lines = [], []
        for r in mine:
            m = r.get("measured") or {}
            rows.append(
                [
                    r.get("recipe", "?"),
                    _mib(m.get("peak_step_bytes")) if m else "not measured",
                    _mib(m.get("peak_step_process_bytes")),
                    _mib(m.get("saved_bytes")),
                    _mib((m.get("state") or {}).get("total")),
                    _x(ratios.get((model, r.get("recipe")))),
                    m.get("peak_where", "–"),
                ]
            )
            if m:
                lines.append(f"- `{r.get('recipe', '?')}` at the peak: {_categories(m)} MiB.")
        doc += _table(
            [
                "recipe",
                "measured peak MiB",
                "process peak MiB",
                "saved MiB",
                "state MiB",
                "standard ÷ recipe (peak)",
                "peak reached in",
            ],
            rows,
        )
        doc += lines + [""]
    return doc


def _peak_targets(res: dict[str, Any], models: list[str]) -> Doc:
    ratios = _peak_ratios(res)
    doc = [
        f"**Issue 16's memory targets** (`standard ÷ lowcost-bop`): {PEAK_TARGET_TEXT}.",
        "",
    ]
    for model, target in PEAK_TARGETS.items():
        if model not in models:
            continue
        got = ratios.get((model, "lowcost-bop"))
        if got is None:
            doc.append(f"- {_model(model)}: target ≥ {target:g}×; not measured in this run.")
            continue
        doc.append(
            f"- {_model(model)}: measured {_x(got)} against ≥ {target:g}× — {_mark(got >= target)}."
        )
    if skipped := _not_run_models(res, models):
        doc.append(f"- {skipped}")
    return doc + [""]


# --------------------------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------------------------


def _timing(res: dict[str, Any], models: list[str]) -> Doc:
    rows_of = {r.get("model"): r for r in res.get("timing") or []}
    cfg = res.get("config") or {}
    threads = (res.get("machine") or {}).get("threads", "?")
    if not rows_of:
        return [f"**Step time**: not measured in this run (target: {TIME_TARGET_TEXT}).", ""]
    doc = [
        f"**Step time** with {threads} torch thread(s): median seconds of one training step "
        f"over {cfg.get('rounds', '?')} fresh process(es) per recipe × {cfg.get('steps', '?')} "
        "timed steps each, `lowcost` and `lowcost-bop` interleaved; wall clock and CPU time "
        "(`time.process_time`, which other processes on a shared machine do not inflate).",
        "",
    ]
    rows, verdicts = [], {"wall clock": [], "CPU time": []}
    for model in models:
        r = rows_of.get(model)
        if r is None:
            continue
        wall, cpu = r.get("step_seconds") or {}, r.get("cpu_seconds") or {}
        w = _ratio(wall.get("lowcost-bop"), wall.get("lowcost"))
        c = _ratio(cpu.get("lowcost-bop"), cpu.get("lowcost"))
        for kind, value in (("wall clock", w), ("CPU time", c)):
            if value is not None:
                verdicts[kind].append((model, value))
        rows.append(
            [
                _model(model),
                str(r.get("batch", "?")),
                _seconds(wall.get("lowcost")),
                _seconds(wall.get("lowcost-bop")),
                _x(w, 3),
                _seconds(cpu.get("lowcost")),
                _seconds(cpu.get("lowcost-bop")),
                _x(c, 3),
            ]
        )
    doc += _table(
        [
            "model",
            "batch",
            "lowcost s (wall)",
            "lowcost-bop s (wall)",
            "lowcost-bop ÷ lowcost (wall)",
            "lowcost s (CPU)",
            "lowcost-bop s (CPU)",
            "lowcost-bop ÷ lowcost (CPU)",
        ],
        rows,
    )
    parts = []
    for kind, got in verdicts.items():
        if not got:
            continue
        slower = [f"{_model(m)} {_x(v, 3)}" for m, v in got if v > 1.0]
        parts.append(
            f"{kind} {_mark(not slower)}"
            + (f" (slower: {', '.join(slower)})" if slower else " (ratio ≤ 1 for every model)")
        )
    doc.append(
        f"Target of issue 16, {TIME_TARGET_TEXT}: "
        + ("; ".join(parts) if parts else "no ratio measured")
        + "."
        + (f" {_not_run_models(res, models)}" if _not_run_models(res, models) else "")
    )
    return doc + [""]


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if value < 1 else f"{value:.3f}"


# --------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------


def _final(row: dict[str, Any]) -> float | None:
    history = row.get("history") or []
    if history and history[-1].get("test_accuracy") is not None:
        return history[-1]["test_accuracy"]
    return row.get("test_accuracy")


def _accuracy(res: dict[str, Any]) -> Doc:
    runs = {r.get("recipe"): r for r in res.get("accuracy") or []}
    target = f"target of issue 16 for `lowcost-bop`: {ACCURACY_TARGET_TEXT}"
    if not runs:
        why = " (`--skip-accuracy`)" if "accuracy" in res else ""
        return [f"**MNIST MLP accuracy**: not run{why}; {target}, not judged.", ""]
    epochs = max(len(r.get("history") or []) or r.get("epochs", 0) for r in runs.values())
    doc = [
        f"**MNIST MLP accuracy**: trained centrally for {epochs} epoch(s) (batch 100, lr 1e-3, "
        "seed 0; `core.train.fit`), test accuracy on the 10,000 test images after every epoch "
        "(`core.train.evaluate`).",
        "",
    ]
    rows = []
    for recipe in ("lowcost", "lowcost-bop"):
        r = runs.get(recipe)
        if r is None:
            rows.append([recipe, "not run", "–", "–"])
            continue
        acc = _final(r)
        rows.append(
            [
                recipe,
                "–" if acc is None else f"{acc:.4f}",
                str(len(r.get("history") or []) or r.get("epochs", "?")),
                "–" if r.get("seconds") is None else f"{r['seconds']:,.0f}",
            ]
        )
    doc += _table(["recipe", "final test accuracy", "epochs", "seconds"], rows)
    for recipe in ("lowcost", "lowcost-bop"):
        if r := runs.get(recipe):
            accs = ", ".join(f"{h['test_accuracy']:.4f}" for h in r.get("history") or [])
            doc.append(f"- `{recipe}` after each epoch: {accs or '–'}")
    bop = (runs.get("lowcost-bop") or {}).get("bop")
    if bop:
        doc.append(f"- Bop's settings: γ = {bop.get('gamma')}, τ = {bop.get('threshold')}.")
    doc.append("")
    low, got = _final(runs.get("lowcost") or {}), _final(runs.get("lowcost-bop") or {})
    if low is None or got is None:
        missing = "lowcost" if low is None else "lowcost-bop"
        return doc + [f"Target ({ACCURACY_TARGET_TEXT}): not judged, `{missing}` not run.", ""]
    gap = 100 * (got - low)
    near, floor = gap >= -ACCURACY_GAP_PP, got >= ACCURACY_FLOOR
    doc.append(
        f"`lowcost-bop` − `lowcost` after epoch {epochs}: {gap:+.2f} pp. Target of issue 16, "
        f"{ACCURACY_TARGET_TEXT}: {_mark(near and floor)} (within 1 pp of lowcost, read as at "
        f"most 1 pp below it: {_mark(near)}, {gap:+.2f} pp; ≥ 95 %: {_mark(floor)}, "
        f"{100 * got:.2f} %)."
    )
    return doc + [""]


# --------------------------------------------------------------------------------------------
# The section
# --------------------------------------------------------------------------------------------


def render_bop(res: dict[str, Any]) -> Doc:
    """Markdown lines of the lowcost-bop section for the ``bop`` result ``res``."""
    models = _models(res)
    doc = [RECIPE_TEXT, ""]
    doc += _memory(res, models)
    doc += _peak_targets(res, models)
    doc += _timing(res, models)
    doc += _accuracy(res)
    return doc
