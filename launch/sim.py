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

The simulation needs both apps, so it lives above both: it loads them by the component strings
of ``[tool.flwr.app.components]`` in ``pyproject.toml``, exactly as ``flwr run`` does.
"""

from __future__ import annotations

import importlib
import json
import os
import tomllib
from typing import Any

from core.config import ExperimentConfig, to_run_config
from core.hydra_entry import APP_DIR, CONF_DIR, hydra_command
from core.runs import check_trained, run_folder
from glue.flower_env import apply_flower_env
from server.report import format_table, summary, write_outputs

__all__ = [
    "main",
    "run",
    "simulate",
    "load_component",
    "APP_DIR",
    "CONF_DIR",
    "METRICS_FILE",
]

METRICS_FILE = "metrics.json"  # what the ServerApp writes into the run folder


def load_component(kind: str) -> Any:
    """Return the app named by ``[tool.flwr.app.components].<kind>`` (serverapp, clientapp)."""
    with open(APP_DIR / "pyproject.toml", "rb") as fh:
        ref = tomllib.load(fh)["tool"]["flwr"]["app"]["components"][kind]
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def simulate(cfg: ExperimentConfig) -> None:
    """Run the federation of ``cfg`` on the Ray simulation engine (blocks until done)."""
    from flwr.app import Context, RecordDict
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    if not (APP_DIR / "pyproject.toml").exists():
        raise RuntimeError(f"bitfed-sim needs the project folder {APP_DIR} (pip install -e .)")
    client_app, server_app = load_component("clientapp"), load_component("serverapp")
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


def run(cfg: ExperimentConfig) -> dict[str, Any]:
    """Simulate ``cfg``, then print the table and summary and write the run folder's outputs.

    Raises ``RuntimeError`` when no round produced an update (every round skipped): such a run
    did not train, and must not end like a success.
    """
    run_dir = run_folder(cfg).resolve()
    cfg.output_dir = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    apply_flower_env(run_dir / ".flwr")
    print(f"bitfed-sim: running in {run_dir}", flush=True)
    simulate(cfg)
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    paths = write_outputs(run_dir, metrics)
    print(format_table(metrics["rounds"]))
    print(summary(metrics))
    print(f"wrote {run_dir / METRICS_FILE}, {paths['csv']}, {paths['png']}", flush=True)
    check_trained(metrics["rounds"])
    return metrics


def _quiet_flower_under_hydra(cfg: ExperimentConfig) -> dict[str, Any]:
    import logging

    logging.getLogger("flwr").propagate = False  # Flower logs once, not again via Hydra
    return run(cfg)


main = hydra_command("bitfed-sim", _quiet_flower_under_hydra)
