"""Bop for packed binary weights: the optimizer of the latent-free recipe ``lowcost-bop``.

Helwegen et al., "Latent Weights Do Not Exist: Rethinking Binarized Neural Network
Optimization" (NeurIPS 2019, arXiv 1906.02107), Algorithm 1: a binary weight ``w`` in {-1, +1}
keeps one exponential moving average ``m`` of its gradient ``g`` and flips when that average is
strong enough and says "decrease w"::

    m <- (1 - gamma) m + gamma g
    w <- -w   where |m| > tau and sign(m) == sign(w)      (i.e. where w m > tau)

Here ``g`` is the 1-bit weight gradient every low-cost binary layer already produces,
``sign(sign(X)^T dY)`` (docs/method.md §2b), so ``m`` is an EMA of signs in [-1, 1]: ``|m|``
measures
how consistently the batches agree on the direction, ``1 / gamma`` steps is its memory, and
``tau`` is a consistency threshold in those units (the paper's tau is in gradient units, which
a sign gradient does not have). With a constant sign ``m`` after ``k`` steps is
``1 - (1 - gamma)^k ~ k gamma``: a weight whose batches all agree flips after ~``tau / gamma``
steps; for balanced random signs ``m`` has a spread of ``sqrt(gamma / 2)``, which ``tau`` must
exceed to keep noise from flipping weights back and forth.

Storage per binary weight: its bit in the layer's ``weight_bits`` (uint8, 1 bit), its bit of
``grad_bits`` (1 bit) and ``m`` in float16 (16 bits), against 16 + 1 + 32 bits for LowCostAdam's
fp16 latent weight and two fp16 moments. ``m`` is updated in float32 on row slices and written
back with stochastic rounding (:func:`core.functional.stochastic_round_`), so ``gamma`` steps
below half an fp16 ulp are kept in expectation. The flip is done on packed bytes: with ``W``
the weight bits (set <=> +1), ``P = pack(m > tau)``, ``N = pack(m < -tau)``::

    W <- W xor ((W and P) or (not W and N))

Everything else (BN ``beta``, biases, full-precision layers' fp16 weights) is stepped by
:class:`core.optim.LowCostAdam`, which :class:`LowCostBop` extends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from core.functional import batch_slices, bits_to_signs, pack_bits, stochastic_round_
from core.layers import PackedGradLayer
from core.optim import ADAM_EPS, LowCostAdam

__all__ = ["BopConfig", "LowCostBop", "bop_flip_", "popcount"]

_POPCOUNT = torch.tensor([bin(k).count("1") for k in range(256)], dtype=torch.int64)


@dataclass(frozen=True)
class BopConfig:
    """Bop hyper-parameters for sign gradients (see the module docstring for their units).

    Defaults from a sweep on the MNIST MLP (batch 100, lr 1e-3 for the real-valued state; test
    accuracy after one epoch): gamma 1e-3 with tau 0.02 gave 94.5 %, tau 0.005 93.2 %, tau 0.04
    93.8 %; gamma 3e-4 / tau 0.006 94.3 %; gamma 3e-3 / tau 0.03 93.2 %; gamma 1e-2 / tau 0.1
    90.5 % (lowcost: 92.7 %). So a memory of ~1000 steps and ~20 agreeing steps (tau / gamma) per
    flip. The paper's values (gamma 1e-4..1e-3, tau 1e-8..1e-6 on raw gradients, arXiv
    1906.02107 §5) are in gradient units: on sign gradients such a tau is ~0, which flips every
    weight whose moment merely leans its way (93.2 % at tau 0.005, below).

    Attributes
    ----------
    gamma : float
        Adaptivity rate, in (0, 1]: the EMA's weight on the newest gradient sign.
    threshold : float
        Flip threshold ``tau`` on ``|m|``, in [0, 1): a weight flips when ``w m > tau``.
    """

    gamma: float = 1e-3
    threshold: float = 2e-2

    def __post_init__(self) -> None:
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"bop gamma must be in (0, 1], got {self.gamma}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"bop threshold must be in [0, 1), got {self.threshold}")


def popcount(packed: Tensor) -> int:
    """Count the set bits of a uint8 tensor."""
    return int(_POPCOUNT.index_select(0, packed.reshape(-1).int()).sum())


def bop_flip_(weight_bits: Tensor, moment: Tensor, threshold: float) -> Tensor:
    """Flip, in place, the packed weights that Bop flips; return the packed flip mask.

    ``weight_bits`` is uint8 ``(rows, ceil(n / 8))`` (bit set <=> ``w = +1``), ``moment`` the
    ``(rows, n)`` moving average. A weight flips where ``w m > threshold``: ``m > tau`` for
    ``w = +1``, ``m < -tau`` for ``w = -1`` (``|m| == tau`` does not flip).
    """
    up = pack_bits(moment > threshold)  # (rows, n/8): +1 weights that flip
    down = pack_bits(moment < -threshold)  # -1 weights that flip
    flip = weight_bits.bitwise_and(up).bitwise_or_(weight_bits.bitwise_not().bitwise_and_(down))
    weight_bits.bitwise_xor_(flip)
    return flip


class LowCostBop(LowCostAdam):
    """Bop on packed binary weights plus :class:`~core.optim.LowCostAdam` for everything else.

    The ``weight_bits`` buffers of ``bop_layers`` form one extra parameter group (keys
    ``gamma``, ``threshold``), so the optimizer's ``state_dict`` carries their moments
    (``state[bits]["moment"]``, float16 ``(C_out, fan_in)``) and hyper-parameters. A Bop layer
    is stepped only when its ``grad_count`` changed since the last ``zero_grad``/``step``.
    ``state[bits]["flips"]`` is the number of weights the last step flipped.

    Parameters
    ----------
    params, packed_layers
        As for :class:`~core.optim.LowCostAdam` (real-valued parameters, and the layers with
        fp16 latent weights and packed gradients: full-precision layers under ``lowcost-bop``).
    bop_layers : iterable of PackedGradLayer
        Layers with packed weights (:meth:`~core.layers.PackedGradLayer.pack_weight_`).
    config : BopConfig
        ``gamma`` and ``threshold``.
    lr, betas, eps, grad_scale, chunk, seed
        As for :class:`~core.optim.LowCostAdam` (``chunk`` also bounds Bop's row slices).
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        packed_layers: Iterable[PackedGradLayer],
        bop_layers: Iterable[PackedGradLayer],
        *,
        config: BopConfig | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = ADAM_EPS,
        grad_scale: float = 1.0,
        chunk: int = 1 << 16,
        seed: int = 0,
    ) -> None:
        config = config or BopConfig()
        bop_layers = list(bop_layers)
        for layer in bop_layers:
            if not layer.packed_weight:
                raise ValueError(f"bop layer {layer._extra()} has no packed weights")
        groups: list[dict[str, Any]] = []
        dense = list(params)
        if dense:
            groups.append({"params": dense})
        if bop_layers:  # the last group: the packed weights, with Bop's hyper-parameters
            bits = [m.weight_bits for m in bop_layers]
            groups.append({"params": bits, "gamma": config.gamma, "threshold": config.threshold})
        super().__init__(
            groups, packed_layers, lr=lr, betas=betas, eps=eps, grad_scale=grad_scale,
            chunk=chunk, seed=seed,
        )  # fmt: skip
        self._bop: dict[int, PackedGradLayer] = {id(m.weight_bits): m for m in bop_layers}
        self._bop_consumed = {k: int(m.grad_count) for k, m in self._bop.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As :meth:`LowCostAdam.zero_grad`; also marks every Bop layer's gradient stale."""
        super().zero_grad(set_to_none=set_to_none)
        for key, layer in self._bop.items():
            self._bop_consumed[key] = int(layer.grad_count)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Adam on the real-valued state, then Bop on every packed layer with a fresh gradient."""
        loss = super().step(closure)
        for group in self.param_groups:
            if "gamma" not in group:
                continue
            for bits in group["params"]:
                layer = self._bop[id(bits)]
                if int(layer.grad_count) != self._bop_consumed[id(bits)]:
                    self._step_bop(bits, layer, group)
                    self._bop_consumed[id(bits)] = int(layer.grad_count)
        return loss

    def _step_bop(self, bits: Tensor, layer: PackedGradLayer, group: dict[str, Any]) -> None:
        rows, fan_in = layer.weight.shape[0], layer.weight[0].numel()
        state = self.state[bits]
        if not state:
            state["step"] = 0
            state["moment"] = torch.zeros(rows, fan_in, dtype=torch.float16)
        state["step"] += 1
        gamma, tau = group["gamma"], group["threshold"]
        moment, grad_bits, flips = state["moment"], layer.grad_bits, 0
        for r in batch_slices(rows, fan_in, self.chunk):
            g = bits_to_signs(grad_bits[r], fan_in, torch.float32)  # (r, fan_in) +-1
            m32 = moment[r].float().lerp_(g, gamma)  # (1 - gamma) m + gamma g
            del g
            m = stochastic_round_(m32, moment.dtype, self._generator, out=moment[r])
            del m32
            flips += popcount(bop_flip_(bits[r], m, tau))
        state["flips"] = flips

    def moments(self, layers: Mapping[str, PackedGradLayer]) -> dict[str, Tensor]:
        """Each layer's Bop moment ``m`` (float16 ``(C_out, fan_in)``, a copy) by its name.

        ``layers`` maps names to packed layers (:func:`core.models.packed_weights_by_name`); a
        layer not stepped yet has no moment and is left out. A federated client keeps these
        between rounds (docs/method.md §2h): its Bop flips after ``~tau / gamma`` agreeing
        steps, more than one short round may hold.
        """
        out = {}
        for name, layer in layers.items():
            state = self.state.get(layer.weight_bits)
            if state and "moment" in state:
                out[name] = state["moment"].clone()
        return out

    def load_moments_(self, layers: Mapping[str, PackedGradLayer], moments: Mapping) -> int:
        """Start each named layer's Bop moment from ``moments`` (as :meth:`moments` gives them).

        A moment of the wrong shape or with a non-finite value is skipped (that layer starts
        from zero). Where a loaded moment would flip the weight the model holds now at once
        (``w m > tau``), it is reset to zero: after a client's own training no weight is in that
        state (each one with ``w m > tau`` has flipped), so the model's weight there is the
        federation's, and the moment is this client's evidence against it: its own flip that
        the server's vote overruled, or another client's flip it disagreed with. Kept, it would
        flip the weight back in the first step and train the rest of the round on a network the
        federation rejected, with batch-norm state and biases fitted to that network (10-client
        MNIST, 30 rounds, BENCHMARKS.md section 8b: final accuracy 0.798 before, 0.891 with the
        reset). Returns how many were loaded.
        """
        loaded = 0
        for name, layer in layers.items():
            value = moments.get(name)
            rows = layer.weight_bits.shape[0]
            shape = (rows, layer.weight[0].numel())
            if value is None:
                continue
            m = torch.as_tensor(value).to(torch.float16)
            if tuple(m.shape) != shape or not bool(torch.isfinite(m).all()):
                continue
            m = m.clone()
            self._forget_overruled_(m, layer)
            self.state[layer.weight_bits].update(step=0, moment=m)
            loaded += 1
        return loaded

    def _forget_overruled_(self, moment: Tensor, layer: PackedGradLayer) -> None:
        """Zero ``moment`` where it would flip the current weight at once (``w m > tau``)."""
        tau = next(g["threshold"] for g in self.param_groups if "gamma" in g)
        fan_in = moment.shape[1]
        for r in batch_slices(moment.shape[0], fan_in, self.chunk):
            w = bits_to_signs(layer.weight_bits[r], fan_in, torch.float32)
            moment[r].masked_fill_(w * moment[r].float() > tau, 0.0)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load, keeping the Bop moments float16 (and the Adam moments as LowCostAdam does)."""
        super().load_state_dict(state_dict)
        for key in self._bop:
            for p, state in self.state.items():
                if id(p) == key and "moment" in state:
                    state["moment"] = state["moment"].to(torch.float16)
