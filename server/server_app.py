"""Flower ServerApp: config -> global model (or checkpoint) -> strategy.start -> outputs.

Read the run config, build the model through :mod:`core.experiment` (via :mod:`core.federated`),
continue from the last checkpoint of the same configuration when ``federation.resume`` is on,
run the rounds with the configured strategy (:mod:`server.strategies`) and let a
:class:`~server.recorder.RoundRecorder` evaluate, checkpoint and write ``metrics.json`` after
each. A run in which no round produced an update raises :class:`core.runs.RunFailed`, so Flower
reports it failed.
"""

from __future__ import annotations

import uuid
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from core import federated
from core.codec import model_spec, state_digest
from core.config import ExperimentConfig, from_run_config
from core.runs import check_trained, run_folder
from glue.records import state_to_record
from server.checkpoint import Checkpoint, fingerprint
from server.recorder import METRICS_FILE, RoundRecorder
from server.strategies import ResumeState, SignStrategy, build_strategy

__all__ = ["app", "run_server", "METRICS_FILE"]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point Flower calls: read the run config and run the federation."""
    run_server(grid, from_run_config(context.run_config))


def run_server(grid: Grid, cfg: ExperimentConfig) -> dict[str, Any]:
    """Run (or resume) ``federation.num_rounds`` rounds; return the content of metrics.json."""
    federated.set_threads(cfg)
    out = run_folder(cfg)
    ckpt_dir = Path(cfg.federation.checkpoint_dir) if cfg.federation.checkpoint_dir else out
    test = federated.load_split(cfg, "test")
    model = federated.new_model(cfg, test)
    spec = model_spec(model)
    ckpt = _start_from(cfg, ckpt_dir, fingerprint(cfg, spec), model, spec)
    strategy = build_strategy(
        cfg,
        spec,
        lineage=ckpt.lineage,
        resume=ResumeState(
            ckpt.version, ckpt.residual or None, ckpt.round, ckpt.last_delta, ckpt.node_version
        ),
    )
    if isinstance(strategy, SignStrategy):  # new nodes build version 0 from the seed
        strategy.offer_version_zero(state_digest(federated.version_zero(model, spec), spec))
    recorder = RoundRecorder(cfg, model, test, spec, strategy, ckpt, out, ckpt_dir)
    remaining = cfg.federation.num_rounds - ckpt.round
    if remaining > 0:
        strategy.start(
            grid=grid,
            initial_arrays=state_to_record(ckpt.global_state),
            num_rounds=remaining,
            timeout=cfg.federation.round_timeout,
            train_config=ConfigRecord(),
            evaluate_fn=recorder,
        )
    else:
        log(INFO, "all %d rounds already done (checkpoint in %s)", ckpt.round, ckpt_dir)
    result = recorder.write(finished=True)
    check_trained(result["rounds"])
    return result


def _start_from(cfg: ExperimentConfig, ckpt_dir: Path, fprint: str, model, spec) -> Checkpoint:
    """Return the checkpoint to continue from, or round 0 of a fresh run (a new lineage)."""
    ckpt = Checkpoint.load(ckpt_dir) if cfg.federation.resume else None
    if ckpt is not None and ckpt.fingerprint != fprint:
        raise ValueError(
            f"checkpoint in {ckpt_dir} was written for another configuration; use another "
            "output_dir/federation.checkpoint_dir or set federation.resume=false"
        )
    if ckpt is not None:
        log(INFO, "resuming from %s: %d rounds done, model version %d", ckpt_dir, ckpt.round,
            ckpt.version)  # fmt: skip
        return ckpt
    state = federated.version_zero(model, spec)  # what the clients can build themselves
    return Checkpoint(0, 0, uuid.uuid4().hex[:16], fprint, state, {}, [])
