"""The wire section of ``BENCHMARKS.md``, rendered from ``benchmarks/results/wire.json``.

``benchmarks.wire`` counts every byte of each device's connections to the SuperLink port of a
real deployment and splits it by phase; this section puts those wire bytes beside the arrays
payload the strategy counts (sections 4 to 4c report only the payload), with the ratio float32
FedAvg / variant for both, and lists what the protocol spends its bytes on (Fleet API calls).
:func:`render_wire` is registered in ``benchmarks/report.py``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["render_wire"]

Doc = list[str]
PHASES = (
    ("one_off", "one-off (register, activate, run info, app bundle)"),
    ("waiting", "waiting for the first message"),
    ("rounds", "training rounds"),
    ("tail", "after the last reply"),
)


def _table(header: list[str], rows: list[list[str]]) -> Doc:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _kb(value: float) -> str:
    return f"{value / 1e3:,.1f}"


def _updown(row: dict[str, float], n: int) -> str:
    return f"{_kb(row['up'] / n)} / {_kb(row['down'] / n)}"


def _phases(res: dict[str, Any]) -> Doc:
    runs, n = res["runs"], res["settings"]["devices"]
    header = ["kB per device (up / down)", *(f"`{label}`" for label in runs)]
    rows = [
        [title, *(_updown(r["summary"]["wire"][key], n) for r in runs.values())]
        for key, title in PHASES
    ]
    wire = [f"**{_updown(r['summary']['wire']['total'], n)}**" for r in runs.values()]
    rows.append(["**total on the wire**", *wire])
    payload = [_updown(r["payload"], n) for r in runs.values()]
    rows.append(["arrays payload the strategy counted", *payload])
    rows.append(["rounds completed", *(
        f"{r['completed_rounds']}/{r['rounds']}" + ("" if r["reliable"] else " (**failed**)")
        for r in runs.values()
    )])  # fmt: skip
    rows.append(["seconds for the deployment", *(f"{r['seconds']:.0f}" for r in runs.values())])
    return _table(header, rows)


def _per_round(res: dict[str, Any]) -> Doc:
    rows = []
    for label, r in res["runs"].items():
        s = r["summary"]
        rows.append([
            f"`{label}`", _kb(s["wire_per_device_round"]), _kb(s["payload_per_device_round"]),
            _kb(s["overhead_per_device_round"]),
            f"{s['wire_per_device_round'] / s['payload_per_device_round']:.2f}"
            if s["payload_per_device_round"] else "–",
        ])  # fmt: skip
    return _table(
        ["variant", "wire kB per device-round", "payload kB", "overhead kB", "wire / payload"],
        rows,
    )


def _ratios(res: dict[str, Any]) -> Doc:
    ratios = res.get("ratios") or {}
    if not ratios:
        return []
    rows = [
        [f"`float32` / `{label}`", f"{r['payload']:.1f}×", f"{r['wire_rounds']:.1f}×",
         f"{r['wire_total']:.1f}×"]
        for label, r in ratios.items()
    ]  # fmt: skip
    return _table(
        ["ratio", "arrays payload", "wire, training rounds", "wire, whole run (incl. one-off)"],
        rows,
    )


def _calls(res: dict[str, Any]) -> Doc:
    first = next(iter(res["runs"].values()))
    n, label = res["settings"]["devices"], first["label"]
    rows = [
        [f"`{call}`", f"{row['calls'] / n:.1f}", _kb(row["up"] / n), _kb(row["down"] / n),
         f"{row['head'] / max(row['head'] + row['body'], 1):.0%}"]
        for call, row in first["summary"]["by_call"].items()
    ]  # fmt: skip
    return [
        f"Fleet API calls of one `{label}` device over the whole run (HTTP head = request line "
        "and headers, including the SuperNode's signature headers):",
        "",
        *_table(["call", "calls", "up kB", "down kB", "share that is HTTP head"], rows),
    ]


def _fab(res: dict[str, Any]) -> Doc:
    fab = res.get("fab_bytes")
    if not fab:
        return []
    saved = fab["without_exclude"] - fab["configured"]
    return [
        f"- App bundle (`flwr run`'s FAB, stored uncompressed; every device downloads it once "
        f"per run): **{fab['configured']:,} B**, {fab['without_exclude']:,} B before "
        f"`fab-exclude` left out the command-line modules ({saved:,} B less per device).",
    ]


def render_wire(res: dict[str, Any]) -> Doc:
    """The wire section: phases per device, per-round overhead, ratios, calls, app bundle."""
    settings = res["settings"]
    return [
        f"A real deployment on loopback ({settings['devices']} `bitfed-client` SuperNodes, "
        f"`bitfed-server --insecure`, MLP on digits, {settings['rounds']} rounds, every device "
        f"every round); counted: {settings['counted']} ({settings['transport']}), through a "
        "byte-counting proxy per device (`benchmarks/wire_count.py`: one-off = register/"
        "activate/run info/app bundle/deactivate calls; waiting = other calls until the app "
        "bundle has arrived, i.e. until the first training message is on the device; rounds = "
        "from there to the device's last reply; tail = after it).",
        "",
        *_phases(res),
        *_per_round(res),
        *_ratios(res),
        *_calls(res),
        *_fab(res),
        "- Protocol overhead grows with wall time, not with the model: an idle SuperNode polls "
        "`pull-messages` every 3 s and sends a heartbeat every ~24 s, each call carrying ~0.9 kB "
        "of HTTP head; Flower 1.42 hard-codes both intervals (`flwr/supernode/"
        "start_client_internal.py`, `HEARTBEAT_DEFAULT_INTERVAL`) and compresses neither "
        "bodies nor the app bundle, so none of them can be tuned from the command line.",
        "",
    ]
