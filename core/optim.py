"""Optimizers: stock Adam for ``standard``, :class:`LowCostAdam` for the low-cost recipes.

Choices for float16 state (docs/method.md §9 items 4-5), made here and nowhere else:

- **1/sqrt(N) dropped, fp16 moments.** A binary layer's gradient is ``sign(G) * 1[|W|<=1] /
  sqrt(N)`` (§2b). Feeding Adam ``+-1`` (or 0) and ``eps * sqrt(N)`` instead is *exactly* the
  same update (Adam is scale-invariant apart from eps), and keeps ``m`` in [-1, 1] and ``v`` in
  [0, 1], where float16 has 11 significant bits; with the 1/sqrt(N) scale, ``v ~ 1/N`` would
  underflow fp16 (item 4). These moments are float16.
- **bf16 moments for dense gradients.** BN ``beta`` (and ResNetE's biases) get ordinary dense
  gradients whose squares can be ~1e-10; their moments are bfloat16 (fp32's exponent range).
- **Stochastic rounding.** Weight writes round stochastically
  (:func:`core.functional.stochastic_round_`, in place on the step's float32 buffer, noise
  from 64-bit draws split into 16-bit fields), so Adam steps smaller than half an ulp of the fp16
  weight are kept in expectation (item 5); there is no fp32 master copy. bf16 moments round
  stochastically too (``v <- 0.999 v`` is below bf16's half-ulp). fp16 moments of sign
  gradients round to nearest: ``m, v`` in [0, 1] move by >= 1e-3 relative per step, at least
  two fp16 half-ulps, so nothing stalls.

All arithmetic runs in float32 on row slices of at most ``chunk`` elements, so the step's
transient memory is a few times ``chunk`` floats, not a copy of the largest layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from core.functional import batch_slices, bits_to_signs, stochastic_round_
from core.layers import PackedGradLayer
from core.recipes import Recipe, from_recipe

if TYPE_CHECKING:
    from core.bop import BopConfig

__all__ = ["LowCostAdam", "build_optimizer", "ADAM_EPS"]

ADAM_EPS = 1e-7  # Keras 2.2.4's K.epsilon(), the authors' Adam (docs/method.md §2f)


def _skip_dynamo_import() -> None:
    """Keep ``torch._dynamo`` out of processes that only train (every ClientApp).

    ``torch.optim.Optimizer.add_param_group`` (and ``zero_grad``, ``state_dict``,
    ``load_state_dict``) are wrapped in ``torch._disable_dynamo``, whose first call imports
    ``torch._dynamo``: with it SymPy, mpmath, ``torch.distributed`` and ``torch.onnx``, about 800
    modules, +66 MiB and ~2.7 s in each fresh ClientApp process (measured in the compose image,
    MLP on digits). bitfed never compiles, so each wrapper is told it is already disabled (the
    attribute ``torch._compile._disable_dynamo`` caches on first use).
    """
    for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict"):
        fn = getattr(getattr(torch.optim.Optimizer, name), "__wrapped__", None)
        if fn is not None and not hasattr(fn, "__dynamo_disable"):
            setattr(fn, "__dynamo_disable", fn)


_skip_dynamo_import()


class LowCostAdam(torch.optim.Optimizer):
    """Adam over float16 latent weights whose binary-layer gradients are packed sign bits.

    For a packed layer with ``N`` weights, per element (``t`` = step, fp32 arithmetic)::

        g = sign(G) * 1[|W| <= 1]                      (unpacked from grad_bits; 0 if masked)
        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        W = W - lr * m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps * sqrt(N))

    which equals Adam on ``g / sqrt(N)`` with ``eps`` (docs/method.md §2b, §2f). Other parameters
    (dense ``.grad``, scaled by the model's ``grad_scale``) get plain Adam on ``grad /
    grad_scale``. A packed layer is stepped only when its ``grad_count`` changed since the last
    ``zero_grad`` or ``step``, i.e. a backward wrote a new gradient.

    Parameters
    ----------
    params : iterable of Parameter
        All trainable parameters of the model.
    packed_layers : iterable of PackedGradLayer
        Layers whose ``weight`` gradient lives in ``grad_bits``.
    lr, betas, eps : float
        Adam hyper-parameters (Keras defaults: 1e-3, (0.9, 0.999), 1e-7).
    grad_scale : float
        Scale the model applied to its internal gradients (``Recipe.grad_scale``).
    chunk : int
        Largest slice (elements) processed at once.
    seed : int
        Seed of the stochastic-rounding generator (the step is deterministic given it).
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        packed_layers: Iterable[PackedGradLayer],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = ADAM_EPS,
        grad_scale: float = 1.0,
        chunk: int = 1 << 16,
        seed: int = 0,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(list(params), {"lr": lr, "betas": betas, "eps": eps})
        self._packed: dict[int, PackedGradLayer] = {id(m.weight): m for m in packed_layers}
        self._consumed: dict[int, int] = {k: int(m.grad_count) for k, m in self._packed.items()}
        self.grad_scale, self.chunk = float(grad_scale), int(chunk)
        self._generator = torch.Generator().manual_seed(seed)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear dense ``.grad`` and mark every packed gradient stale (nothing is written)."""
        super().zero_grad(set_to_none=set_to_none)
        for key, layer in self._packed.items():
            self._consumed[key] = int(layer.grad_count)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Apply one Adam update to every parameter that has a fresh gradient."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                layer = self._packed.get(id(p))
                if layer is not None and int(layer.grad_count) != self._consumed[id(p)]:
                    self._step_packed(p, layer, group)
                    self._consumed[id(p)] = int(layer.grad_count)
                elif layer is None and p.grad is not None:
                    self._step_dense(p, group)
        return loss

    def _state(self, p: Tensor, moment_dtype: torch.dtype) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros(p.shape, dtype=moment_dtype)
            state["exp_avg_sq"] = torch.zeros(p.shape, dtype=moment_dtype)
        state["step"] += 1
        return state

    def _step_packed(self, p: Tensor, layer: PackedGradLayer, group: dict[str, Any]) -> None:
        state = self._state(p, torch.float16)
        b1, b2 = group["betas"]
        t = state["step"]
        c1, c2 = 1 - b1**t, 1 - b2**t
        step_size = group["lr"] * math.sqrt(c2) / c1  # bias corrections folded (Kingma & Ba §2)
        eps = group["eps"] * math.sqrt(p.numel()) * math.sqrt(c2)  # eps*sqrt(N): ±1 not ±1/√N
        rows, fan_in = p.shape[0], p[0].numel()
        w2, bits = p.view(rows, fan_in), layer.grad_bits  # (C_out, fan_in), (C_out, fan_in/8)
        m2 = state["exp_avg"].view(rows, fan_in)
        v2 = state["exp_avg_sq"].view(rows, fan_in)
        for r in batch_slices(rows, fan_in, self.chunk):
            w = w2[r]
            g = bits_to_signs(bits[r], fan_in, torch.float16)  # (r, fan_in) +-1
            if layer.binary_weight:  # weight STE: frozen beyond +-1 (§9.1); |w| > 1 compared
                # on the fp16 bit pattern (0x3C00 = 1.0), integer ops being ~3x faster on CPU
                g.masked_fill_(w.view(torch.int16).bitwise_and(0x7FFF) > 0x3C00, 0.0)
            m2[r].lerp_(g, 1 - b1)  # fp16, |change| >= 2 half-ulps: round-to-nearest is safe
            v2[r].lerp_(g.abs_(), 1 - b2)  # g^2 = |g| for g in {-1, 0, 1}
            del g
            # w - step * m / (sqrt(v) + eps) in float32; every op has operands of one dtype
            # (mixed fp16/fp32 elementwise ops take a slow unvectorized path on CPU)
            w32 = v2[r].float().sqrt_().add_(eps)
            q = m2[r].float().div_(w32)
            w32.copy_(w).add_(q, alpha=-step_size)
            del q
            stochastic_round_(w32, w.dtype, self._generator, out=w)

    def _step_dense(self, p: Tensor, group: dict[str, Any]) -> None:
        state = self._state(p, torch.bfloat16)
        b1, b2 = group["betas"]
        t = state["step"]
        c1, c2 = 1 - b1**t, 1 - b2**t
        step_size = group["lr"] * math.sqrt(c2) / c1
        eps = group["eps"] * math.sqrt(c2)
        flat = (p.view(-1), state["exp_avg"].view(-1), state["exp_avg_sq"].view(-1))
        grad = p.grad.view(-1)
        for s in batch_slices(grad.numel(), 1, self.chunk):
            w, m, v = (x[s] for x in flat)
            g = grad[s].float().div_(self.grad_scale)
            m32 = m.float().lerp_(g, 1 - b1)
            v32 = v.float().mul_(b2).addcmul_(g, g, value=1 - b2)
            w32 = w.float().addcdiv_(m32, v32.sqrt().add_(eps), value=-step_size)
            for dst, src in ((m, m32), (v, v32), (w, w32)):  # each rounding draws its noise
                stochastic_round_(src, dst.dtype, self._generator, out=dst)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load, then restore the moment dtypes (torch casts state to the parameter's dtype)."""
        super().load_state_dict(state_dict)
        for p, state in self.state.items():
            dtype = torch.float16 if id(p) in self._packed else torch.bfloat16
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key].to(dtype)


def build_optimizer(
    model: nn.Module,
    recipe: str | Recipe,
    lr: float = 1e-3,
    *,
    bop: BopConfig | None = None,
    seed: int = 0,
) -> torch.optim.Optimizer:
    """Make the recipe's optimizer for ``model`` (built with the same recipe).

    ``standard``: ``torch.optim.Adam(lr, eps=1e-7)`` over float32 parameters (docs/method.md §2f).
    Low-cost recipes: :class:`LowCostAdam` over the fp16 parameters and packed weight gradients.
    ``lowcost-bop``: :class:`core.bop.LowCostBop` (Bop on the packed binary weights with
    ``bop``, a :class:`core.bop.BopConfig`, default ``BopConfig()``; LowCostAdam for the rest).
    ``seed`` seeds the low-cost optimizers' stochastic-rounding generator: give every client and
    round its own, or all of them round their float16 updates with the same noise.
    """
    rec = from_recipe(recipe)
    model_recipe = getattr(model, "recipe", None)
    if model_recipe is not None and (
        model_recipe.lowcost != rec.lowcost or model_recipe.packed_weights != rec.packed_weights
    ):
        raise ValueError(
            f"model was built for recipe {model_recipe.short_str()!r} but the optimizer was asked "
            f"for {rec.short_str()!r}; build both with the same recipe"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if not rec.lowcost:
        return torch.optim.Adam(params, lr=lr, eps=ADAM_EPS)
    packed = [m for m in model.modules() if isinstance(m, PackedGradLayer) and m.recipe.lowcost]
    # slices of ~1/16 of the weights: the step's <= 10 B/element of transients (fp16 signs + STE
    # mask, then two float32 buffers, then one + 16-bit noise) stay ~10 % of the 6 B/weight
    # state (about what backward needs anyway), in few enough slices that per-call overhead
    # stays small
    n = sum(p.numel() for p in params) + sum(m.weight.numel() for m in packed if m.packed_weight)
    chunk = min(1 << 16, max(1 << 12, n // 16))
    if not rec.packed_weights:
        return LowCostAdam(params, packed, lr=lr, grad_scale=rec.grad_scale, chunk=chunk, seed=seed)
    from core.bop import LowCostBop  # core.bop builds on this module

    latent = [m for m in packed if not m.packed_weight]
    bop_layers = [m for m in packed if m.packed_weight]
    return LowCostBop(
        params,
        latent,
        bop_layers,
        config=bop,
        lr=lr,
        grad_scale=rec.grad_scale,
        chunk=chunk,
        seed=seed,
    )
