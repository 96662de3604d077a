"""Bytes autograd keeps for backward (saved-tensor hooks) and the bytes of a step's state."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["SavedTensorCounter", "count_saved_tensors", "state_bytes"]


def _storage_key(t: Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


@dataclass
class SavedTensorCounter:
    """Storages autograd saved for backward while :func:`count_saved_tensors` was active.

    Attributes
    ----------
    storages
        ``data_ptr -> (nbytes, dtype name)`` of each distinct storage saved (views share one).
    excluded
        Data pointers never counted (parameters and buffers: they are state, not activations).
    num_saved
        Number of ``save_for_backward`` entries seen, views and parameters included.
    """

    storages: dict[int, tuple[int, str]] = field(default_factory=dict)
    excluded: set[int] = field(default_factory=set)
    num_saved: int = 0

    @property
    def total_bytes(self) -> int:
        """Bytes of the distinct non-parameter storages saved for backward."""
        return sum(nbytes for nbytes, _ in self.storages.values())

    def bytes_by_dtype(self) -> dict[str, int]:
        """Return saved bytes per dtype, e.g. ``{"uint8": ..., "float32": ...}``."""
        out: dict[str, int] = {}
        for nbytes, dtype in self.storages.values():
            out[dtype] = out.get(dtype, 0) + nbytes
        return dict(sorted(out.items()))

    def _pack(self, t: Tensor) -> Tensor:
        self.num_saved += 1
        try:
            ptr, nbytes = _storage_key(t)
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. sparse)
            return t
        if ptr not in self.excluded and nbytes > 0:
            previous = self.storages.get(ptr, (0, ""))[0]
            if nbytes >= previous:
                self.storages[ptr] = (nbytes, str(t.dtype).removeprefix("torch."))
        return t


@contextmanager
def count_saved_tensors(exclude: Iterable[Tensor] = ()) -> Iterator[SavedTensorCounter]:
    """Count the bytes autograd keeps for backward inside the ``with`` block.

    Every tensor saved by an autograd node (``ctx.save_for_backward`` included) passes through
    a ``torch.autograd.graph.saved_tensors_hooks`` pack hook; each distinct storage counts once
    at its full size, so views of one tensor are not counted twice, and storages of ``exclude``
    (pass ``model.parameters()`` and ``model.buffers()``) are not counted at all. Tensors
    stashed on ``ctx`` as attributes bypass the hook, which is why the training core never does
    that.

    Examples
    --------
    >>> lin = nn.Linear(4, 3, bias=False)
    >>> with count_saved_tensors(lin.parameters()) as saved:
    ...     lin(torch.ones(2, 4)).sum().backward()
    >>> saved.total_bytes  # the input (2, 4) in float32; the weight is state, not counted
    32
    """
    counter = SavedTensorCounter(excluded={_storage_key(t)[0] for t in exclude})
    with torch.autograd.graph.saved_tensors_hooks(counter._pack, lambda t: t):
        yield counter


def _unique_bytes(tensors: Iterable[Tensor], seen: set[int]) -> int:
    total = 0
    for t in tensors:
        ptr, nbytes = _storage_key(t)
        if ptr not in seen:
            seen.add(ptr)
            total += nbytes
    return total


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [
        value
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, Tensor)
    ]


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes held between steps: ``params + grads + optimizer + buffers`` (each storage once).

    Call it after ``optimizer.step()`` and before ``zero_grad`` so gradients exist. Packed
    1-bit gradients kept in module buffers count as ``buffers``.

    Returns
    -------
    dict
        ``{"params", "grads", "optimizer", "buffers", "total"}`` in bytes.
    """
    seen: set[int] = set()
    params = list(model.parameters())
    out = {
        "params": _unique_bytes(params, seen),
        "grads": _unique_bytes((p.grad for p in params if p.grad is not None), seen),
        "optimizer": _unique_bytes(_optimizer_tensors(optimizer) if optimizer else [], seen),
        "buffers": _unique_bytes(model.buffers(), seen),
    }
    out["total"] = sum(out.values())
    return out
