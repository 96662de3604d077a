"""The per-round table, summary, ``rounds.csv`` and ``rounds.png`` of a run's ``metrics.json``.

Shared by ``bitfed-sim`` and ``bitfed-server``, which print the same table for a simulated and a
deployed federation.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from core.atomic import atomic_write

__all__ = ["format_table", "summary", "write_outputs"]

_COLUMNS = [
    ("round", "round", "{:d}"),
    ("accuracy", "acc", "{:.4f}"),
    ("loss", "loss", "{:.4f}"),
    ("replica_accuracy", "bcast acc", "{:.4f}"),
    ("uplink_bytes", "up B/client", "{:,.0f}"),
    ("downlink_bytes", "down B/client", "{:,.0f}"),
    ("uplink_ratio", "up x", "{:.1f}"),
    ("downlink_ratio", "down x", "{:.1f}"),
    ("peak_memory", "peak MiB", "{:.0f}"),
    ("energy_wifi_j", "J/dev wifi", "{:.3g}"),  # modelled device energy (core.energy)
    ("energy_lte_j", "J/dev LTE", "{:.3g}"),
    ("valid", "ok", "{:d}"),
    ("rejected", "bad", "{:d}"),
    ("empty", "empty", "{:d}"),  # clients without a training example (population > dataset)
]


def format_table(rounds: list[dict[str, Any]]) -> str:
    """Format the per-round table: accuracy, loss, bytes per client, ratios, memory, energy.

    ``J/dev`` is the modelled energy of the mean participating device in that round: local
    training plus its radio traffic over Wi-Fi or LTE (:func:`core.energy.device_round_fields`).
    """
    rows = [[title for _, title, _ in _COLUMNS]]
    for r in rounds:
        cells = []
        for key, _, fmt in _COLUMNS:
            value = r.get(key)
            if key == "peak_memory" and value:
                value = value / 2**20
            if isinstance(value, float) and fmt == "{:d}":
                value = int(value)
            cells.append(fmt.format(value) if value is not None else "-")
        if r.get("skipped"):
            cells[-1] += " (skipped)"
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)


def write_outputs(run_dir: Path, metrics: dict[str, Any]) -> dict[str, Path]:
    """Write ``rounds.csv`` and ``rounds.png`` (accuracy vs round and vs cumulative bytes)."""
    rounds = metrics["rounds"]
    keys = sorted({k for r in rounds for k in r}, key=lambda k: (k != "round", k))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rounds)
    csv_path = run_dir / "rounds.csv"
    data = buf.getvalue().encode()
    atomic_write(csv_path, lambda fh: fh.write(data))
    png_path = run_dir / "rounds.png"
    _plot(rounds, metrics["float32_bytes"], png_path)
    return {"csv": csv_path, "png": png_path}


def _plot(rounds: list[dict[str, Any]], float32_bytes: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["round"] for r in rounds]
    acc = [r["accuracy"] for r in rounds]
    cum, total = [], 0.0
    for r in rounds:
        total += r.get("uplink_bytes", 0.0) * r.get("valid", 0) + r.get(
            "downlink_bytes", 0.0
        ) * r.get("sampled", 0)
        cum.append(total / 2**20)
    energy = [r for r in rounds if "energy_cumulative_wifi_j" in r]
    fig, axes = plt.subplots(1, 3 if energy else 2, figsize=(15 if energy else 10, 4))
    a, b = axes[0], axes[1]
    a.plot(x, acc, marker="o")
    a.set(xlabel="round", ylabel="global test accuracy", title="accuracy vs round")
    b.plot(cum, acc, marker="o")
    b.set(
        xlabel="cumulative bytes, all clients, up + down (MiB)",
        ylabel="global test accuracy",
        title=f"accuracy vs traffic (float32 model: {float32_bytes / 2**20:.2f} MiB)",
    )
    if energy:
        c = axes[2]
        for radio, label in (("wifi", "Wi-Fi"), ("lte", "LTE")):
            xs = [r[f"energy_cumulative_{radio}_j"] for r in energy]
            c.plot(xs, [r["accuracy"] for r in energy], marker="o", label=label)
        c.set(
            xlabel="cumulative modelled energy per device (J)",
            ylabel="global test accuracy",
            title="accuracy vs device energy (modelled)",
        )
        c.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def summary(metrics: dict[str, Any]) -> str:
    """Summarize a run: final accuracy, bytes per client per round and ratios, time, skips."""
    rounds = [r for r in metrics["rounds"] if r["round"] > 0]
    cfg = metrics["config"]
    if not rounds:
        return "no round ran"
    last = rounds[-1]
    done = [r for r in rounds if not r.get("skipped")]
    if not done:
        return (
            f"no round produced an update: all {len(rounds)} rounds skipped "
            f"({sum(int(r.get('failed', 0)) for r in rounds)} client failures, "
            f"{sum(int(r.get('rejected', 0)) for r in rounds)} rejected replies, "
            f"{sum(int(r.get('empty', 0)) for r in rounds)} empty clients); final global "
            f"test accuracy {last['accuracy']:.4f} is the untrained model's"
        )

    def mean(key: str) -> float:
        vals = [r[key] for r in done if r.get(key)]
        return sum(vals) / len(vals) if vals else float("nan")

    later = [r["downlink_bytes"] for r in done[1:] if r.get("downlink_bytes")]
    down_later = sum(later) / len(later) if later else float("nan")
    f32 = metrics["float32_bytes"]
    up, seconds = mean("uplink_bytes"), metrics.get("seconds", 0.0)
    return "\n".join(
        [
            f"bitfed-sim: {cfg['dataset.name']}, {cfg['model.name']}/{cfg['recipe.name']}, "
            f"strategy {cfg['strategy.name']}, {cfg['federation.num_clients']} clients "
            f"({cfg['federation.clients_per_round']} per round), {len(rounds)} rounds",
            f"final global test accuracy {last['accuracy']:.4f} (loss {last['loss']:.4f})"
            + (
                f"; broadcast model (what clients hold) {last['replica_accuracy']:.4f}"
                if "replica_accuracy" in last
                else ""
            ),
            f"uplink {up:,.0f} B/client/round = float32/{f32 / up:.1f}; downlink after round 1 "
            f"{down_later:,.0f} B/client/round = float32/{f32 / down_later:.1f} "
            f"(float32 model {f32:,} B)",
            f"skipped rounds: {len(rounds) - len(done)}; wall time {seconds:.0f} s",
        ]
        + _energy_line(done)
    )


def _energy_line(done: list[dict[str, Any]]) -> list[str]:
    """Cumulative modelled device energy after the last round that has it (none: no line)."""
    last = next((r for r in reversed(done) if "energy_cumulative_wifi_j" in r), None)
    if last is None:
        return []
    compute = sum(r.get("energy_compute_j", 0.0) for r in done)
    return [
        f"modelled energy per device, all rounds: {last['energy_cumulative_wifi_j']:.3g} J over "
        f"Wi-Fi, {last['energy_cumulative_lte_j']:.3g} J over LTE ({compute:.3g} J of it local "
        "training; core.energy, not measured)"
    ]
