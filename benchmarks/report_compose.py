"""The compose section of ``BENCHMARKS.md``, rendered from ``benchmarks/results/compose.json``.

A device of the compose federation is a memory-capped container; its footprint is the cgroup's
peak (``memory.max_usage_in_bytes`` on cgroup v1: anonymous memory plus the page cache the device
touched). The section shows this run's devices beside earlier layouts (the result's
``history``), the peak RSS of each process kind inside a device, and each kind's *import floor*
(a fresh process in the image that only imports what that kind imports), which bounds from below
what any change to bitfed's own code can save. :func:`render_compose` is registered in
``benchmarks/report.py``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEVICE_TARGET", "IMAGE_TARGET", "render_compose"]

DEVICE_TARGET = 400 * 2**20  # issue 14: a device (all its processes) peaks at <= 400 MiB
IMAGE_TARGET = 1_200_000_000  # issue 14: the device image is <= 1.2 GB

Doc = list[str]


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**20:,.0f}"


def _table(header: list[str], rows: list[list[str]]) -> Doc:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _layout_row(label: str, run: dict[str, Any]) -> list[str]:
    devices = [run["devices"][k] for k in sorted(run["devices"])]
    date = run.get("machine", {}).get("date", "?")
    return [
        f"`{label}` ({date})",
        run.get("topology", "?"),
        *[_mib(d.get("total")) for d in devices],
        f"{run['image_bytes']:,}" if run.get("image_bytes") else "–",
    ]


def _layouts(res: dict[str, Any]) -> Doc:
    header = ["run", "device layout", "device-1 (own image copy)", "device-2", "device-3",
              "image bytes"]  # fmt: skip
    rows = [_layout_row(label, run) for label, run in res.get("history", {}).items()]
    rows.append(_layout_row(f"{res['label']}, this run", res))
    worst = max(d["total"] for d in res["devices"].values())
    verdict = "met" if worst <= DEVICE_TARGET else "missed"
    image = res.get("image_bytes")
    image_verdict = "–" if image is None else ("met" if image <= IMAGE_TARGET else "missed")
    return [
        "Cgroup peak of each device (MiB; all of its processes), MLP on digits, "
        f"{len(res['rounds']) - 1} rounds, one torch thread per ClientApp. Device 1 runs from a "
        "private copy of the image, so it pays for every page it touches (devices of one image "
        "share its page cache otherwise).",
        "",
        *_table(header, rows),
        f"- This run: largest device peak **{_mib(worst)} MiB** against the 400 MiB target "
        f"(**{verdict}**); image **{image:,} bytes** against 1.2 GB (**{image_verdict}**).",
        "- Rounds: "
        + ", ".join(
            f"{k}: {v['accuracy']:.3f}" for k, v in sorted(res["rounds"].items(), key=_round)
        )
        + f" ({res['run_seconds']:.0f} s for the run).",
        "",
    ]


def _round(item: tuple[str, Any]) -> int:
    return int(item[0])


def _processes(res: dict[str, Any]) -> Doc:
    floors = res.get("import_floors", {})
    device = res["processes"]["supernode-1"]
    rows = []
    for kind in sorted(device):
        seen = device[kind]
        floor = floors.get(kind, {})
        rows.append([
            f"`{kind}`", str(seen["processes"]), _mib(seen["peak_rss"]),
            _mib(floor.get("peak_rss")), _mib(floor.get("anon")),
        ])  # fmt: skip
    floor_anon = sum(f["anon"] for f in floors.values()) if floors else None
    anon = res["devices"]["device-1"].get("anon")
    return [
        "Inside device 1: the processes its SuperNode runs, their peak RSS (VmHWM, shared "
        "library pages counted in each), and each kind's import floor: a fresh process in the "
        "image that only imports what that kind imports (Flower's CLI module; for the ClientApp "
        "also torch and bitfed's ClientApp module).",
        "",
        *_table(
            ["process", "processes seen", "peak RSS", "import floor RSS", "import floor anon"],
            rows,
        ),
        f"- The three import floors alone hold **{_mib(floor_anon)} MiB** of anonymous memory; "
        f"device 1's anonymous peak was {_mib(anon)} MiB. Flower 1.42 runs every device as "
        "three Python processes (SuperNode, the ClientApp executor it starts, one ClientApp per "
        "round), each importing most of `flwr` before any bitfed code runs.",
        "",
    ]


def render_compose(res: dict[str, Any]) -> Doc:
    """The compose section: device peaks before/after, process kinds, import floors."""
    return _layouts(res) + _processes(res)
