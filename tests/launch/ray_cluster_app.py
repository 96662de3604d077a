"""The ClientApp of the two-node Ray test: bitfed's handler plus a mod noting where it ran.

For each handled message the mod appends one JSON line to ``<output_dir>/where.jsonl``: round,
client, the Ray node that ran it, and a digest of the client's state file before and after.
"""

import hashlib
import json
import os
from pathlib import Path

from flwr.clientapp import ClientApp

from client.client_app import train
from client.mods import round_footprint
from client.state import client_identity, client_state_dir, state_path
from core import codec
from core.config import from_run_config


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else ""


def where(msg, context, call_next):
    """Record the Ray node and the state file's digest around the handler."""
    import ray

    cfg = from_run_config(context.run_config)
    node_config = dict(context.node_config)
    path = state_path(client_state_dir(cfg, node_config), client_identity(node_config))
    before = _digest(path)
    reply = call_next(msg, context)
    line = {
        "round": int(msg.content[codec.CONFIG][codec.SERVER_ROUND]),
        "client": int(node_config["partition-id"]),
        "node": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "before": before,
        "after": _digest(path),
    }
    with open(Path(cfg.output_dir) / "where.jsonl", "a") as fh:
        fh.write(json.dumps(line) + "\n")
    return reply


app = ClientApp(mods=[where, round_footprint])
app.train()(train)
