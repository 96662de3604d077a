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

Populations of 100,000 clients (issue 17). The partition is checked once before round 1
(:func:`core.federated.check_population`: an impossible one is one line). Flower 1.42's engine
does two things per client that do not scale, and :func:`population_scale` patches both for the
run (see its docstring): it parses ``pyproject.toml`` once per virtual node to build each node's
run config (about 3 ms and 7 kB a node: 300 s and 700 MB at 100,000), and its dispatch thread
asks the link state for every node's messages ten times a second, each ask scanning every stored
message (100,000 x M checks per sweep, on one of the cores the clients need).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from core import federated
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
    "population_scale",
    "backend_config",
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
    with population_scale():
        _run_simulation(
            num_supernodes=cfg.federation.num_clients,
            exit_event=_exit_event(),
            client_app=client_app,
            server_app=server_app,
            backend_config=backend_config(cfg),
            server_app_context=context,
            app_dir=str(APP_DIR),
            run=run,
            is_app=True,
        )


def backend_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """Flower's Ray backend config: a local Ray instance, or the cluster at ``ray_address``.

    Locally Ray gets every CPU of this machine; on a cluster (``federation.ray_address`` =
    ``auto`` or ``<head>:<port>``) Ray's own resources count and nothing is passed but the
    address. Each virtual client (a Ray actor) takes ``federation.client_cpus`` CPUs, so a
    cluster runs ``Σ_nodes floor(node CPUs / client_cpus)`` clients at a time.
    """
    fed = cfg.federation
    if fed.ray_address:
        init_args: dict[str, Any] = {"address": fed.ray_address}
    else:
        init_args = {"num_cpus": max(1, os.cpu_count() or 1), "include_dashboard": False}
    return {
        "client_resources": {"num_cpus": fed.client_cpus, "num_gpus": 0.0},
        "init_args": init_args,
    }


@contextmanager
def population_scale() -> Iterator[None]:
    """Patch Flower 1.42's simulation engine for large populations while the block runs.

    1. ``run_info_store.get_fused_config_from_dir`` (called once per virtual node to fuse
       ``pyproject.toml``'s config with the run's overrides) is memoized by (folder, overrides):
       every node shares one fused dict (each node's ``Context`` still gets its own copy, as
       Flower makes it).
    2. ``vce_api.add_messages_to_queue`` (the dispatch thread) asks the link state only for the
       nodes that have an undelivered message, found in one pass over the stored messages,
       instead of asking for each of the N nodes every 0.1 s (:func:`dispatch_pending`).

    Both keep Flower's behaviour (same run config, same messages, one per node per sweep); both
    are restored on exit. With another link state than the in-memory one, (2) falls back to
    Flower's own loop.
    """
    from flwr.compat.client import run_info_store
    from flwr.server.superlink.fleet.vce import vce_api

    fuse, sweep = run_info_store.get_fused_config_from_dir, vce_api.add_messages_to_queue
    fused: dict[tuple, Any] = {}

    def fuse_once(app_path: Any, override_config: dict[str, Any]) -> Any:
        key = (str(app_path), tuple(sorted((k, repr(v)) for k, v in override_config.items())))
        if key not in fused:
            fused[key] = fuse(app_path, override_config)
        return fused[key]

    run_info_store.get_fused_config_from_dir = fuse_once
    vce_api.add_messages_to_queue = functools.partial(dispatch_pending, sweep)
    try:
        yield
    finally:
        run_info_store.get_fused_config_from_dir = fuse
        vce_api.add_messages_to_queue = sweep


def dispatch_pending(fallback: Callable[..., None], state, queue, nodes_mapping, f_stop) -> None:
    """Flower's dispatch loop, asking only nodes with an undelivered message (see above).

    Every 0.1 s until ``f_stop``: one pass over the in-memory link state's stored messages (under
    its lock) finds the destination nodes still waiting; each of those is asked for one message
    (``state.get_message_ins(node_id, limit=1)``, which marks it delivered), as Flower's loop
    does for every node. Cost per sweep: O(messages), not O(nodes x messages).
    """
    store, lock = getattr(state, "message_ins_store", None), getattr(state, "lock", None)
    if not isinstance(store, dict) or lock is None:
        return fallback(state, queue, nodes_mapping, f_stop)
    while not f_stop.is_set():
        with lock:
            waiting = {
                m.metadata.dst_node_id for m in store.values() if not m.metadata.delivered_at
            }
        for node_id in waiting:
            if node_id in nodes_mapping:
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
        f_stop.wait(0.1)
    return None


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
    examples, empty = federated.check_population(cfg)  # an impossible partition: one line, now
    print(f"bitfed-sim: running in {run_dir}", flush=True)
    if empty:
        print(
            f"bitfed-sim: {cfg.federation.num_clients} clients over {examples} training examples: "
            f"{empty} hold none and answer without an update when sampled",
            flush=True,
        )
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
