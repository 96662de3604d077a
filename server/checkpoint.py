"""Per-round server checkpoint: global model, round counter, version, downlink residual, history.

It also keeps what lets a resumed server go on sending 1-bit deltas instead of full models: the
last downlink delta (version - 1 -> version, codec arrays) and the version each node id's
replica was last known to hold.

Written atomically (temp file + fsync + rename + directory fsync) after every round, so a
``kill -9`` at any moment leaves either the previous or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_write
from core.codec import ModelSpec
from core.config import ExperimentConfig

__all__ = ["Checkpoint", "CHECKPOINT_FILE", "fingerprint"]

CHECKPOINT_FILE = "checkpoint.npz"


def fingerprint(cfg: ExperimentConfig, spec: ModelSpec) -> str:
    """Hash what must not change across a resume: model, recipe, data, split, rule, seed."""
    key = {
        "model": cfg.model.name,
        "recipe": cfg.recipe.name,
        "dataset": cfg.dataset.name,
        "partition": [cfg.partition.kind, cfg.partition.alpha, cfg.partition.seed],
        "strategy": cfg.strategy.name,
        "num_clients": cfg.federation.num_clients,
        "seed": cfg.seed,
        "spec": spec.digest,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Checkpoint:
    """Everything the server needs to continue after round ``round``."""

    round: int  # completed rounds (skipped ones included)
    version: int  # applied aggregates
    lineage: str
    fingerprint: str
    global_state: dict[str, np.ndarray]
    residual: dict[str, np.ndarray]
    history: list[dict[str, Any]] = field(default_factory=list)
    last_delta: dict[str, np.ndarray] | None = None  # codec arrays of the last downlink delta
    node_version: dict[int, int] = field(default_factory=dict)  # node id -> replica version

    def save(self, folder: Path) -> Path:
        """Write ``folder/checkpoint.npz`` atomically; return its path."""
        meta = {
            "round": self.round,
            "version": self.version,
            "lineage": self.lineage,
            "fingerprint": self.fingerprint,
            "history": self.history,
            "node_version": {str(k): int(v) for k, v in self.node_version.items()},
        }
        arrays = {f"global/{k}": np.asarray(v, np.float32) for k, v in self.global_state.items()}
        arrays |= {f"residual/{k}": np.asarray(v, np.float32) for k, v in self.residual.items()}
        for k, v in (self.last_delta or {}).items():
            arrays[f"delta/{k}"] = np.asarray(v)
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        path = Path(folder) / CHECKPOINT_FILE
        atomic_write(path, lambda fh: np.savez(fh, **arrays))
        return path

    @classmethod
    def load(cls, folder: Path) -> Checkpoint | None:
        """Read ``folder/checkpoint.npz``; ``None`` when there is none.

        Raises ``ValueError`` naming the file when it exists but cannot be read.
        """
        path = Path(folder) / CHECKPOINT_FILE
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode())
                parts: dict[str, dict[str, np.ndarray]] = {
                    "global": {},
                    "residual": {},
                    "delta": {},
                }
                for key in data.files:
                    kind, _, name = key.partition("/")
                    if kind in parts:
                        parts[kind][name] = data[key]
                nodes = {int(k): int(v) for k, v in meta.get("node_version", {}).items()}
        except (OSError, ValueError, KeyError, AttributeError, zipfile.BadZipFile) as exc:
            raise ValueError(
                f"checkpoint {path} is unreadable ({exc}); delete it or set federation.resume=false"
            ) from None
        return cls(
            int(meta["round"]),
            int(meta["version"]),
            str(meta["lineage"]),
            str(meta["fingerprint"]),
            parts["global"],
            parts["residual"],
            list(meta.get("history", [])),
            parts["delta"] or None,
            nodes,
        )
