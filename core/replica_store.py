"""Compact client state for simulation: replicas rebuilt from the server's published versions.

On a real device the replica of the global model must stay on the device (it is what the 1-bit
deltas apply to). In a simulation, or wherever the server and its clients share one folder, the
replica of version ``v`` is the server's broadcast model of version ``v`` (or, for a client that
was last sent the full model, its float16 rounding), so a client need keep only its version,
where its replica started and its own error-feedback residual (``federation.compact_state``,
:class:`client.state.ClientState`). The server publishes into the shared folder, after each
round, what rebuilds any version exactly:

``<state_dir>/replicas/<lineage>/delta-<v>.npz``
    the codec arrays (``signs``, ``scales``, ``real``) of the downlink delta from ``v - 1`` to
    ``v``: exactly the ``scale * sign`` step and real state the server applied;
``<state_dir>/replicas/<lineage>/model-<v>.npz``
    the float32 broadcast model of version ``v``, for ``v = 0`` and every
    :data:`SNAPSHOT_EVERY` versions (so a rebuild applies at most that many deltas).

Disk use grows with the rounds (one 1-bit delta per version, ``sign_numel / 8`` bytes, plus a
float32 snapshot every 16 versions), never with the population. :meth:`ReplicaStore.replica`
rebuilds ``replica(v) = snapshot(s) + Σ_{u=s+1..v} delta_u`` in the same float32 operations the
server used (so bit for bit) and keeps the last few rebuilt versions in memory per process.
"""

from __future__ import annotations

import json
import logging
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from core.atomic import atomic_write
from core.codec import CodecError, ModelSpec, decode_full, decode_update, encode_full

__all__ = ["SNAPSHOT_EVERY", "ReplicaStore", "shared_state_dir"]

log = logging.getLogger(__name__)

SNAPSHOT_EVERY = 16  #: versions between float32 snapshots of the broadcast model
_CACHED = 4  # rebuilt versions kept in memory per process (4 x 1.6 MB for the MNIST MLP)


def shared_state_dir(cfg) -> Path:
    """Return the folder the server and its simulated clients share.

    ``federation.state_dir``, else ``<output_dir>/client-state``, else
    ``$FLWR_HOME/bitfed-client-state`` (``~/.flwr`` when unset).
    """
    import os

    if cfg.federation.state_dir:
        return Path(cfg.federation.state_dir)
    if cfg.output_dir:
        return Path(cfg.output_dir) / "client-state"
    return Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr")) / "bitfed-client-state"


class ReplicaStore:
    """The published versions of one shared folder (see the module docstring)."""

    _cache: OrderedDict[tuple, dict[str, np.ndarray]] = OrderedDict()  # per process
    _lock = threading.Lock()

    def __init__(self, state_dir: str | Path) -> None:
        self.root = Path(state_dir) / "replicas"

    # --- server side ----------------------------------------------------------------------
    def publish(
        self,
        lineage: str,
        version: int,
        broadcast: Mapping[str, np.ndarray],
        delta: Mapping[str, np.ndarray] | None,
    ) -> None:
        """Publish ``version``: its delta, and the broadcast model every 16 versions.

        ``delta``: the codec arrays of the downlink from ``version - 1`` (``None`` for version 0,
        or when unknown: a resumed run without it; clients that need it then ask for the full
        model); the float32 ``broadcast`` model is written when ``version`` is a multiple of
        :data:`SNAPSHOT_EVERY`. Atomic (:func:`core.atomic.atomic_write`); a file already
        published is left as it is.
        """
        folder = self.root / _safe(lineage)
        if version > 0 and delta is not None:
            path = folder / f"delta-{version}.npz"
            if not path.exists():
                atomic_write(path, lambda fh: np.savez(fh, **dict(delta)))
        if version % SNAPSHOT_EVERY == 0:
            path = folder / f"model-{version}.npz"
            if not path.exists():
                arrays = {k: np.asarray(v, np.float32) for k, v in broadcast.items()}
                atomic_write(path, lambda fh: np.savez(fh, **arrays))

    # --- client side ----------------------------------------------------------------------
    def replica(
        self, lineage: str, version: int, origin: int, spec: ModelSpec
    ) -> dict[str, np.ndarray] | None:
        """Return the replica a client holds at ``version`` whose state started at ``origin``.

        ``origin = -1``: built from version 0 (the seed) and the deltas since, i.e. the broadcast
        model of ``version``; ``origin = f >= 0``: the full model (float16) of version ``f``, then
        the deltas ``f + 1 .. version``. ``None`` when something needed is not (or no longer)
        published or does not validate. The arrays are read-only (shared with the cache).
        """
        if version < 0 or origin > version:
            return None
        try:
            if origin < 0:
                state = self._broadcast(lineage, version, spec)
            else:
                start = self._broadcast(lineage, origin, spec)
                rounded = decode_full(encode_full(start, spec), spec)
                state = self._apply(lineage, rounded, origin, version, spec)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, CodecError) as exc:
            log.warning("replica %s@%d not rebuilt from %s: %s", lineage, version, self.root, exc)
            return None
        return dict(state)

    def _broadcast(self, lineage: str, version: int, spec: ModelSpec) -> dict[str, np.ndarray]:
        """Rebuild the broadcast model of ``version``: nearest cached or snapshot + deltas."""
        key = (str(self.root), lineage)
        with self._lock:
            held = [v for (r, lin, v) in self._cache if (r, lin) == key and v <= version]
        snapshot = version - version % SNAPSHOT_EVERY
        if held and max(held) >= snapshot:
            base = max(held)
            with self._lock:
                state = self._cache.get((*key, base))
        else:
            base, state = snapshot, None
        if state is None:
            base, state = snapshot, self._snapshot(lineage, snapshot, spec)
        state = self._apply(lineage, state, base, version, spec)
        for arr in state.values():
            arr.flags.writeable = False
        with self._lock:
            self._cache[(*key, version)] = state
            self._cache.move_to_end((*key, version))
            while len(self._cache) > _CACHED:
                self._cache.popitem(last=False)
        return state

    def _snapshot(self, lineage: str, version: int, spec: ModelSpec) -> dict[str, np.ndarray]:
        path = self.root / _safe(lineage) / f"model-{version}.npz"
        with np.load(path, allow_pickle=False) as data:
            state = {t.name: np.array(data[t.name], dtype=np.float32) for t in spec.tensors}
        for t in spec.tensors:
            if state[t.name].shape != t.shape or not np.all(np.isfinite(state[t.name])):
                raise ValueError(f"{path}: {t.name} is not a finite {t.shape} tensor")
        return state

    def _apply(self, lineage, state, base: int, version: int, spec: ModelSpec):
        """``state`` (version ``base``) plus the published deltas ``base + 1 .. version``."""
        state = dict(state)
        for v in range(base + 1, version + 1):
            path = self.root / _safe(lineage) / f"delta-{v}.npz"
            with np.load(path, allow_pickle=False) as data:
                update = decode_update({k: data[k] for k in data.files}, spec)
            update.apply(state, spec)  # as client.state.sync_replica does
        return state

    @classmethod
    def clear_cache(cls) -> None:
        """Forget every rebuilt version held by this process."""
        with cls._lock:
            cls._cache.clear()


def _safe(lineage: str) -> str:
    """Return a lineage as a folder name (the server's uuid hex as is; anything else hexed)."""
    if lineage and all(c.isalnum() or c in "-_" for c in lineage):
        return lineage
    return json.dumps(lineage).encode().hex()
