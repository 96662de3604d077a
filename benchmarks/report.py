"""Regenerate ``BENCHMARKS.md`` from ``benchmarks/results/*.json`` alone (no hand-typed figures).

``python -m benchmarks.report [--results DIR] [--out FILE]``. Every number in the document is
read from a result file; every section states the machine, threads, torch version and date of
the run it comes from, and says so when its benchmark was skipped, failed or has not run.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import MIB, REPO_ROOT, RESULTS_DIR, machine_line, read_json, write_bytes
from benchmarks.report_arm64 import render_arm64, render_arm64_compose
from benchmarks.report_bop import render_bop
from benchmarks.report_compose import render_compose
from benchmarks.report_energy import render_energy
from benchmarks.report_wire import render_wire

__all__ = ["ORDER", "title_of", "load_results", "render", "write_report", "main"]

#: Benchmarks in document order, with their section titles.
ORDER = {
    "memory": "1. Memory of one training step",
    "speed": "2. Training-step time",
    "max_batch": "3. Largest batch that fits a memory budget",
    "federation": "4. Federation on MNIST: accuracy vs bytes",
    "federation30": "4b. Federation on MNIST: 30 rounds of one local epoch",
    "federation-compact": "4c. Federation with compact client state",
    "wire": "4d. Bytes on the wire of a real deployment",
    "federation-partial": "4e. Federation with partial participation: 50 clients, 5 per round",
    "server_cost": "5. Server cost of aggregation",
    "hostile": "6. Hostile clients",
    "hostile-short": "6b. Hostile clients: shortened runs",
    "gpu": "7. GPU figures",
    "bop": "8. Latent-free training (lowcost-bop): memory, time, accuracy",
    "federation30-bop": "8b. Latent-free training in a federation: 30 rounds on MNIST",
    "energy": "9. Energy per training step and per federated round (modelled)",
    "scale": "10. Simulation at scale: 1,000 to 100,000 clients",
    "compose": "11. Compose federation: device footprint and image",
    "arm64": "12. aarch64 vs x86-64: the same training on both CPUs",
    "arm64_compose": "12b. A compose federation with an arm64 device",
}
RECIPE_NOTE = (
    "`standard` is stock PyTorch BNN training (float32 latent weights, float32 autograd saving "
    "float activations, `torch.optim.Adam`); `lowcost` is bitfed's method (Wang et al., arXiv "
    "2102.04270: 1-bit saved activations, binarized weight gradients, l1 batch norm, float16 "
    "weights, Adam moments and activation gradients); `lowcost-po2` adds 5-bit power-of-two "
    "activation gradients."
)

Doc = list[str]


# --------------------------------------------------------------------------------------------
# Loading and small formatting helpers
# --------------------------------------------------------------------------------------------


def load_results(folder: Path) -> dict[str, dict[str, Any]]:
    """Every ``<name>.json`` in ``folder`` that has a ``name`` field, keyed by it."""
    out = {}
    for path in sorted(Path(folder).glob("*.json")):
        data = read_json(path)
        if isinstance(data, dict) and "name" in data:
            out[data["name"]] = data
    return out


def _mib(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value / MIB:,.{digits}f}"


def _x(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}×"


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "–" if value is None else fmt.format(value)


def _table(header: list[str], rows: list[list[str]]) -> Doc:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _provenance(res: dict[str, Any]) -> str:
    m = res.get("machine", {})
    load = m.get("load_avg_1min")
    end = m.get("load_avg_1min_end")
    load_txt = (
        ""
        if load is None
        else f"; load average {load:.1f}" + ("" if end is None else f" → {end:.1f}")
    )
    quick = " **quick run (reduced settings)**" if res.get("quick") else ""
    return (
        f"*Run:* `{res.get('command', '?')}` — {machine_line(m)}; git {m.get('git') or '?'}; "
        f"{res.get('seconds', 0):.0f} s{load_txt}.{quick}"
    )


def _image(name: str, results_dir: Path, doc_dir: Path) -> Doc:
    png = results_dir / f"{name}.png"
    if not png.exists():
        return []
    try:
        rel = png.resolve().relative_to(doc_dir.resolve())
    except ValueError:
        rel = png.resolve()
    return [f"![{name}]({rel.as_posix()})", ""]


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _memory(res: dict[str, Any]) -> Doc:
    ratios = {(r["model"], r["batch"], r["recipe"]): r for r in res["ratios"]}
    rows = []
    for row in res["rows"]:
        key = (row["model"], row["batch"], row["recipe"])
        m = row.get("measured")
        r = ratios.get(key, {})
        paper = r.get("paper") if row["recipe"] == "lowcost" else None
        paper_txt = "–" if paper is None else f"{paper:.2f}× (b{r['paper_batch']})"
        rows.append(
            [
                row["model"],
                str(row["batch"]),
                row["recipe"],
                _mib(row["analytical"]["total"]),
                _mib(m["peak_step_bytes"])
                if m
                else "failed¹"
                if "error" in row
                else "not measured",
                _mib(m["peak_step_process_bytes"]) if m else "–",
                _mib(m["saved_bytes"], 2) if m else "–",
                _mib(m["state"]["total"]) if m else "–",
                _x(r.get("analytical")),
                _x(r.get("peak_step")),
                paper_txt,
                (m["peak_where"] if m else "–"),
            ]
        )
    doc = [
        "Bytes of one warm training step on CPU (MiB). *Modelled*: the paper-style analytical "
        "model (docs/method.md §5, `core.memory.analytical_memory`). *Measured peak*: every tensor "
        "alive at the step's high point (weights, gradients, optimizer state, the batch, saved "
        "activations, temporaries), from `torch.distributed._tools.mem_tracker.MemTracker`; "
        "*process peak*: the same step seen as the rise of the process's resident-set "
        "high-water mark (fresh subprocess, glibc returning freed blocks at once). *Saved*: "
        "bytes autograd kept for backward. *State*: weights + gradients + optimizer state + "
        "buffers between steps. Reductions are `standard / recipe`.",
        "",
        RECIPE_NOTE,
        "",
    ]
    doc += _table(
        [
            "model",
            "batch",
            "recipe",
            "modelled",
            "measured peak",
            "process peak",
            "saved",
            "state",
            "× modelled",
            "× measured",
            "paper ×",
            "peak reached in",
        ],
        rows,
    )
    doc.append(
        "The paper's reductions are *modelled* figures at batch 100 (ResNetE-18: 4096 on "
        "ImageNet) that count weights, saved activations and gradient buffers; a measured peak "
        "also holds the input batch, temporaries and optimizer scratch, so it can differ from "
        "the model in both directions."
    )
    doc.append("")
    errors = [
        f"{r['model']} b{r['batch']} {r['recipe']}: {r['error']}"
        for r in res["rows"]
        if "error" in r
    ]
    if errors:
        doc += ["¹ Measurement failed in this run: " + "; ".join(errors) + ".", ""]
    return doc


def _speed(res: dict[str, Any]) -> Doc:
    rows = []
    for m in res["models"]:
        for recipe, v in m["recipes"].items():
            rows.append(
                [
                    m["model"],
                    str(m["batch"]),
                    recipe,
                    f"{v['step_seconds'] * 1e3:,.1f}",
                    f"{v['samples_per_second']:,.0f}",
                    f"{v['ratio_to_standard']:.2f}× ({v['ratio_q1']:.2f}–{v['ratio_q3']:.2f})",
                    str(m["rounds"]),
                ]
            )
    threads = res.get("machine", {}).get("threads")
    doc = [
        f"Median wall time of one training step (forward, loss, backward, optimizer step) with "
        f"**{threads} torch thread(s)**, per recipe. The recipes of a model alternate inside "
        "each round (the order rotates), and the ratio is the median of the per-round ratios "
        "`t_recipe / t_standard` (interquartile range in brackets); above 1 means slower than "
        "stock training.",
        "",
    ]
    return doc + _table(
        ["model", "batch", "recipe", "step ms", "samples/s", "× standard (IQR)", "rounds"], rows
    )


def _max_batch_cell(found: dict[str, Any]) -> str:
    if found["status"] == "extrapolated" and found["batch"] == 0 and "peak_at_upper" in found:
        return (
            f"0 (batch {found['upper']} needs {found['peak_at_upper'] / MIB:,.0f} MiB; "
            "smaller batches not probed)"
        )
    if found["status"] == "extrapolated":
        return f"~{found['estimate']:,} (extrapolated; {found['batch']:,} measured)"
    if found["status"] == "none":
        if "peak_at_upper" in found:
            return f"0 (batch {found['upper']} needs {found['peak_at_upper'] / MIB:,.0f} MiB)"
        return "0"
    return f"{found['batch']:,}"


def _max_batch(res: dict[str, Any]) -> Doc:
    labels = list(res["config"]["budgets"])
    rows = []
    by_key = {(r["model"], r["recipe"]): r for r in res["results"]}
    for r in res["results"]:
        rows.append([r["model"], r["recipe"]] + [_max_batch_cell(r["budgets"][b]) for b in labels])
    gains = []
    for (model, recipe), r in by_key.items():
        std = by_key.get((model, "standard"))
        if recipe != "lowcost" or std is None:
            continue
        for b in labels:
            lo, st = r["budgets"][b], std["budgets"][b]
            if lo["status"] == "bracketed" and st["status"] == "bracketed" and st["batch"]:
                gains.append(f"{model} within {b}: {lo['batch'] / st['batch']:.1f}×")
    doc = [
        "Largest batch whose **measured** whole-step peak of training tensors (MemTracker, as "
        "in section 1; the Python interpreter and torch's own code are not counted) stays "
        "within the budget. Found by a bracketing secant search over real training steps: "
        f"the answer fits, and a batch at most {res['config']['tolerance']:.0%} larger was "
        "measured not to. *Extrapolated*: the next probe would have taken longer than "
        f"{res['config']['max_probe_seconds']:.0f} s on this CPU, so the value is the secant "
        "prediction from the measured peaks, and the largest batch actually measured to fit "
        "is given beside it.",
        "",
    ]
    doc += _table(["model", "recipe", *labels], rows)
    if gains:
        doc += [
            "Batch gained by `lowcost` over `standard` (both measured): " + "; ".join(gains) + ".",
            "",
        ]
    return doc


def _federation(res: dict[str, Any]) -> Doc:
    cfg = res["config"]
    rows = []
    f32 = {(r["partition"]): r for r in res["runs"] if r["strategy"] == "fedavg"}
    for r in res["runs"]:
        base = f32.get(r["partition"])
        fewer = (
            base["total_bytes"] / r["total_bytes"]
            if base and r is not base and r["total_bytes"]
            else None
        )
        up_ratio = (
            r["float32_bytes"] / r["uplink_bytes_per_client_round"]
            if r["uplink_bytes_per_client_round"]
            else None
        )
        rows.append(
            [
                r["partition"],
                r["variant"],
                f"{r['final_accuracy']:.4f}",
                f"{100 * (r['final_accuracy'] - base['final_accuracy']):+.2f} pp"
                if base and r is not base
                else "–",
                f"{r['last3_accuracy']:.4f}" if "last3_accuracy" in r else "–",
                f"{r['final_broadcast_accuracy']:.4f}"
                if "final_broadcast_accuracy" in r and r is not base
                else "–",
                _num(r["uplink_bytes_per_client_round"]),
                _num(r["downlink_bytes_per_client_round_after_first"]),
                _x(up_ratio, 1),
                _mib(r["total_bytes"], 2),
                _x(fewer, 1),
                _mib(r["client_peak_memory"], 0),
                _num(r["wall_seconds"]),
            ]
        )
    doc = [
        f"`bitfed-sim` (`launch.sim.run`, Flower's simulation engine) on real MNIST with the MLP: "
        f"{cfg['clients']} clients, "
        + (
            f"{cfg['clients_per_round']} sampled at random each round, "
            if cfg.get("clients_per_round", cfg["clients"]) < cfg["clients"]
            else "all sampled every round, "
        )
        + f"{cfg['rounds']} rounds, "
        f"{cfg['max_batches'] or 'one epoch of'} local batches of {cfg['batch_size']} per round, "
        "1 torch thread per client, the clients' learning rate "
        + (
            "decaying over the rounds (cosine to 0.1×)"
            if cfg.get("lr_schedule") == "cosine"
            else "constant"
        )
        + "; the global model (the server's aggregate) is evaluated on the 10,000 test images "
        "after each round, and so is the *broadcast model* the clients hold (the aggregate "
        "minus what the 1-bit downlink has not carried yet). "
        "`float32 fedavg` trains with the `standard` recipe and averages "
        "float32 models with Flower's FedAvg. Bytes are Flower's serialized records as the "
        "strategy measured them; *total* sums uplink and downlink over all clients and rounds. "
        + _first_downlink(res)
        + " Afterwards both directions carry 1 bit per weight plus one scale per tensor and the "
        "float16 batch-norm state.",
        "",
    ]
    doc += _table(
        [
            "partition",
            "variant",
            "final acc",
            "vs fedavg",
            "last 3 rounds",
            "broadcast model",
            "up B/client/round",
            "down B/client/round (after 1st)",
            "uplink vs float32",
            "total MiB",
            "fewer bytes than fedavg",
            "client peak MiB (RSS)",
            "wall s",
        ],
        rows,
    )
    per_round = []
    for r in res["runs"]:
        accs = ", ".join(f"{x['accuracy']:.3f}" for x in r["rounds"])
        per_round.append(f"- {r['partition']}, {r['variant']}: {accs}")
    doc += ["Test accuracy after each round (round 0 = the initial model):", "", *per_round, ""]
    return doc


def _federation_compact(res: dict[str, Any]) -> Doc:
    note = (
        "The short federation of section 4 with `federation.compact_state=true` (issue 17): "
        "each client keeps only its replica's version and a float16 error-feedback residual, "
        "and rebuilds the replica from the deltas the server published "
        "(`core/replica_store.py`). Compare the rows with section 4's `lowcost + aligned`."
    )
    return [note, ""] + _federation(res)


def _federation_bop(res: dict[str, Any]) -> Doc:
    note = (
        "Issue 16's federation criterion: `lowcost-bop` (binary weights trained by Bop, its "
        "replies the bits of its weights, docs/method.md §2h) against `lowcost`, both with the "
        "rule `mean`, 10 clients all sampled, 30 rounds of one local epoch, seed 0. Target: "
        "within 1 pp of `lowcost + mean`."
    )
    doc = [note, ""] + _federation(res)
    by = {(r["partition"], r["variant"]): r["final_accuracy"] for r in res["runs"]}
    for partition in dict.fromkeys(r["partition"] for r in res["runs"]):
        bop, low = by.get((partition, "lowcost-bop + mean")), by.get((partition, "lowcost + mean"))
        if bop is not None and low is not None:
            gap = 100 * (bop - low)
            verdict = "**met**" if gap >= -1.0 else "**missed**"
            doc += [f"- {partition}: `lowcost-bop` − `lowcost` = {gap:+.2f} pp ({verdict}).", ""]
    return doc


def _federation_partial(res: dict[str, Any]) -> Doc:
    """Issue 15's participation experiment: a sample of the clients each round."""
    note = (
        "Partial participation (issue 15): each round the server samples a few of the clients, "
        "so a sampled client's replica is usually several versions old. It gets the chain of "
        "1-bit deltas it missed when that is smaller than the float16 model, else the model "
        "(`server/strategies/downlink.py`, `federation.delta_history`); a client never seen "
        "builds version 0 from the seed. Targets: final accuracy within 1 pp of float32 FedAvg "
        "and within 3 pp of it at every round after the first fifth of the run."
    )
    doc = [note, ""] + _federation(res)
    runs = res["runs"]
    for partition in dict.fromkeys(r["partition"] for r in runs):
        base = next(
            (r for r in runs if r["partition"] == partition and r["strategy"] == "fedavg"), None
        )
        for r in runs:
            if r["partition"] != partition or base is None or r is base:
                continue
            n = len(r["rounds"]) - 1
            after = [
                (a["round"], 100 * (a["accuracy"] - b["accuracy"]))
                for a, b in zip(r["rounds"], base["rounds"])
                if a["round"] > n / 5
            ]
            worst = min(after, key=lambda x: x[1]) if after else None
            final = 100 * (r["final_accuracy"] - base["final_accuracy"])
            down = base["downlink_bytes_per_message"] / r["downlink_bytes_per_message"]
            up = base["uplink_bytes_per_client_round"] / r["uplink_bytes_per_client_round"]
            doc += [
                f"- {partition}, {r['variant']}: final {final:+.2f} pp vs float32 FedAvg "
                f"({'**met**' if final >= -1.0 else '**missed**'}, target within 1 pp)"
                + (
                    f"; worst round after the first fifth: round {worst[0]}, {worst[1]:+.2f} pp "
                    f"({'**met**' if worst[1] >= -3.0 else '**missed**'}, target within 3 pp)"
                    if worst
                    else ""
                )
                + f"; downlink per message {_num(r['downlink_bytes_per_message'])} B vs "
                f"{_num(base['downlink_bytes_per_message'])} B ({down:.1f}× fewer), uplink "
                f"{up:.1f}× fewer.",
            ]
        doc.append("")
    return doc


def _scale(res: dict[str, Any]) -> Doc:
    cfg = res["config"]
    doc = [
        f"`bitfed-sim` on MNIST (MLP, recipe `{cfg['recipe']}`, rule `{cfg['strategy']}`, "
        f"{cfg['max_batches']} local batches of {cfg['batch_size']} per round, one torch thread "
        "per client), one population per fresh process, client state "
        + ("compact (version + float16 residual)" if cfg["compact_state"] else "float32")
        + ". *Seconds per round* from the server's per-round clock (sampling, the clients' "
        "work, aggregation, evaluation on the 10,000 test images, checkpoint); *start-up* is "
        "the rest of the wall time (Ray, registering the virtual nodes). *Peak RSS*: the largest "
        "summed resident set of the whole process tree, polled every 0.5 s. *Disk per client*: "
        "the state files of the clients that took part, divided by their number; the server's "
        "published deltas (what compact clients rebuild their replica from) apart.",
        "",
    ]
    rows = []
    for r in res["runs"]:
        empty = sum(e or 0 for e in r.get("empty", []))
        rows.append(
            [
                f"{r['population']:,}",
                str(r["per_round"]),
                str(r["rounds"]),
                f"{r['seconds_per_round']:.1f}" if r.get("seconds_per_round") else "–",
                f"{r['startup_seconds']:.0f}",
                _mib(r["peak_tree_rss_mib"] * MIB, 0),
                f"{r['clients_with_state']:,}",
                _num(r["bytes_per_client"]),
                _mib(r["server_published_bytes"], 1),
                str(empty),
                str(r["skipped"]),
                f"{r['final_accuracy']:.4f}",
            ]
        )
    doc += _table(
        [
            "clients",
            "sampled per round",
            "rounds",
            "s per round",
            "start-up s",
            "peak RSS MiB",
            "clients with state",
            "disk B per client",
            "server deltas MiB",
            "empty replies",
            "skipped rounds",
            "final accuracy",
        ],
        rows,
    )
    big = [r for r in res["runs"] if r.get("bytes_per_client")]
    if big:
        worst = max(r["bytes_per_client"] for r in big)
        verdict = "**met**" if worst <= 1e6 else "**missed**"
        doc += [
            f"Issue 17's disk target, at most 1 MB per client that took part (MLP): largest "
            f"{worst:,.0f} B, {verdict}. A sampled client without examples answers `empty` "
            "(counted, not a failure); the accuracy is the machinery's, not a training result "
            f"({cfg['max_batches']} local batches per round).",
            "",
        ]
    return doc


def _first_downlink(res: dict[str, Any]) -> str:
    """What round 1 sent the 1-bit clients in this result (it changed with the seed-built
    version 0: a run measured before that shows the float16 model)."""
    first = [
        r["rounds"][1].get("downlink_bytes")
        for r in res.get("runs", [])
        if r.get("strategy") != "fedavg" and len(r.get("rounds", [])) > 1
    ]
    if first and all(b == 0 for b in first):
        return (
            "Round 1 sends the 1-bit clients no model: each builds version 0 from the run's "
            "seed and checks it against the server's digest."
        )
    return "Round 1's downlink to the 1-bit clients is the full model in float16 once."


def _server_cost(res: dict[str, Any]) -> Doc:
    ratio = {(r["model"], r["k"], r["rule"]): r for r in res["ratios"]}
    rows = []
    for r in res["rows"]:
        if "skipped" in r:
            rows.append(
                [
                    r["model"],
                    str(r["k"]),
                    r["rule"],
                    "skipped",
                    "–",
                    _mib(r["input_bytes"]),
                    "–",
                    "–",
                ]
            )
            continue
        q = ratio.get((r["model"], r["k"], r["rule"]), {})
        rows.append(
            [
                r["model"],
                str(r["k"]),
                r["rule"],
                f"{r['seconds']:.3f}" + ("†" if r.get("timed_under_tracemalloc") else ""),
                _mib(r["peak_bytes"]),
                _mib(r["input_bytes"]),
                _x(q.get("seconds"), 1),
                _x(q.get("working_memory"), 1),
            ]
        )
    skipped = sorted({r["skipped"] for r in res["rows"] if "skipped" in r})
    doc = [
        "One round of `BitFedStrategy.aggregate_train` over K random client replies of each "
        "model's real tensor layout, end to end: validation and decoding, the rule, the "
        "server's error-feedback re-binarization for the downlink, the new global record. "
        "*Working MiB*: tracemalloc peak during one call above what was traced when it began "
        "(numpy buffers and Python bytes; the replies the server already holds are *replies "
        f"MiB*). *Seconds*: best of {res['config']['repeats']} further untraced call(s); † marks "
        "the traced call's own time, kept where an untraced repeat would have taken over "
        f"{res['config'].get('max_untraced_seconds', 20):g} s (tracing adds a few ms per reply). "
        "The last two columns are FedAvg's figure divided by the rule's.",
        "",
    ]
    doc += _table(
        [
            "model",
            "K",
            "rule",
            "seconds",
            "working MiB",
            "replies MiB",
            "FedAvg time ÷",
            "FedAvg memory ÷",
        ],
        rows,
    )
    if skipped:
        doc += ["Skipped: " + "; ".join(skipped) + ".", ""]
    return doc


def _gpu(res: dict[str, Any]) -> Doc:
    doc = ["GPU figures (CUDA `torch.cuda.max_memory_allocated` and CNV throughput):", ""]
    rows = []
    for r in res.get("memory", []):
        rows.append(
            [
                r["model"],
                str(r["batch"]),
                r["recipe"],
                _mib(r["cuda_max_allocated_bytes"]),
                _x(r.get("reduction")),
            ]
        )
    if rows:
        doc += _table(["model", "batch", "recipe", "max allocated MiB", "× vs standard"], rows)
    rows = [
        [t["recipe"], f"{t['samples_per_second']:,.0f}", _x(t.get("relative"))]
        for t in res.get("throughput", [])
    ]
    if rows:
        doc += _table(["recipe", "CNV samples/s", "× standard"], rows)
    return doc


def _runs_span(runs: list[dict[str, Any]]) -> str:
    """When the cached runs of a result ran and what they cost (the JSON may only assemble
    them: its own date and seconds are then the assembly's)."""
    done = sorted(r["finished"] for r in runs if r.get("finished"))
    if not done:
        return ""
    minutes = sum(r.get("wall_seconds", 0.0) for r in runs) / 60
    loads = [r["load_avg_1min"] for r in runs if r.get("load_avg_1min") is not None]
    load = f", load average {min(loads):.1f}–{max(loads):.1f}" if loads else ""
    revisions: dict[str, int] = {}
    for r in runs:
        revisions[r.get("git") or "unrecorded"] = revisions.get(r.get("git") or "unrecorded", 0) + 1
    code = ", ".join(f"{n} at git {rev}" for rev, n in revisions.items())
    return (
        f"; they finished between {done[0]} and {done[-1]}, {minutes:.0f} minutes of runs{load}"
        f" (code: {code})"
    )


def _hostile(res: dict[str, Any]) -> Doc:
    cfg = res["config"]
    bounds = cfg.get("strategy_defaults", {})
    seeds = cfg.get("seeds", [])
    doc = [
        f"{cfg['dataset']} {cfg['model']}, {cfg['clients']} clients all sampled, {cfg['rounds']} "
        + (
            f"rounds of {cfg['max_batches']} local batches of {cfg['batch_size']}, "
            if cfg.get("max_batches")
            else f"rounds of {cfg.get('local_epochs', 1)} local epoch (batch {cfg['batch_size']}), "
        )
        + f"{cfg.get('lr_schedule', 'cosine')} client learning rate, partitions "
        f"{', '.join(cfg['partitions'])} (Dirichlet: alpha 0.5), seeds {seeds} (split, model "
        f"and data order); {cfg.get('client_threads', 1)} torch thread per client. The devices "
        "with partition-id < f are hostile (`bitfed-sim federation.attack=<attack> "
        "federation.attackers=<f>`); the server's bounds are the defaults "
        + ", ".join(f"`strategy.{k}={v}`" for k, v in bounds.items())
        + (f", with overrides {cfg['set']}" if cfg.get("set") else "")
        + f". {len(res['runs'])} of {res.get('planned', len(res['runs']))} planned runs done"
        + _runs_span(res["runs"])
        + ".",
        "",
        "Attacks (`client/hostile.py`; *g* the global model, *w* the honest local model):",
        "",
    ]
    doc += [f"- `{name}`: {text}" for name, text in cfg.get("definitions", {}).items()]
    doc += [
        "",
        "Final global test accuracy (mean over the seeds run, and the worst seed), the drop from "
        "the same rule's clean run of the same seed in percentage points (mean, worst seed), and "
        "how many replies the server clipped per round.",
        "",
    ]
    rows = []
    for r in res["summary"]:
        drop = "–" if r["drop_pp"] is None else f"{r['drop_pp']:+.1f} / {r['worst_drop_pp']:+.1f}"
        rows.append(
            [
                r["partition"],
                r["attack"],
                r["rule"],
                str(r["attackers"]),
                f"{r['accuracy']:.4f}",
                f"{r['worst_accuracy']:.4f}",
                drop,
                f"{r['clipped_per_round']:.1f}",
                ",".join(map(str, r["seeds"])),
            ]
        )
    doc += _table(
        [
            "partition",
            "attack",
            "rule",
            "hostile",
            "accuracy",
            "worst seed",
            "drop pp (mean / worst)",
            "clipped/round",
            "seeds",
        ],
        rows,
    )
    v = res.get("verdicts", {})
    rule = v.get("default_rule", "?")
    lines = []
    if v.get("default_worst_drop_pp") is not None:
        ok = "meets" if v["default_within_2pp_of_clean"] else "**misses**"
        lines.append(
            f"- Default rule `{rule}`: worst drop under any attack, 1 or 2 hostile, any seed run: "
            f"{v['default_worst_drop_pp']:+.1f} pp ({ok} the 2 pp target)."
        )
    for partition in ("iid", "dirichlet"):
        gap = v.get(f"{partition}_default_minus_fedavg_pp")
        if gap is not None:
            lines.append(
                f"- {partition}: clean `{rule}` minus clean float32 `fedavg`: {gap:+.2f} pp"
                + (" (target: within 1 pp on IID)." if partition == "iid" else ".")
            )
        ratio = v.get(f"{partition}_default_uplink_ratio")
        if ratio is not None:
            lines.append(f"- {partition}: `{rule}` uplink {ratio:.1f}x smaller than float32.")
        gap = v.get(f"{partition}_majority_minus_mean_pp")
        if gap is not None:
            lines.append(
                f"- {partition}: clean `majority` minus clean `mean`: {gap:+.2f} pp (target: "
                "within 2 pp)."
            )
    return doc + lines + ([""] if lines else [])


RENDERERS: dict[str, Callable[[dict[str, Any]], Doc]] = {
    "memory": _memory,
    "speed": _speed,
    "max_batch": _max_batch,
    "federation": _federation,
    "federation30": _federation,
    "federation-compact": _federation_compact,
    "federation-partial": _federation_partial,
    "wire": render_wire,
    "federation30-bop": _federation_bop,
    "scale": _scale,
    "server_cost": _server_cost,
    "gpu": _gpu,
    "bop": render_bop,
    "hostile": _hostile,
    "hostile-short": _hostile,
    "energy": render_energy,
    "compose": render_compose,
    "arm64": render_arm64,
    "arm64_compose": render_arm64_compose,
}


def title_of(name: str) -> str:
    """Section title of benchmark ``name`` (unknown ones get a numbered title of their own)."""
    if name in ORDER:
        return ORDER[name]
    return f"{len(ORDER) + 1}. {name.replace('_', ' ').capitalize()}"


def _generic(res: dict[str, Any]) -> Doc:
    """A benchmark without a renderer here: point at its JSON (and show its picture)."""
    return [f"Figures: `benchmarks/results/{res['name']}.json` (no table renderer yet).", ""]


# --------------------------------------------------------------------------------------------
# Summary: the figures a reader choosing a tool looks for first
# --------------------------------------------------------------------------------------------


def _ok(results: dict[str, dict[str, Any]], name: str) -> dict[str, Any] | None:
    res = results.get(name)
    return res if res and "skipped" not in res and "error" not in res else None


def _summary(results: dict[str, dict[str, Any]]) -> Doc:
    out: Doc = []
    if mem := _ok(results, "memory"):
        parts = []
        for r in mem["ratios"]:
            if r["recipe"] != "lowcost" or r["batch"] != min(
                x["batch"] for x in mem["ratios"] if x["model"] == r["model"]
            ):
                continue
            measured = r.get("peak_step")
            parts.append(
                f"{r['model']} (batch {r['batch']}): "
                + (f"**{measured:.2f}×** measured, " if measured else "")
                + f"{r['analytical']:.2f}× modelled, paper {r['paper']:.2f}×"
            )
        out.append("- **Training memory**, `standard` ÷ `lowcost`: " + "; ".join(parts) + ".")
    if speed := _ok(results, "speed"):
        parts = [
            f"{m['model']} {m['recipes']['lowcost']['ratio_to_standard']:.2f}×"
            for m in speed["models"]
        ]
        ratios = [m["recipes"]["lowcost"]["ratio_to_standard"] for m in speed["models"]]
        verdict = (
            "slower than stock training on this CPU"
            if min(ratios) > 1
            else "faster than stock training on this CPU"
            if max(ratios) < 1
            else "below 1 = faster than stock training on this CPU, above 1 = slower"
        )
        out.append(
            f"- **Step time** of `lowcost` relative to `standard` "
            f"({speed['machine'].get('threads')} thread(s), CPU): "
            + ", ".join(parts)
            + f" ({verdict})."
        )
    if mb := _ok(results, "max_batch"):
        labels = list(mb["config"]["budgets"])
        label = "256 MiB" if "256 MiB" in labels else labels[-1]
        parts = []
        for r in mb["results"]:
            if r["recipe"] in ("standard", "lowcost"):
                found = r["budgets"][label]
                parts.append(f"{r['model']} {r['recipe']} {_max_batch_cell(found)}")
        out.append(f"- **Largest batch within {label}**: " + "; ".join(parts) + ".")
    for name in ("federation30", "federation"):
        if fed := _ok(results, name):
            out += _federation_summary(fed)
    if sc := _ok(results, "server_cost"):
        parts = []
        rule = "aligned" if any(r["rule"] == "aligned" for r in sc["ratios"]) else "mean"
        for model in dict.fromkeys(r["model"] for r in sc["ratios"]):
            done = [
                r
                for r in sc["ratios"]
                if r["model"] == model and r["rule"] == rule and "seconds" in r
            ]
            if done:
                top = max(done, key=lambda r: r["k"])
                parts.append(
                    f"{model} K = {top['k']}: {top['seconds']:.1f}× faster, "
                    f"{top['working_memory']:.1f}× less working memory"
                )
        if parts:
            out.append(
                f"- **Server aggregation**, 1-bit `{rule}` vs float32 FedAvg (largest K "
                "measured for both): " + "; ".join(parts) + "."
            )
    return out


def _federation_summary(fed: dict[str, Any]) -> Doc:
    """One line per partition: each variant's final accuracy, bytes and gap to fedavg."""
    cfg, out = fed["config"], []
    local = f"{cfg['max_batches']} local batches" if cfg["max_batches"] else "one local epoch"
    for part in dict.fromkeys(r["partition"] for r in fed["runs"]):
        runs = {r["variant"]: r for r in fed["runs"] if r["partition"] == part}
        base = next((r for r in runs.values() if r["strategy"] == "fedavg"), None)
        parts = []
        for name, r in runs.items():
            txt = f"{name} {r['final_accuracy']:.3f} with {_mib(r['total_bytes'], 1)} MiB"
            if base is not None and r is not base and r["total_bytes"]:
                gap = 100 * (r["final_accuracy"] - base["final_accuracy"])
                txt += (
                    f" ({base['total_bytes'] / r['total_bytes']:.1f}× fewer bytes, {gap:+.1f} pp)"
                )
            parts.append(txt)
        out.append(
            f"- **Federation, MNIST {part}**, test accuracy after {cfg['rounds']} rounds of "
            f"{local}: " + "; ".join(parts) + "."
        )
    return out


def _range(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}×" if abs(hi - lo) < 0.005 else f"{lo:.2f}–{hi:.2f}×"


def _po2_sentence(memory: dict[str, Any] | None) -> str:
    """What ``lowcost-po2`` buys over ``lowcost``, modelled and measured (section 1)."""
    if not memory:
        return ""
    by = {(r["model"], r["batch"], r["recipe"]): r for r in memory["ratios"]}
    gains = [  # ratios are standard / recipe, so this is peak(po2) / peak(lowcost)
        by[(r["model"], r["batch"], "lowcost")]["peak_step"] / r["peak_step"]
        for r in memory["ratios"]
        if r["recipe"] == "lowcost-po2"
        and r.get("peak_step")
        and by.get((r["model"], r["batch"], "lowcost"), {}).get("peak_step")
    ]
    if not gains:
        return ""
    return (
        " `lowcost-po2` (5-bit power-of-two activation gradients) is smaller than `lowcost` in "
        "the analytical model, but its measured peak is "
        f"{_range(gains)} that of `lowcost`: PyTorch's autograd hands gradients between "
        "layers in the activations' 16-bit dtype, so the 5-bit codes are not stored packed."
    )


def _choosing(results: dict[str, dict[str, Any]]) -> Doc:
    """Three paragraphs for a reader choosing a tool, with the deciding figures filled in."""
    memory, speed = _ok(results, "memory"), _ok(results, "speed")
    fed_name = "federation30" if _ok(results, "federation30") else "federation"
    fed = _ok(results, fed_name)
    mem_txt = time_txt = fed_txt = ""
    stock_txt = "."
    if speed:
        faster = [
            m["model"] for m in speed["models"] if m["recipes"]["lowcost"]["ratio_to_standard"] > 1
        ]
        if len(faster) == len(speed["models"]):
            stock_txt = " and step time matters most (it is the faster recipe on this CPU)."
        elif faster:
            stock_txt = f"; on this CPU its step is faster only for {', '.join(faster)}."
        else:
            stock_txt = "; on this CPU it is not faster than `lowcost` for any model measured."
    if memory:
        measured = [
            r["peak_step"]
            for r in memory["ratios"]
            if r["recipe"] == "lowcost" and r.get("peak_step")
        ]
        if measured:
            mem_txt = f" Its measured peak memory per step is {_range(measured)} smaller here."
    if speed:
        ratios = [m["recipes"]["lowcost"]["ratio_to_standard"] for m in speed["models"]]
        word = (
            "slower"
            if min(ratios) > 1
            else "faster"
            if max(ratios) < 1
            else "faster for some models, slower for others"
        )
        time_txt = (
            f" On this CPU a `lowcost` step takes {_range(ratios)} the time of a `standard` one"
            + (" (slower): the saving is memory, not time." if word == "slower" else f" ({word}).")
        )
    if fed:
        f32 = {r["partition"]: r for r in fed["runs"] if r["strategy"] == "fedavg"}
        gaps, fewer = [], []
        for r in fed["runs"]:
            base = f32.get(r["partition"])
            if base is None or r is base or not r["total_bytes"]:
                continue
            fewer.append(base["total_bytes"] / r["total_bytes"])
            gaps.append(100 * (r["final_accuracy"] - base["final_accuracy"]))
        if fewer:
            fed_txt = (
                f" In section {ORDER[fed_name].split('.')[0]} bitfed's federations sent "
                f"{_range(fewer)} fewer bytes in "
                f"total and ended {min(gaps):+.2f} to {max(gaps):+.2f} accuracy points "
                f"from float32 FedAvg after {fed['config']['rounds']} rounds."
            )
    return [
        "- **Stock PyTorch BNN training** is the `standard` recipe in every table: float32 "
        "latent weights, float32 autograd state and `torch.optim.Adam`. Choose it when memory "
        "is plentiful" + stock_txt,
        "- **bitfed's `lowcost` recipe** keeps 1 bit per saved activation and float16 state."
        + mem_txt
        + time_txt
        + " Look up your device's budget in section 3."
        + _po2_sentence(memory),
        "- **Float32 FedAvg** sends 32 bits per weight each way every round; bitfed's 1-bit "
        "rules send one bit per weight plus a scale per tensor and the float16 batch-norm state "
        "(a new client builds version 0 from the run's seed; a stale one gets the missed 1-bit "
        "steps or, when smaller, the float16 model)."
        + fed_txt
        + " Section 5 gives what the server pays per round.",
        "",
    ]


# --------------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------------


def render(results: dict[str, dict[str, Any]], results_dir: Path, doc_dir: Path) -> str:
    """The whole of BENCHMARKS.md for ``results`` (keyed by benchmark name)."""
    dates = sorted({r["machine"]["date"] for r in results.values() if "machine" in r})
    total = sum(float(r.get("seconds", 0.0)) for r in results.values())
    doc: Doc = [
        "# bitfed benchmarks",
        "",
        "<!-- Generated by `python -m benchmarks.report` from benchmarks/results/*.json. "
        "Do not edit: run `make bench` (or `make bench-quick`) to regenerate. -->",
        "",
        "Every figure below was produced by a run of the scripts in `benchmarks/` on the "
        "machine named in its section"
        + (f" ({dates[0]} – {dates[-1]})" if len(dates) > 1 else f" ({dates[0]})" if dates else "")
        + "; this file is regenerated from their JSON output by `python -m benchmarks.report`."
        + _run_log(results_dir, total)
        + " Reproduce with `make bench` "
        "(`python -m benchmarks.run_all`; `--quick` or `make bench-quick` for reduced settings "
        "in a few minutes); sections 4b, 4d, 6, 10, 12 and 12b run only on request "
        "(`make bench ARGS='--only federation30,wire,hostile,scale,arm64,arm64_compose'`); "
        "4c, 4e and 8b are `benchmarks.federation` runs with the options shown in their sections.",
        "",
        "## At a glance",
        "",
    ]
    summary = _summary(results)
    doc += (summary or ["No benchmark has produced results yet: run `make bench`."]) + [""]
    doc += ["## Choosing between bitfed, stock PyTorch BNN training and float32 FedAvg", ""]
    doc += _choosing(results)
    extra = sorted(n for n in results if n not in ORDER)
    for name in [*ORDER, *extra]:
        doc += [f"## {title_of(name)}", ""]
        res = results.get(name)
        if res is None:
            if name == "gpu":
                doc += [
                    "Not run: no GPU result in `benchmarks/results/` (run "
                    "`python -m benchmarks.gpu` on a machine with CUDA).",
                    "",
                ]
            else:
                doc += [f"Not run yet: `python -m benchmarks.{name}`.", ""]
            continue
        doc += [_provenance(res), ""]
        if "skipped" in res:
            doc += [f"**Skipped:** {res['skipped']}", ""]
            continue
        if "error" in res:
            doc += [f"**Failed in this run:** `{res['error']}`", ""]
            continue
        try:
            doc += RENDERERS.get(name, _generic)(res)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:  # a stale layout
            doc += [
                f"**Cannot render this result** ({type(exc).__name__}: {exc}); rerun "
                f"`python -m benchmarks.{name}`.",
                "",
            ]
        doc += _image(name, results_dir, doc_dir)
    return "\n".join(doc).rstrip() + "\n"


def _jobs(jobs: int) -> str:
    return f", {jobs} at a time," if jobs > 1 else ""


def _run_log(results_dir: Path, total: float) -> str:
    """One sentence on how long the last ``run_all`` took (``run_all.json``), else the sum."""
    path = Path(results_dir) / "run_all.json"
    log = read_json(path) if path.exists() else None
    if not isinstance(log, dict) or "benchmarks" not in log:
        return f" These runs took {total / 60:.0f} minutes together."
    parts = ", ".join(
        f"{name} {t['seconds'] / 60:.1f}" + ("" if t.get("exit") == 0 else " (failed)")
        for name, t in log["benchmarks"].items()
    )
    return (
        f" The last `python -m benchmarks.run_all`{' --quick' if log.get('quick') else ''} "
        f"({log['threads']} torch thread(s)) ran {len(log['benchmarks'])} benchmark(s) in one go"
        f"{_jobs(log.get('jobs', 1))} "
        f"in {log['seconds'] / 60:.1f} minutes ({log['started']} – {log['finished']}; minutes "
        f"each: {parts}); all result files together took {total / 60:.0f} minutes."
    )


def write_report(results_dir: Path = RESULTS_DIR, out: Path = REPO_ROOT / "BENCHMARKS.md") -> Path:
    """Render ``results_dir`` into ``out`` atomically; return ``out``."""

    text = render(load_results(results_dir), Path(results_dir), Path(out).parent)
    write_bytes(Path(out), text.encode())
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.report [--results DIR] [--out FILE]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.error(f"no results folder {args.results}; run python -m benchmarks.run_all first")
    print(f"wrote {write_report(args.results, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
