"""What a node needs to reach the current global model: the cheapest exact downlink payload.

The server keeps the last ``federation.delta_history`` 1-bit downlink deltas (``delta_v`` takes a
replica from version ``v - 1`` to ``v``, exactly: it is the ``scale * sign`` the server itself
applied). A node whose replica is at version ``h`` is sent, whichever is smaller:

* ``delta`` — the last delta, when ``h = v - 1``;
* ``chain`` — the deltas ``h + 1 .. v`` in order (``h`` from the node's last reply), when all are
  still kept;
* ``full`` — the global model in float16.

Version 0 is the model every client can build itself from ``cfg.seed``: a node the server has
never heard of is sent the chain from version 0 with the version-0 digest
(:func:`core.codec.state_digest`), and builds its replica from the seed when its own model's
digest matches (otherwise it replies ``need-full``). In round 1 that chain is empty: no model
travels at all. Every payload is exact: a replica equals the server's broadcast model bit for bit.
"""

from __future__ import annotations

import numpy as np

from core import codec

__all__ = ["DeltaHistory"]


class DeltaHistory:
    """The last ``limit`` downlink deltas by the version they lead to, and payload choice.

    Parameters
    ----------
    limit
        Deltas kept (older ones are dropped; a node further behind gets the full model).
    full_bytes
        Size of the full float16 model on the wire (what a chain must beat).
    seed_digest
        Digest of version 0, the model a client builds from the seed (``None``: not offered).
    """

    def __init__(self, limit: int, full_bytes: int, seed_digest: str | None = None) -> None:
        self.limit = limit
        self.full_bytes = full_bytes
        self.seed_digest = seed_digest
        self.deltas: dict[int, dict[str, np.ndarray]] = {}

    def add(self, version: int, arrays: dict[str, np.ndarray]) -> None:
        """Keep the delta that leads to ``version``; drop the oldest beyond ``limit``."""
        self.deltas[version] = arrays
        for old in sorted(self.deltas)[: max(0, len(self.deltas) - self.limit)]:
            del self.deltas[old]

    def chain_bytes(self, base: int, version: int) -> int | None:
        """Array bytes of the deltas ``base + 1 .. version``; ``None`` when one is not kept."""
        steps = range(base + 1, version + 1)
        if not all(v in self.deltas for v in steps):
            return None
        return sum(int(a.nbytes) for v in steps for a in self.deltas[v].values())

    def choose(self, have: int | None, version: int) -> tuple[str, int]:
        """Payload kind and base version for a replica at ``have`` (``None``: unknown node).

        ``have = -1`` means the node said its replica is unusable: only the full model helps.
        """
        if have == version:
            return codec.CURRENT, version
        seeded = have is None and self.seed_digest is not None
        base = 0 if seeded else have
        if base is None or base < 0 or base > version:
            return codec.FULL, version - 1
        cost = self.chain_bytes(base, version)
        if cost is None or cost >= self.full_bytes:
            return codec.FULL, version - 1
        if not seeded and base == version - 1:
            return codec.DELTA, base
        return codec.CHAIN, base

    def chain_arrays(self, base: int, version: int) -> dict[str, np.ndarray]:
        """Codec arrays of the chain ``base + 1 .. version`` (:func:`core.codec.encode_chain`)."""
        return codec.encode_chain([self.deltas[v] for v in range(base + 1, version + 1)])
