"""What a client keeps on its own disk between rounds: the global-model replica and its residual.

Flower's ``Context.state`` lives in memory and is gone after a SuperNode restart (new node id,
empty state), so the replica of the global model (to apply 1-bit downlink updates to) and the
error-feedback residual are saved here, atomically, keyed by a stable client identity from the
node config. A state whose ``lineage`` (the server's run identity) differs is somebody else's
model: it is ignored, and the server's full model replaces it.

With ``federation.compact_state`` (simulation, or a state folder the server shares) a client
saves no replica: only its version, where its replica started (``origin``) and its residual as
float16 with one float32 scale per tensor (``r ≈ s · fp16(r / s)``, ``s = max|r|``); the replica
is rebuilt from the server's published versions (:mod:`core.replica_store`). That is about 0.8 MB
instead of 3.2 MB for the MNIST MLP. A real device keeps its replica as before.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.atomic import atomic_write
from core.replica_store import shared_state_dir

__all__ = [
    "ClientState",
    "client_state_dir",
    "SeedModel",
    "sync_replica",
    "state_path",
    "client_identity",
]

log = logging.getLogger(__name__)


def client_identity(node_config: dict) -> str:
    """Stable name of this client: ``client-id`` from the node config, else ``partition-id``.

    Raises ``ValueError`` when neither is set (a node id changes on every restart).
    """
    for key in ("client-id", "partition-id"):
        if key in node_config:
            ident = str(node_config[key])
            if not ident or not all(c.isalnum() or c in "-_." for c in ident):
                raise ValueError(f"node-config {key}={ident!r} must be letters, digits, - _ .")
            return ident
    raise ValueError(
        "node config has neither client-id nor partition-id; start the SuperNode with "
        '--node-config "client-id=<name>" so its state survives restarts'
    )


@dataclass
class SeedModel:
    """Version 0 as this device builds it from ``cfg.seed``, and the server's digest of it."""

    state: dict[str, np.ndarray]  # float32 tensors by name, real state rounded to float16
    server_digest: str | None  # the server's digest of version 0 (None: not offered)


def _apply_chain(state, lineage, version, base, arrays, spec, seed) -> ClientState | None:
    """Replica at ``base`` (held, or built from the seed when ``base == 0``) + the chain."""
    from core.codec import decode_chain, state_digest

    same = state is not None and state.lineage == lineage
    residual = state.residual if same else None
    moments = state.moments if same else {}
    if state is None or state.lineage != lineage or state.version != base:
        if base != 0 or seed is None or seed.server_digest is None:
            return None
        if state_digest(seed.state, spec) != seed.server_digest:
            log.warning("this device's version-0 model differs from the server's; asking for it")
            return None
        state = ClientState(lineage, 0, dict(seed.state), residual, moments=moments)  # the seed
    if any(t.name not in state.replica for t in spec.tensors):
        return None
    for update in decode_chain(arrays, spec, version - base):
        update.apply(state.replica, spec)
    state.version = version
    return state


def client_state_dir(cfg, node_config: dict) -> Path:
    """Where this device keeps its state.

    First of: node config ``state-dir``; ``federation.state_dir``; ``<output_dir>/client-state``;
    ``$FLWR_HOME/bitfed-client-state`` (``~/.flwr`` when unset); the last three are
    :func:`core.replica_store.shared_state_dir`, the folder the server publishes into.
    """
    if node_config.get("state-dir"):
        return Path(str(node_config["state-dir"]))
    return shared_state_dir(cfg)


def state_path(state_dir: Path, identity: str) -> Path:
    """File holding the state of client ``identity``."""
    return Path(state_dir) / f"client-{identity}.npz"


@dataclass
class ClientState:
    """Replica of the global model at ``version`` of run ``lineage``, plus the EF residual.

    ``replica`` holds float32 tensors by name (weights and real state; empty when loaded from a
    compact file until :mod:`core.replica_store` rebuilds it), ``residual`` the float32
    error-feedback residual of each weight tensor (``None``: none yet), ``moments`` the float16
    Bop moments a ``lowcost-bop`` client carries from round to round (``core.federated.fit_local``;
    empty otherwise), ``origin`` the version
    whose full model the replica started from (-1: built from the seed, version 0).
    """

    lineage: str
    version: int
    replica: dict[str, np.ndarray]
    residual: dict[str, np.ndarray] | None = None
    origin: int = -1
    moments: dict[str, np.ndarray] = field(default_factory=dict)

    def save(self, path: Path, *, compact: bool = False) -> None:
        """Persist atomically (temp file + fsync + rename).

        ``compact``: no replica, the residual as float16 of ``r / max|r|`` plus that float32 max
        per tensor (see the module docstring).
        """
        meta = {"lineage": self.lineage, "version": self.version, "origin": self.origin}
        moments = {f"moment/{k}": v.astype(np.float16) for k, v in self.moments.items()}
        if compact:
            meta["compact"] = True
            arrays = {}
            for k, v in (self.residual or {}).items():
                scale = np.float32(np.max(np.abs(v))) if v.size else np.float32(0)
                unit = v / scale if scale > 0 else np.zeros_like(v)
                arrays[f"residual16/{k}"] = unit.astype(np.float16)
                arrays[f"residual-scale/{k}"] = np.array([scale], np.float32)
        else:
            arrays = {f"replica/{k}": v.astype(np.float32) for k, v in self.replica.items()}
            for k, v in (self.residual or {}).items():
                arrays[f"residual/{k}"] = v.astype(np.float32)
        arrays |= moments
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        atomic_write(path, lambda fh: np.savez(fh, **arrays))

    @classmethod
    def load(cls, path: Path, lineage: str) -> ClientState | None:
        """Read the state at ``path``; ``None`` when absent, unreadable or of another lineage."""
        path = Path(path)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode())
                if meta["lineage"] != lineage:
                    log.info("client state %s belongs to another run; starting afresh", path)
                    return None
                replica, residual, scales, moments = {}, {}, {}, {}
                for key in data.files:
                    kind, _, name = key.partition("/")
                    if kind == "replica":
                        replica[name] = data[key]
                    elif kind == "residual":
                        residual[name] = data[key]
                    elif kind == "residual16":
                        residual[name] = data[key]
                    elif kind == "residual-scale":
                        scales[name] = data[key]
                    elif kind == "moment":
                        moments[name] = data[key]
                if meta.get("compact"):
                    residual = _expand_residual(residual, scales)
                version, origin = int(meta["version"]), int(meta.get("origin", -1))
                return cls(meta["lineage"], version, replica, residual or None, origin, moments)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            log.warning("client state %s unreadable (%s); starting afresh", path, exc)
            return None


def _expand_residual(units: dict, scales: dict) -> dict[str, np.ndarray]:
    """float32 ``s · r16`` per tensor; raises ``ValueError`` on a malformed compact residual."""
    out = {}
    for name, unit in units.items():
        scale = scales.get(name)
        if unit.dtype != np.float16 or scale is None or scale.shape != (1,):
            raise ValueError(f"compact residual {name!r} lacks its float16 values or its scale")
        s = float(scale[0])
        if not (np.isfinite(s) and s >= 0 and np.all(np.isfinite(unit))):
            raise ValueError(f"compact residual {name!r} is not finite")
        out[name] = unit.astype(np.float32) * np.float32(s)
    return out


def sync_replica(
    state: ClientState | None,
    payload: str,
    lineage: str,
    version: int,
    base_version: int,
    arrays: dict[str, np.ndarray] | None,
    spec,
    seed: SeedModel | None = None,
) -> ClientState | None:
    """Bring the replica to the server's ``version``; ``None`` when that is impossible.

    ``payload`` is ``full`` (replace the replica; keep the residual when the lineage is the
    same), ``delta`` (add ``scale * sign`` to the replica at ``base_version``, take the new real
    state), ``chain`` (apply the deltas ``base_version + 1 .. version`` in order; from version 0 a
    replica can be built from ``seed`` when its digest is the server's) or ``current`` (nothing
    to apply). A replica already at ``version`` is used as is; any
    other mismatch returns ``None`` and the client asks for the full model. ``arrays`` are the
    codec arrays of the payload (validated here by :mod:`core.codec`).
    """
    from core.codec import CHAIN, CURRENT, DELTA, FULL, CodecError, decode_full, decode_update

    if payload == CHAIN:
        return _apply_chain(state, lineage, version, base_version, arrays or {}, spec, seed)
    if payload == FULL:
        replica = decode_full(arrays or {}, spec)
        same = state is not None and state.lineage == lineage
        residual, moments = (state.residual, state.moments) if same else (None, {})
        return ClientState(lineage, version, replica, residual, origin=version, moments=moments)
    if state is None or state.lineage != lineage:
        return None
    if state.version == version:
        return state
    if payload == DELTA and state.version == base_version:
        missing = [t.name for t in spec.tensors if t.name not in state.replica]
        if missing:
            return None
        decode_update(arrays or {}, spec).apply(state.replica, spec)
        state.version = version
        return state
    if payload not in (FULL, DELTA, CURRENT):
        raise CodecError(f"unknown payload kind {payload!r}")
    return None
