"""``bitfed-sim``: a federated simulation of N clients on this machine (Hydra over ``conf/``).

``bitfed-sim`` composes ``conf/`` (e.g. ``bitfed-sim strategy=majority federation.num_rounds=10
experiment=mnist_iid``), runs the ServerApp and ClientApp on Flower's Ray simulation engine
(one CPU per virtual client), then prints a per-round table, writes ``metrics.json``,
``rounds.csv`` and ``rounds.png`` into the run folder and ends with a summary.

Why ``flwr.simulation.run_simulation._run_simulation``: it is the in-process engine behind
Flower's public ``run_simulation`` and, unlike it, takes a ``Run`` whose ``override_config``
reaches every ClientApp's ``context.run_config`` (fused with ``[tool.flwr.app.config]`` of the
app directory) and a ServerApp ``Context`` with the same run config; the public function passes
an empty run config. ``flwr run`` against a private managed SuperLink would work too but costs a
SuperLink, a SuperExec and a process per message; ``flwr run .`` stays available for that path.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from core.config import ExperimentConfig, register_configs, to_run_config

__all__ = [
    "main",
    "run",
    "simulate",
    "format_table",
    "summary",
    "write_outputs",
    "APP_DIR",
    "CONF_DIR",
]

APP_DIR = Path(__file__).resolve().parents[1]  # holds pyproject.toml ([tool.flwr.app])
CONF_DIR = APP_DIR / "conf"
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
    ("valid", "ok", "{:d}"),
    ("rejected", "bad", "{:d}"),
]


def _flower_env(run_dir: Path) -> None:
    """Flower hygiene: no telemetry, no update check, no runtime installs, a private home."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("FLWR_HOME", str(run_dir / ".flwr"))
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPU: quiet Ray's tip


def simulate(cfg: ExperimentConfig) -> None:
    """Run the federation of ``cfg`` on the Ray simulation engine (blocks until done)."""
    from flwr.app import Context, RecordDict
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    from client.client_app import app as client_app
    from server.server_app import app as server_app

    if not (APP_DIR / "pyproject.toml").exists():
        raise RuntimeError(f"bitfed-sim needs the project folder {APP_DIR} (pip install -e .)")
    run_config = dict(to_run_config(cfg))
    # What _run_simulation does when it creates the Run itself, plus the run config.
    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    run.override_config = run_config
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(
        run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    cpus = max(1, os.cpu_count() or 1)
    _run_simulation(
        num_supernodes=cfg.federation.num_clients,
        exit_event=_exit_event(),
        client_app=client_app,
        server_app=server_app,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cpus, "include_dashboard": False},
        },
        server_app_context=context,
        app_dir=str(APP_DIR),
        run=run,
        is_app=True,
    )


def _exit_event():
    from flwr.supercore.telemetry import EventType

    return EventType.PYTHON_API_RUN_SIMULATION_LEAVE


def format_table(rounds: list[dict[str, Any]]) -> str:
    """Format the per-round table: accuracy, loss, bytes per client, ratios, memory."""
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
    from core.atomic import atomic_write

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

    from core.atomic import atomic_write

    x = [r["round"] for r in rounds]
    acc = [r["accuracy"] for r in rounds]
    cum, total = [], 0.0
    for r in rounds:
        total += r.get("uplink_bytes", 0.0) * r.get("valid", 0) + r.get(
            "downlink_bytes", 0.0
        ) * r.get("sampled", 0)
        cum.append(total / 2**20)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(x, acc, marker="o")
    a.set(xlabel="round", ylabel="global test accuracy", title="accuracy vs round")
    b.plot(cum, acc, marker="o")
    b.set(
        xlabel="cumulative bytes, all clients, up + down (MiB)",
        ylabel="global test accuracy",
        title=f"accuracy vs traffic (float32 model: {float32_bytes / 2**20:.2f} MiB)",
    )
    for ax in (a, b):
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
    )


def run(cfg: ExperimentConfig) -> dict[str, Any]:
    """Simulate ``cfg``, then print the table and summary and write the run folder's outputs."""
    from server.server_app import METRICS_FILE, run_folder

    run_dir = run_folder(cfg).resolve()
    cfg.output_dir = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _flower_env(run_dir)
    print(f"bitfed-sim: running in {run_dir}", flush=True)
    simulate(cfg)
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    paths = write_outputs(run_dir, metrics)
    print(format_table(metrics["rounds"]))
    print(summary(metrics))
    print(f"wrote {run_dir / METRICS_FILE}, {paths['csv']}, {paths['png']}", flush=True)
    return metrics


def main() -> None:
    """Console entry point ``bitfed-sim`` (Hydra: overrides as ``key=value`` arguments)."""
    import logging

    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    register_configs()

    @hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
    def _main(dcfg) -> None:
        logging.getLogger("flwr").propagate = False  # Flower logs once, not again via Hydra
        cfg = OmegaConf.to_object(dcfg)
        if not cfg.output_dir:
            cfg.output_dir = HydraConfig.get().runtime.output_dir
        run(cfg)

    _main()
